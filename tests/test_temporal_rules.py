"""BPTT, truncated BPTT and e-prop on the rate RNN, each held against an oracle written from
the equations (tests/rate_rnn_oracle.py): autograd on a hand-unrolled loop, or the backward
recursion computed by hand in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trainer
from catalogue.errors import UsageError
from catalogue.training import TrainConfig
from tests.rate_rnn_oracle import backward_by_hand, unrolled, weights
from trainer.recurrent import RateRNN
from trainer.temporal.eprop import online_gradients

FEATURES, HIDDEN, OUTPUTS, STEPS, LEAK = 3, 6, 4, 7, 0.5
# model parameter name -> the oracle's name
NAMES = {"input.weight": "W_in", "input.bias": "b", "recurrent.weight": "W",
         "readout.weight": "W_out", "readout.bias": "b_out"}
READOUTS = ["last", "every"]


def tiny(readout: str, rule: str | None = None, seed: int = 0, **options) -> RateRNN:
    """A float64 RateRNN (d = 0.5, nonzero W) converted to ``rule``."""
    torch.manual_seed(seed)
    model = RateRNN(FEATURES, HIDDEN, OUTPUTS, leak=LEAK, readout=readout).double()
    with torch.no_grad():  # a positive bias keeps most units active: every path carries error
        model.input.bias.uniform_(0.0, 0.5)
    if rule is not None:
        trainer.convert(model, rule, **options)
    return model


def batch(readout: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, STEPS, FEATURES, generator=g, dtype=torch.float64)
    if readout == "last":
        return x, torch.randint(0, OUTPUTS, (5,), generator=g)
    return x, torch.randn(5, STEPS, OUTPUTS, generator=g, dtype=torch.float64)


def loss_of(readout: str, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Classification at the last step, or squared error at every step."""
    return F.cross_entropy(y, target) if readout == "last" else F.mse_loss(y, target)


