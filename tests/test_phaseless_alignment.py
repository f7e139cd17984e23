"""Phaseless alignment learning (the ``phaseless`` mechanism) against closed forms: the OU
noise's std and lag-1 autocorrelation exp(-1/tau), the high-pass's geometric decay, B's
expected update sigma^2 a/(1+a) W with W frozen, and, on a linear teacher-student MLP trained
the ordinary way, B aligning with W (and not without noise), bounded by its decay at the
closed-form fixed point (and growing without it); B stepping by the paper's first-order
dynamics, without W's momentum, and so training where it diverged with it."""

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from catalogue.errors import UsageError
from catalogue.training import TrainConfig
from trainer.alignment import alignment_value_and_grads
from trainer.angles import vector_angle
from trainer.mechanisms import mechanism_of
from trainer.loop import train_step
from trainer.mechanisms.phaseless import LOW_PASS, NOISE, advance_high_pass, decay_factor
from trainer.optim import applies_feedback_decay, make_optimizer, set_lr

RULE = "phaseless_alignment"


def _rule(**values):
    """The configured rule; sigma=0 (the no-noise control) lies below the option's search
    range, so the control sets it on the configured rule directly."""
    sigma = values.pop("sigma", None)
    configured = trainer.get_rule(RULE, **values)
    if sigma is not None:
        configured = dataclasses.replace(configured, options={**configured.options,
                                                              "sigma": float(sigma)})
    return configured


def _single(layer: nn.Module, **values) -> nn.Module:
    model = trainer.convert(nn.Sequential(layer), _rule(**values))
    model.train()
    return model


def test_the_rule_declares_decay_as_alpha_and_its_noise_options():
    declared = trainer.rule_declaration(RULE)
    assert declared.mechanism == "phaseless" and declared.learns_feedback
    assert dict(declared.terms) == {"decay": "alpha"}  # Kunin's letter for decay, as in KP
    configured = trainer.get_rule(RULE)
    assert dict(configured.values) == {"alpha": 1e-4}
    assert dict(configured.options) == {"sigma": 1e-2, "tau": 10.0}
    assert mechanism_of(declared).plan_reason(declared)  # the B planner does not apply
    with pytest.raises(UsageError, match="sigma"):
        trainer.get_rule(RULE, sigma=5.0)


def test_set_takes_alpha_0_and_the_space_is_log_scaled():
    from search.cli.base import parse_assignments
    from spaces import default_space

    sets = parse_assignments(["alpha=0", "sigma=0.05", "tau=20"], "--set")
    config = TrainConfig(rule=RULE, metaparameters=sets)
    config.validate()
    configured = trainer.get_rule(config.rule, **config.metaparameters)
    assert configured.values["alpha"] == 0.0
    assert dict(configured.options) == {"sigma": 0.05, "tau": 20.0}
    params = default_space(RULE).params
    assert (params["alpha"].low, params["alpha"].high) == (1e-7, 1e-2)
    assert all(params[name].log for name in ("alpha", "sigma", "tau"))


def test_the_ou_noise_has_std_sigma_and_lag1_autocorrelation_exp_minus_1_over_tau():
    sigma, tau = 0.2, 4.0
    model = _single(nn.Linear(64, 8), sigma=sigma, tau=tau)
    x = torch.zeros(512, 64, requires_grad=True)
    draws = []
    for _ in range(40):
        model(x)
        draws.append(getattr(model[0], NOISE).clone())
    noise = torch.stack(draws)  # steps x slots x units: 32768 independent processes
    assert float(noise.std()) == pytest.approx(sigma, rel=0.02)
    assert float(noise[0].std()) == pytest.approx(sigma, rel=0.03)  # stationary from the start
    a = math.exp(-1 / tau)
    for lag in (1, 3):
        correlation = float((noise[lag:] * noise[:-lag]).mean() / noise.var())
        assert correlation == pytest.approx(a ** lag, abs=0.01)


