"""ModProp (``modprop``) on a tiny float64 rate RNN against the paper's equations written out
in numpy in their forward (online, RTRL-like) form: P_t = d P_{t-1} + (1-d)[E_ji z_i,t-1 +
gate_t mu W_ab P_{t-1}], dW_ji = sum_t (f'(v_t) W_out^T e_t)^T P_t[:, j, i], with W_ab the
cell-type block means of W; the rule computes the backward-in-time recursion, so agreement
is the two forms' equivalence. Its limits: one type per unit, mu = 1 and every unit active
is BPTT; mu = 0 is e-prop (autograd with the recurrent input's z_{t-1} detached)."""

import numpy as np
import pytest
import torch
from rnn_cases import (Detached, autograd_grads, case, forward, plain_copy, readout_grads,
                       rule_grads, weights)

import trainer
from catalogue.errors import UsageError
from trainer.recurrent import RateRNN


def block_means(W: np.ndarray, types: int | np.ndarray) -> np.ndarray:
    """W's block means over ``types`` contiguous blocks, or over each unit's given type."""
    blocks = (np.array_split(np.arange(W.shape[0]), types) if np.isscalar(types)
              else [np.flatnonzero(types == label) for label in np.unique(types)])
    out = np.empty_like(W)
    for post in blocks:
        for pre in blocks:
            out[np.ix_(post, pre)] = W[np.ix_(post, pre)].mean()
    return out


def numpy_modprop(c, mu: float, types: int | np.ndarray,
                  window: int = 0) -> dict[str, np.ndarray]:
    w, d = weights(c.model), c.model.leak
    x, v, z, e = forward(c)
    rows, steps, hidden = v.shape
    features = x.shape[2]
    W_ab = block_means(w["W"], types)
    grads = {"input.weight": np.zeros((hidden, features)), "input.bias": np.zeros(hidden),
             "recurrent.weight": np.zeros((hidden, hidden)), **readout_grads(z, e)}
    for n in range(rows):
        # P[k, j, i]: the approximate d v_k / d W_ji (and likewise for W_in and b).
        P_rec = np.zeros((hidden, hidden, hidden))
        P_in = np.zeros((hidden, hidden, features))
        P_b = np.zeros((hidden, hidden))
        for t in range(steps):
            gate = 1.0 if (window == 0 or t >= steps - window) else 0.0
            z_prev = z[n, t - 1] if t else np.zeros(hidden)
            J = d * np.eye(hidden) + gate * mu * (1 - d) * W_ab
            P_rec = np.einsum("kl,lji->kji", J, P_rec)
            P_in = np.einsum("kl,ljm->kjm", J, P_in)
            P_b = J @ P_b
            for j in range(hidden):
                P_rec[j, j, :] += (1 - d) * z_prev
                P_in[j, j, :] += (1 - d) * x[n, t]
                P_b[j, j] += 1 - d
            credit = (v[n, t] > 0) * (w["W_out"].T @ e[n, t])
            grads["recurrent.weight"] += np.einsum("k,kji->ji", credit, P_rec)
            grads["input.weight"] += np.einsum("k,kjm->jm", credit, P_in)
            grads["input.bias"] += credit @ P_b
    return grads


def _compare(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-13, err_msg=name)
        assert np.abs(want[name]).max() > 0, name


@pytest.mark.parametrize("readout, mu, types, window", [
    ("last", 0.25, 2, 0),  # the reference code's defaults
    ("every", 0.25, 2, 0),
    ("every", 0.7, 3, 2),  # uneven blocks (2, 1, 1), the recurrent credit into the last 2 steps
    ("last", 0.5, 1, 0),
])
def test_every_weights_update_is_the_forward_form_of_the_equations(readout, mu, types, window):
    c = case("modprop", readout=readout, hidden=4, mu=mu, cell_types=min(types, 4),
             window=window)
    _compare(rule_grads(c), numpy_modprop(c, mu, min(types, 4), window))


def test_one_type_per_unit_with_mu_one_and_every_unit_active_is_bptt():
    c = case("modprop", readout="every", mu=1.0, cell_types=3)
    with torch.no_grad():  # every unit above threshold at every step: f' = 1 = mu
        c.model.input.bias.fill_(3.0)
        c.model.recurrent.weight.mul_(0.1)
    x, v, z, e = forward(c)
    assert (v > 0).all()
    _compare(rule_grads(c), autograd_grads(c, plain_copy(c.model)))


