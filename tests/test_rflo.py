"""RFLO (``rflo``) on a tiny float64 rate RNN against its equations written out in numpy: the
online traces step by step, and the update of every weight for a last-step classification and
an every-step regression; with no leak and B = W_out^T it is e-prop, autograd with the
recurrent input's z_{t-1} detached. RFLO and ModProp both train the digits RNN end to end
with the diagnostics (whose update angle runs on deep copies)."""

import copy

import numpy as np
import pytest
import torch
from rnn_cases import (Detached, autograd_grads, case, forward, loss, plain_copy, readout_grads,
                       rule_grads, weights)

import trainer
from catalogue.errors import UsageError
from trainer.diagnostics import update_angles
from trainer.temporal.rflo import Traces, online_rflo_update, rflo_update


def numpy_rflo(c) -> dict[str, np.ndarray]:
    """p_ji <- d p_ji + (1-d) f'(v_j,t) pre_i,t, dW_ji = sum_t (B e_t)_j p_ji,t, one synapse
    at a time."""
    w, d = weights(c.model), c.model.leak
    x, v, z, e = forward(c)
    rows, steps, hidden = v.shape
    features = x.shape[2]
    grads = {"input.weight": np.zeros((hidden, features)), "input.bias": np.zeros(hidden),
             "recurrent.weight": np.zeros((hidden, hidden)), **readout_grads(z, e)}
    for n in range(rows):
        p_in, p_b = np.zeros((hidden, features)), np.zeros(hidden)
        p_rec = np.zeros((hidden, hidden))
        for t in range(steps):
            z_prev = z[n, t - 1] if t else np.zeros(hidden)
            signal = w["B"].T @ e[n, t]
            for j in range(hidden):
                slope = 1.0 if v[n, t, j] > 0 else 0.0
                p_b[j] = d * p_b[j] + (1 - d) * slope
                for k in range(features):
                    p_in[j, k] = d * p_in[j, k] + (1 - d) * slope * x[n, t, k]
                for i in range(hidden):
                    p_rec[j, i] = d * p_rec[j, i] + (1 - d) * slope * z_prev[i]
            grads["input.weight"] += signal[:, None] * p_in
            grads["input.bias"] += signal * p_b
            grads["recurrent.weight"] += signal[:, None] * p_rec
    return grads


def test_the_traces_follow_the_recursion_step_by_step():
    c = case("rflo")
    x, v, z, _ = forward(c)
    d = c.model.leak
    t_x, t_v, t_z = (torch.from_numpy(a) for a in (x, v, z))
    traces = Traces.zeros(x.shape[0], v.shape[2], x.shape[2], t_v[:, 0])
    expected = np.zeros((x.shape[0], v.shape[2], v.shape[2]))
    for t in range(x.shape[1]):
        z_prev = z[:, t - 1] if t else np.zeros_like(z[:, 0])
        traces.advance(d, t_x[:, t], t_v[:, t], torch.from_numpy(z_prev))
        expected = d * expected + (1 - d) * (v[:, t] > 0)[:, :, None] * z_prev[:, None, :]
        np.testing.assert_allclose(traces.recurrent.numpy(), expected, rtol=0, atol=1e-14)
    assert np.abs(expected).max() > 0


@pytest.mark.parametrize("readout", ["last", "every"])
def test_training_sums_the_online_traces_in_the_other_order(readout):
    """The update training computes (the learning signal filtered backward through the leak)
    equals the online form's traces forward in time, on a larger random case."""
    torch.manual_seed(3)
    rows, steps, hidden, features, outputs, d = 4, 9, 7, 3, 2, 0.6
    v = torch.randn(rows, steps, hidden, dtype=torch.float64)
    states = [(torch.randn(rows, features, dtype=torch.float64), v[:, t], v[:, t].relu())
              for t in range(steps)]
    errors = [torch.randn(rows, outputs, dtype=torch.float64)
              if readout == "every" or t == steps - 1 else None for t in range(steps)]
    feedback = torch.randn(outputs, hidden, dtype=torch.float64)
    backward, online = (f(states, errors, feedback, d)
                        for f in (rflo_update, online_rflo_update))
    for name in ("input", "bias", "recurrent"):
        a, b = getattr(backward, name), getattr(online, name)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), name
        assert b.abs().max() > 0


@pytest.mark.parametrize("readout", ["last", "every"])
def test_the_update_of_every_weight_is_rflos(readout):
    c = case("rflo", readout=readout)
    got, want = rule_grads(c), numpy_rflo(c)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-13, err_msg=name)
        assert np.abs(want[name]).max() > 0, name


def test_without_leak_and_with_b_the_readout_rflo_is_e_prop():
    """d = 0: f' inside or after the filter is the same, and B = W_out^T makes the learning
    signal e-prop's: autograd with z_{t-1} detached in the recurrent input."""
    c = case("rflo", leak=0.0, readout="every")
    with torch.no_grad():
        c.model.readout.weight_backward.copy_(c.model.readout.weight)
    got, want = rule_grads(c), autograd_grads(c, plain_copy(c.model, Detached()))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_the_readouts_update_is_its_gradient_and_the_diagnostics_copy_runs():
    c = case("rflo", hidden=8)
    angles = update_angles(c.model, c.x, c.y, lambda out, y: loss(c, out))
    assert angles["readout"] < 1e-5
    assert all(np.isfinite(a) and a > 1.0 for name, a in angles.items() if name != "readout")


def test_a_model_other_than_the_rate_rnn_is_refused_in_one_line():
    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(UsageError) as caught:
        trainer.convert(copy.deepcopy(model), "rflo")
    assert "\n" not in str(caught.value) and "rate RNN" in str(caught.value)


@pytest.mark.parametrize("rule", ["rflo", "modprop"])
def test_the_temporal_rules_train_the_digits_rnn_with_diagnostics(rule):
    result = trainer.train({"arch": "rnn32", "rule": rule, "epochs": 1,
                            "max_steps_per_epoch": 3, "diagnostics": True})
    layers = result.final["diagnostics"]["layers"]
    assert result.status == "completed" and set(layers) == {"input", "recurrent", "readout"}
    assert layers["readout"]["update_angle"] < 1e-3  # its true gradient
    assert 1.0 < layers["recurrent"]["update_angle"] < 180.0