def test_the_high_pass_removes_a_constant_and_decays_a_step_geometrically():
    layer = _single(nn.Linear(3, 2))[0]
    a = decay_factor(5.0)
    c1, c2 = torch.full((4, 2), 1.5), torch.full((4, 2), -0.5)
    for _ in range(3):  # a constant output is removed from its first step
        assert float(advance_high_pass(layer, c1, a).abs().max()) == 0.0
    for t in range(6):  # after a step c1 -> c2: r^HP_t = a^(t+1) (c2 - c1)
        torch.testing.assert_close(advance_high_pass(layer, c2, a),
                                   a ** (t + 1) * (c2 - c1))


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(20, 10), (256, 20)),
    (lambda: nn.Conv2d(3, 4, 3), (32, 3, 8, 8)),
    (lambda: nn.Conv2d(3, 4, 3, stride=2), (32, 3, 9, 9)),
], ids=["linear", "conv", "conv-stride2"])
def test_B_expected_update_is_the_closed_form_with_W_frozen(make, shape):
    """E[B.grad] = -2 sigma^2 a/(1+a) W: the data's part of the output (inputs of std 1, ten
    times the noise's) adds variance, not bias; the bias is high-passed away."""
    sigma, tau, steps = 0.3, 5.0, 300
    model = _single(make(), sigma=sigma, tau=tau)
    layer = model[0]
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    for _ in range(steps):  # B.grad accumulates: its mean over the steps
        model(torch.randn(shape, requires_grad=True)).sum().backward()
    a = math.exp(-1 / tau)
    expected = -2 * sigma ** 2 * a / (1 + a) * layer.weight
    mean = layer.weight_backward.grad / steps
    assert vector_angle(mean, expected) < 8
    assert float(mean.norm() / expected.norm()) == pytest.approx(1.0, abs=0.06)
    assert getattr(layer, NOISE).shape == shape  # the noise is a map of the input's shape


def test_noise_only_in_training_and_only_on_hidden_inputs():
    model = _single(nn.Linear(6, 4), sigma=0.1)
    layer = model[0]
    x = torch.randn(5, 6, requires_grad=True)
    clean = F.linear(x, layer.weight, layer.bias)
    noisy = model(x)
    assert not torch.allclose(noisy, clean)
    state = getattr(layer, NOISE).clone(), getattr(layer, LOW_PASS).clone()
    torch.testing.assert_close(noisy, clean + F.linear(state[0], layer.weight))
    model.eval()
    torch.testing.assert_close(model(x), clean)  # eval: clean, state untouched
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(model(x), clean)  # no-grad forwards too
    torch.testing.assert_close(model(x.detach()), clean)  # data: no layer below, no noise
    assert torch.equal(getattr(layer, NOISE), state[0])
    assert torch.equal(getattr(layer, LOW_PASS), state[1])
    assert not any(k.startswith("phaseless") for k in model.state_dict())  # not checkpointed


def test_a_smaller_batch_continues_the_first_slots_and_a_larger_one_adds_slots():
    model = _single(nn.Linear(6, 4), sigma=0.1, tau=1e3)  # a ~ 1: slots barely move
    layer = model[0]
    model(torch.randn(8, 6, requires_grad=True))
    before = getattr(layer, NOISE).clone()
    model(torch.randn(5, 6, requires_grad=True))  # an epoch's last, smaller batch
    after = getattr(layer, NOISE)
    assert after.shape == before.shape
    assert torch.equal(after[5:], before[5:])  # the slots it did not use are left as they were
    assert not torch.equal(after[:5], before[:5])
    assert vector_angle(after[:5], before[:5]) < 10  # ... the ones it used continued
    model(torch.randn(12, 6, requires_grad=True))
    assert getattr(layer, NOISE).shape == (12, 6) and getattr(layer, LOW_PASS).shape == (12, 4)
    model(torch.randn(3, 2, 6, requires_grad=True))  # another per-example shape starts over
    assert getattr(layer, NOISE).shape == (3, 2, 6)
    assert getattr(layer, LOW_PASS).shape == (3, 2, 4)


