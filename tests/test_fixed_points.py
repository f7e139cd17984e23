"""B trained by alignment_loss alone, W frozen, reaches its closed-form fixed point
(docs/design.md, section 3)."""

import pytest
import torch
from torch import nn

import trainer
from trainer.layers import vector_angle

IN, OUT = 24, 12


def _train_B(model: nn.Module, sample, steps: int, lr: float, average_tail: bool = False
             ) -> None:
    """SGD on B alone. ``average_tail``: B ends as the mean of its last quarter of iterates,
    which estimates the fixed point of the expected update when each step's is noisier."""
    for p in model.parameters():
        p.requires_grad_(False)
    layer = trainer.feedback_layers(model)[0][1]
    layer.weight_backward.requires_grad_(True)
    opt = torch.optim.SGD([layer.weight_backward], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], 0.1)
    model.train()
    tail = []
    for step in range(steps):
        model(sample())
        loss = trainer.alignment_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if average_tail and step >= 3 * steps // 4:
            tail.append(layer.weight_backward.detach().clone())
    if tail:
        with torch.no_grad():
            layer.weight_backward.copy_(torch.stack(tail).mean(0))


def _assert_close_to(B: torch.Tensor, target: torch.Tensor) -> None:
    angle = vector_angle(B, target)
    ratio = float(B.norm() / target.norm())
    assert angle < 2.0, f"angle to the fixed point {angle:.2f} deg"
    assert abs(ratio - 1) < 0.05, f"norm ratio to the fixed point {ratio:.3f}"


def _linear_model(rule: str, noise: str | None = None, noise_batch: int | None = None,
                  **mp) -> nn.Module:
    model = nn.Sequential(nn.Linear(IN, OUT, bias=False))
    return trainer.convert(model, rule, noise=noise, noise_batch=noise_batch, **mp)


@pytest.mark.parametrize("mp", [{}, {"alpha": 1e-3, "beta": 1e-3}])
def test_symmetric_alignment(mp):
    model = _linear_model("symmetric_alignment", **mp)
    rule = model.creditsweep_rule.values
    _train_B(model, lambda: torch.randn(8, IN), steps=400, lr=200.0)
    W = model[0].weight.detach()
    _assert_close_to(model[0].weight_backward.detach(), rule["beta"] / (2 * rule["alpha"]) * W)


@pytest.mark.parametrize("mp,sigma", [({}, 1.0), ({"alpha": 1e-3, "beta": 3e-3}, 0.7)])
def test_activation_alignment(mp, sigma):
    model = _linear_model("activation_alignment", **mp)
    rule = model.creditsweep_rule.values
    # The real input x ~ N(0, sigma^2 I): full-rank covariance, so the fixed point is unique.
    _train_B(model, lambda: sigma * torch.randn(512, IN), steps=600, lr=150.0 / sigma**2)
    W = model[0].weight.detach()
    _assert_close_to(model[0].weight_backward.detach(), rule["beta"] / (2 * rule["alpha"]) * W)


# The noise's distribution does not move the fixed point: only its variance sigma^2 enters.
@pytest.mark.parametrize("noise", ["normal", "uniform"])
@pytest.mark.parametrize("mp", [{}, {"beta": 2e-3, "sigma": 0.5}])
def test_weight_mirror_linear(mp, noise):
    model = _linear_model("weight_mirror", noise, **mp)
    assert model.creditsweep_rule.noise == noise
    v = model.creditsweep_rule.values
    _train_B(model, lambda: torch.randn(512, IN), steps=600, lr=150.0)
    W = model[0].weight.detach()
    target = v["beta"] * v["sigma"] ** 2 / (2 * v["alpha"]) * W
    _assert_close_to(model[0].weight_backward.detach(), target)


def test_weight_mirror_conv_scales_with_output_positions():
    # No padding, so every output position sees a full noise patch: the factor is exactly P.
    model = trainer.convert(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)), "weight_mirror",
                            alpha=1e-2, beta=1e-3)
    v = model.creditsweep_rule.values
    _train_B(model, lambda: torch.randn(256, 3, 6, 6), steps=600, lr=20.0)
    positions = 4 * 4
    W = model[0].weight.detach()
    target = v["beta"] * v["sigma"] ** 2 * positions / (2 * v["alpha"]) * W
    _assert_close_to(model[0].weight_backward.detach(), target)


@pytest.mark.parametrize("noise", ["normal", "uniform"])
@pytest.mark.parametrize("mp", [{}, {"alpha": 1e-3, "beta": 2e-3, "gamma": 5e-4, "sigma": 0.8}])
def test_information_alignment(mp, noise):
    model = _linear_model("information_alignment", noise, **mp)
    _train_B(model, lambda: torch.randn(512, IN), steps=800, lr=100.0)
    _assert_close_to(model[0].weight_backward.detach().double(), _ia_fixed_point(model))


def _ia_fixed_point(model: nn.Module) -> torch.Tensor:
    v = model.creditsweep_rule.values
    W = model[0].weight.detach().double()
    s2 = v["sigma"] ** 2
    ridge = 2 * v["beta"] * s2 * W @ W.t() + 2 * v["gamma"] * torch.eye(OUT, dtype=W.dtype)
    return v["alpha"] * s2 * torch.linalg.solve(ridge, W)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["weight_mirror", "information_alignment"])
def test_fewer_noise_examples_leave_the_fixed_point(rule):
    """--noise-batch 64 of a 512 batch: R is a mean over the noise examples, so B's expected
    update, and its fixed point, stay; each step's update is 8x noisier, so B is averaged over
    a long low-rate tail (its error then concentrates near 1.6 deg here, against 0.6 deg with
    the whole batch at the same length)."""
    torch.manual_seed(0)
    model = _linear_model(rule, noise_batch=64)
    assert model[0].rule.noise_batch == 64
    v = model.creditsweep_rule.values
    _train_B(model, lambda: torch.randn(512, IN), steps=4000,
             lr=150.0 if rule == "weight_mirror" else 100.0, average_tail=True)
    W = model[0].weight.detach().double()
    target = (v["beta"] * v["sigma"] ** 2 / (2 * v["alpha"]) * W if rule == "weight_mirror"
              else _ia_fixed_point(model))
    _assert_close_to(model[0].weight_backward.detach().double(), target)