def model_grads(model: RateRNN, readout: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every parameter's gradient under the converted model's rule, and dL/dy."""
    x, target = batch(readout)
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.retain_grad()
    loss_of(readout, y, target).backward()
    return {NAMES[n]: p.grad.detach().clone() for n, p in model.named_parameters()
            if n in NAMES}, y.grad.detach()


def autograd_oracle(model: RateRNN, readout: str, **kwargs) -> dict[str, torch.Tensor]:
    w = {k: v.clone().requires_grad_() for k, v in weights(model).items()}
    x, target = batch(readout)
    y, _, _ = unrolled(w, x, LEAK, readout == "every", **kwargs)
    loss_of(readout, y, target).backward()
    return {k: v.grad for k, v in w.items()}


def by_hand(model: RateRNN, readout: str, dy: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    x, _ = batch(readout)
    return backward_by_hand(weights(model), x, LEAK, dy, readout == "every", **kwargs)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12, msg=k)


# --- backprop on the rate RNN is BPTT -------------------------------------------------------

@pytest.mark.parametrize("readout", READOUTS)
def test_backprop_on_the_rate_rnn_is_bptt_of_the_unrolled_forward(readout):
    model = tiny(readout, "backprop")
    grads, dy = model_grads(model, readout)
    assert_same(grads, autograd_oracle(model, readout))
    assert_same(grads, by_hand(model, readout, dy, B_rec=weights(model)["W"]))


# --- truncated BPTT ---------------------------------------------------------------------------

@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("k", [STEPS, 100])
def test_truncation_at_least_the_sequence_is_bptt(readout, k):
    grads, _ = model_grads(tiny(readout, "truncated_bptt", truncation=k), readout)
    assert_same(grads, autograd_oracle(tiny(readout), readout))


@pytest.mark.parametrize("readout", READOUTS)
def test_truncation_one_keeps_only_each_steps_own_error(readout):
    """k = 1: dL/dv_t = f'(v_t) dL/dy_t W_out, nothing from later steps; computed by hand."""
    model = tiny(readout, "truncated_bptt", truncation=1)
    grads, dy = model_grads(model, readout)
    x, _ = batch(readout)
    w = weights(model)
    _, vs, zs = unrolled(w, x, LEAK, readout == "every")
    expected = {"W_in": 0, "b": 0, "W": 0}
    for t in range(STEPS):
        dy_t = dy[:, t] if readout == "every" else (dy if t == STEPS - 1 else 0 * dy)
        a = (vs[t] > 0).double() * (dy_t @ w["W_out"])
        z_prev = zs[t - 1] if t else 0 * zs[0]
        expected["W_in"] += (1 - LEAK) * a.T @ x[:, t]
        expected["b"] += (1 - LEAK) * a.sum(0)
        expected["W"] += (1 - LEAK) * a.T @ z_prev
    assert_same({k: grads[k] for k in expected}, expected)


@pytest.mark.parametrize("readout", READOUTS)
def test_truncation_windows_are_counted_back_from_the_last_step(readout):
    """k = 3 over 7 steps: windows [0], [1..3], [4..6]; the state is detached at 1 and 4. In
    between 1 and T the gradients differ from BPTT's and from each other's."""
    grads = {k: model_grads(tiny(readout, "truncated_bptt", truncation=k), readout)[0]
             for k in (1, 2, 3)}
    model = tiny(readout)
    _, dy = model_grads(tiny(readout, "backprop"), readout)
    assert_same(grads[3], by_hand(model, readout, dy, B_rec=weights(model)["W"],
                                  cuts=frozenset({1, 4})))
    bptt = autograd_oracle(model, readout)
    assert min(max_diff(grads[k], bptt) for k in grads) > 1e-4
    assert max_diff(grads[2], grads[3]) > 1e-4 and max_diff(grads[1], grads[2]) > 1e-4


# --- e-prop -----------------------------------------------------------------------------------

@pytest.mark.parametrize("readout", READOUTS)
def test_symmetric_e_prop_is_bptt_with_the_recurrent_input_detached(readout):
    model = tiny(readout, "e_prop")
    grads, dy = model_grads(model, readout)
    assert_same(grads, autograd_oracle(model, readout, detach_recurrent=True))
    assert_same(grads, by_hand(model, readout, dy, B_rec=None))


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("feedback", ["symmetric", "random"])
def test_the_online_eligibility_traces_give_the_training_forms_gradient(readout, feedback):
    model = tiny(readout, "e_prop", feedback=feedback)
    grads, dy = model_grads(model, readout)
    B = model.readout.weight_backward.detach() if feedback == "random" else None
    online = online_gradients(model, batch(readout)[0], dy, feedback=B)
    assert_same(grads, {NAMES[k]: v for k, v in online.items()})
    if feedback == "random":  # the learning signal went through B, not W_out
        assert_same(grads, by_hand(model, readout, dy, B_rec=None, B_out=B))
        assert max_diff(grads, by_hand(model, readout, dy, B_rec=None)) > 1e-4


@pytest.mark.parametrize("readout", READOUTS)
def test_e_prop_differs_from_bptt_when_the_network_is_recurrent(readout):
    eprop, _ = model_grads(tiny(readout, "e_prop"), readout)
    bptt = autograd_oracle(tiny(readout), readout)
    assert float(weights(tiny(readout))["W"].abs().max()) > 0.1
    for k in ("W_in", "b", "W"):
        assert float((eprop[k] - bptt[k]).abs().max()) > 1e-4, k
    for k in ("W_out", "b_out"):  # the readout keeps its true gradient
        torch.testing.assert_close(eprop[k], bptt[k], rtol=1e-9, atol=1e-12)


# --- feedback alignment through time ------------------------------------------------------

@pytest.mark.parametrize("readout", READOUTS)
def test_feedback_alignment_carries_the_recurrent_error_through_B_at_every_step(readout):
    model = tiny(readout, "feedback_alignment")
    grads, dy = model_grads(model, readout)
    B_rec = model.recurrent.weight_backward.detach()
    B_out = model.readout.weight_backward.detach()
    assert_same(grads, by_hand(model, readout, dy, B_rec=B_rec, B_out=B_out))
    # and not through W anywhere
    assert max_diff(grads, by_hand(model, readout, dy, B_rec=weights(model)["W"],
                                   B_out=B_out)) > 1e-4


# --- where the temporal rules run ---------------------------------------------------------

@pytest.mark.parametrize("rule", ["e_prop", "truncated_bptt"])
def test_the_temporal_rules_refuse_models_without_time_steps_in_one_line(rule):
    with pytest.raises(UsageError) as caught:
        TrainConfig(rule=rule, arch="resnet8").validate()
    assert "\n" not in str(caught.value) and "rnn" in str(caught.value)
    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(UsageError) as caught:
        trainer.convert(model, rule)
    assert "\n" not in str(caught.value) and "RateRNN" in str(caught.value)
    assert not trainer.feedback_layers(model)


@pytest.mark.parametrize("rule, options", [("e_prop", {"feedback": "random"}),
                                           ("truncated_bptt", {"truncation": 3})])
def test_the_temporal_rules_train_the_rnn_on_digits(rule, options):
    result = trainer.train(dict(rule=rule, arch="rnn32", epochs=1, max_steps_per_epoch=5,
                                metaparameters=options,
                                feedback_plan=False, diagnostics=False, device="cpu"))
    assert result.status == "completed", result
    assert result.config["metaparameters"] == options


@pytest.mark.parametrize("rule, options", [("e_prop", {"feedback": "random"}),
                                           ("truncated_bptt", {"truncation": 2})])
def test_the_true_loss_curvature_and_angles_see_bptt_under_a_temporal_rule(rule, options):
    """exact_backward (the Hessian's and the gradient angle's true loss) carries the whole
    state through time, and gives the rule its own carry back afterwards."""
    from trainer.curvature import exact_backward

    model = tiny("last", rule, **options)
    carry = model.through_time
    with exact_backward(model):
        exact, _ = model_grads(model, "last")
    assert model.through_time is carry
    assert_same(exact, autograd_oracle(tiny("last"), "last"))