# --- a linear teacher-student MLP, trained the ordinary way ---------------------------------

STEPS = 1000
LR, B_MULTIPLIER = 1e-3, 1e4  # W learns slowly (with momentum), B by plain steps at lr_B = 10
SIGMA, TAU = 0.1, 10.0


@functools.lru_cache(maxsize=None)
def _teacher_student(alpha: float, sigma: float) -> dict:
    """A linear 30-20-10 student of a linear teacher (MSE), every weight learning by the
    project's optimizer and step; ∠(W, B) and ||B||/||W|| of the output layer (the one with a
    hidden input) at 0, STEPS/2 and STEPS."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10))
    student = trainer.convert(nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10)),
                              _rule(alpha=alpha, sigma=sigma, tau=TAU))
    optimizer = make_optimizer(student, TrainConfig(lr=LR, weight_decay=0.0,
                                                    feedback_lr_multiplier=B_MULTIPLIER))
    set_lr(optimizer, LR, 1.0)
    layer = student[1]
    record, losses = {}, []
    for step in range(STEPS + 1):
        if step in (0, STEPS // 2, STEPS):
            W, B = layer.weight.detach(), layer.weight_backward.detach()
            record[step] = (vector_angle(W, B), float(B.norm() / W.norm()))
        if step == STEPS:
            break
        x = torch.randn(64, 30)
        with torch.no_grad():
            target = teacher(x)
        loss = F.mse_loss(student(x), target)
        _, feedback_grads = alignment_value_and_grads(
            student, decay_grads=not applies_feedback_decay(optimizer))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for B, grad in feedback_grads:
            B.grad = grad if B.grad is None else B.grad.add_(grad)
        optimizer.step()
        losses.append(loss.detach())
    return {"record": record, "first_loss": float(losses[0]),
            "last_loss": float(torch.stack(losses[-50:]).mean())}


def test_B_aligns_with_W_during_ordinary_training():
    run = _teacher_student(1e-4, SIGMA)
    assert 80 < run["record"][0][0] < 100
    assert run["record"][STEPS][0] < 20
    assert run["last_loss"] < 0.05 * run["first_loss"]


def test_without_noise_B_does_not_align():
    """sigma = 0: nothing but the decay reaches B. W's own drift towards B (feedback
    alignment, at W's small learning rate) moves the angle by a few degrees."""
    run = _teacher_student(1e-4, 0.0)
    assert run["record"][STEPS][0] > 70