def test_without_the_modulatory_term_it_is_e_prop():
    c = case("modprop", readout="every", mu=0.0)
    _compare(rule_grads(c), autograd_grads(c, plain_copy(c.model, Detached())))


def test_the_modulatory_term_matters():
    c = case("modprop", mu=0.25)
    with_term = rule_grads(c)["recurrent.weight"]
    c.model.recurrent.rule = trainer.get_rule("modprop", mu=0.0)
    assert not np.allclose(rule_grads(c)["recurrent.weight"], with_term, rtol=1e-6)


def test_more_cell_types_than_units_are_refused_in_one_line():
    model = RateRNN(2, 3, 2)
    with pytest.raises(UsageError) as caught:
        trainer.convert(model, "modprop", cell_types=4)
    assert "\n" not in str(caught.value) and "cell_types=4" in str(caught.value)


# Dale's law: 5 units at excitatory=0.6 are 2 inhibitory (first) and 3 excitatory, which the
# option's 2 contiguous blocks (3, 2) would split otherwise.
DALE_TYPES = np.array([0, 0, 1, 1, 1])


def test_on_a_dale_rnn_w_ab_is_the_means_over_its_inhibitory_and_excitatory_units():
    c = case("modprop", hidden=5, excitatory=0.6)
    assert c.model.cell_types().tolist() == DALE_TYPES.tolist()
    W = weights(c.model)["W"]
    assert not np.allclose(block_means(W, DALE_TYPES), block_means(W, 2))
    np.testing.assert_allclose(c.model.recurrent.feedback_weight().detach().numpy(),
                               block_means(W, DALE_TYPES), rtol=1e-12, atol=1e-15)
    _compare(rule_grads(c), numpy_modprop(c, 0.25, DALE_TYPES))


def test_cell_types_other_than_the_dale_rnns_two_are_refused_in_one_line():
    model = RateRNN(2, 5, 2, excitatory=0.6)
    with pytest.raises(UsageError) as caught:
        trainer.convert(model, "modprop", cell_types=3)
    assert "\n" not in str(caught.value) and "cell_types=3" in str(caught.value)


def _first_update(rule: str, excitatory: float) -> torch.Tensor:
    """W_rec's update on the first batch of delayed match, from the seeded initial RNN."""
    from catalogue.training import TrainConfig
    from trainer.loop import build

    model, data = build(TrainConfig.from_dict({
        "arch": "rnn32", "rule": rule, "batch_size": 64, "dataset": "delayed_match",
        "model_options": {"leak": 0.9, "excitatory": excitatory},
        "dataset_options": {"cue_steps": 5, "delay_steps": 10, "train_size": 64,
                            "val_size": 8}}))
    x, y, *_ = next(iter(data.train.batches(0)))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return model.recurrent.weight.grad


def test_dales_law_gives_modprop_an_update_of_its_own():
    """Without cell types a zero-mean W's block means are near 0 and ModProp's update is
    nearly e-prop's (measured: 0.4% apart, so their training curves agree to 3 digits); with
    Dale's E and I types W_ab is not, and the two part (measured: 27%)."""
    gap = {}
    for excitatory in (0.0, 0.8):
        modprop, e_prop = (_first_update(rule, excitatory) for rule in ("modprop", "e_prop"))
        gap[excitatory] = float((modprop - e_prop).norm() / e_prop.norm())
    assert gap[0.8] > 0.1 and gap[0.8] > 10 * gap[0.0], gap


def test_modprop_trains_a_dale_rnn_on_delayed_match():
    result = trainer.train({
        "arch": "rnn32", "rule": "modprop", "model_options": {"excitatory": 0.8},
        "dataset": "delayed_match", "dataset_options": {"cue_steps": 5, "delay_steps": 10,
                                                        "train_size": 256, "val_size": 128},
        "epochs": 2, "momentum": 0.0, "lr": 0.1})
    assert result.status == "completed" and len(result.history) == 2
    assert all(np.isfinite(record["val_score"]) for record in result.history)