def test_decay_bounds_B_at_its_fixed_point_and_without_it_B_grows():
    a = math.exp(-1 / TAU)
    fixed_ratio = SIGMA ** 2 * a / ((1 + a) * 3e-4)  # ||B*|| / ||W||, 15.8
    bounded = _teacher_student(3e-4, SIGMA)["record"]
    assert bounded[STEPS][1] == pytest.approx(fixed_ratio, rel=0.15)
    assert bounded[STEPS][1] / bounded[STEPS // 2][1] == pytest.approx(1.0, abs=0.1)
    growing = _teacher_student(0.0, SIGMA)["record"]
    assert growing[STEPS][1] / growing[STEPS // 2][1] > 1.7  # about linear in the steps
    assert growing[STEPS][1] > 4 * bounded[STEPS][1]


def test_the_weight_angle_is_recorded_and_measuring_it_leaves_the_noise_alone():
    from trainer.diagnostics import measure_alignment

    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    trainer.convert(model, RULE)
    model.train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    F.cross_entropy(model(x), y).backward()
    state = {n: getattr(layer, NOISE).clone() for n, layer in trainer.feedback_layers(model)}
    measured = measure_alignment(model, x, y, F.cross_entropy)
    for name, layer in trainer.feedback_layers(model):
        assert measured["layers"][name]["weight_angle"] == pytest.approx(
            vector_angle(layer.weight, layer.weight_backward))
        assert torch.equal(getattr(layer, NOISE), state[name])


def test_auto_says_before_the_run_that_it_cannot_pace_pal():
    """B's planner does not see the noise correlation that trains PAL's B: --feedback-lr-
    multiplier auto says so up front, as for rules whose B no regularizer trains."""
    from catalogue.training import feedback_note

    note = feedback_note("phaseless_alignment", "auto")
    assert note is not None and "has no effect on phaseless_alignment" in note
    assert feedback_note("weight_mirror", "auto") is None  # the planner paces it


# --- B's steps: the paper's first-order dynamics, without W's momentum ----------------------

def test_B_steps_are_the_papers_euler_steps_while_W_keeps_its_momentum():
    """Under the default Nesterov momentum 0.9, each step moves B by exactly
    2 lr_B (C_t - alpha B_t), C_t formed from this step's noise and high-passed output alone:
    nothing is carried over from earlier steps (with momentum beta, B's drift and its noise
    would be 1/(1 - beta) = 10 times the paper's). W's steps keep their momentum."""
    torch.manual_seed(0)
    model = trainer.convert(nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)),
                            _rule(sigma=0.1, tau=3.0))
    model.train()
    lr, multiplier, alpha = 0.05, 2.0, 1e-4
    optimizer = make_optimizer(model, TrainConfig(lr=lr, feedback_lr_multiplier=multiplier))
    set_lr(optimizer, lr, 1.0)
    first, layer = model[0], model[2]
    for step in range(4):
        W0, b0, W, b, B = (t.detach().clone() for t in (
            first.weight, first.bias, layer.weight, layer.bias, layer.weight_backward))
        x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
        train_step(model, optimizer, x, y)
        noise, low_pass = getattr(layer, NOISE), getattr(layer, LOW_PASS)
        r = F.linear(F.relu(F.linear(x, W0, b0)) + noise, W, b)
        C = (r - low_pass).T @ noise / len(x)
        torch.testing.assert_close(layer.weight_backward.detach(),
                                   B + 2 * lr * multiplier * (C - alpha * B))
        plain = W - lr * (layer.weight.grad + 5e-4 * W)  # what W would take without momentum
        assert step == 0 or not torch.allclose(layer.weight.detach(), plain, atol=1e-6)


def test_only_pal_B_steps_without_momentum_and_a_restore_keeps_it_so():
    """Another learned B (Kolen-Pollack's) keeps W's momentum; a state saved with momentum
    on PAL's B (before B followed the paper's dynamics) is restored without it."""
    from trainer.optim import FEEDBACK_DECAY

    def b_groups(rule):
        model = trainer.convert(nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)), rule)
        optimizer = make_optimizer(model, TrainConfig())
        return optimizer, [g for g in optimizer.param_groups if g.get(FEEDBACK_DECAY) is not None]

    _, kolen_pollack = b_groups("kolen_pollack")
    assert [(g["momentum"], g["nesterov"]) for g in kolen_pollack] == [(0.9, True)]
    optimizer, pal = b_groups(_rule())
    assert [(g["momentum"], g["nesterov"]) for g in pal] == [(0.0, False)]
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group.update(momentum=0.9, nesterov=True)
    optimizer.load_state_dict(state)
    assert [(g["momentum"], g["nesterov"]) for g in optimizer.param_groups] == [
        (0.9, True), (0.9, True), (0.0, False)]


def test_pal_at_its_defaults_trains_where_B_with_momentum_diverged():
    """The digits MLP at lr 0.1, batch 16: B with W's momentum random-walked on its mostly
    noise update (the data's part of the high-passed output, white from step to step), grew
    the last layer's B and with it the error below, and the loss overflowed in the first
    epoch; with the paper's steps PAL trains as feedback alignment does."""
    common = {"arch": "mlp", "dataset": "digits", "epochs": 2, "batch_size": 16, "lr": 0.1,
              "diagnostics": False}
    pal = trainer.train({**common, "rule": RULE})
    fa = trainer.train({**common, "rule": "feedback_alignment"})
    assert pal.status == "completed" and fa.status == "completed"
    assert pal.best_val_top1 > fa.best_val_top1 - 0.05
