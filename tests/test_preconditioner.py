"""Activation alignment's preconditioned B update (trainer.preconditioner, docs/design.md
section 7): checked against the closed form on a layer whose input covariance has a known
spectrum, against R's fixed point, through the planner, and through real training runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from catalogue.errors import UsageError
from catalogue.training import FEEDBACK_PRECONDITIONERS, TrainConfig, option_notes
from trainer.dynamics import FeedbackPlanner, effective_relaxations, regularizer_curvature
from trainer.dynamics.measure import fixed_point
from trainer.preconditioner import (PRECONDITIONERS, SHRINKAGE, attach, kronecker_factors,
                                    preconditioner_of)
from trainer.loop import build
from trainer.regularizer import regularizer_hvp

SPECTRUM = torch.logspace(0, 2, 16, dtype=torch.float64)  # eigenvalues spanning 100x


def _input_with_spectrum(eigenvalues: torch.Tensor, n: int, d: int, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, V): n rows whose second moment x^T x / n is exactly V diag(eigenvalues) V^T
    (eigenvalues padded with zeros to d: a rank-deficient input)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.zeros(d, dtype=torch.float64)
    lam[:len(eigenvalues)] = eigenvalues
    return math.sqrt(n) * q @ torch.diag(lam.sqrt()) @ v.t(), v


def _aa_linear(d: int, out: int, preconditioner: str, alpha: float = 0.5, beta: float = 1.0,
               seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = trainer.convert(nn.Sequential(nn.Linear(d, out, bias=False)),
                            trainer.get_rule("activation_alignment", alpha=alpha, beta=beta))
    attach(model, preconditioner)
    return model.double()


def _steps(model: nn.Sequential, x: torch.Tensor, lr: float, count: int) -> None:
    """``count`` training-path steps of B alone (plain SGD): the forward leaves the input for
    the regularizer, whose closed-form gradient the preconditioner then multiplies by P."""
    layer = model[0]
    optimizer = torch.optim.SGD([layer.weight_backward], lr=lr)
    for _ in range(count):
        model(x)
        optimizer.zero_grad()
        trainer.alignment_loss(model).backward()
        optimizer.step()


def _mode_residual(model: nn.Sequential, b0: torch.Tensor, target: torch.Tensor,
                   mode: torch.Tensor) -> float:
    """|(B - B*) u| / |(B0 - B*) u|: how much of B's initial error along input direction u
    is left."""
    B = model[0].weight_backward.detach()
    return float(((B - target) @ mode).norm() / ((b0 - target) @ mode).norm())


@pytest.mark.parametrize("preconditioner", ["none", "covariance"])
def test_measured_curvature_is_the_closed_form_preconditioned_spectrum(preconditioner):
    """H = 2 alpha (I kron Sigma); with P = (Sigma + eps I)^-1 the steps see
    2 alpha lambda / (lambda + eps), eps = SHRINKAGE x Sigma's mean eigenvalue."""
    x, _ = _input_with_spectrum(SPECTRUM, 256, 16)
    model = _aa_linear(16, 8, preconditioner)
    layer = model[0]
    reg = regularizer_curvature(layer, layer.rule.active_coefficients, x, steps=24)
    eps = SHRINKAGE * float(SPECTRUM.mean())
    top = 100.0 if preconditioner == "none" else 100.0 / (100.0 + eps)
    assert reg.top == pytest.approx(2 * 0.5 * top, rel=1e-6)


def test_slowest_mode_relaxes_over_ten_times_faster_at_the_same_stability_margin():
    """Plain SGD at h = lr x lambda_max = 1 (half the limit 2) on both: the slowest mode
    (lambda = 1, a hundredth of the top) relaxes by (1 - h lambda / lambda_max) per step
    without P; with P its curvature is 1/(1 + eps) against the top's 100/(100 + eps). Both
    match the closed form, and the preconditioned one is >= 10x faster."""
    x, v = _input_with_spectrum(SPECTRUM, 256, 16)
    eps = SHRINKAGE * float(SPECTRUM.mean())
    count, n = 20, {}
    for name, (slow, top) in {"none": (1.0, 100.0),
                              "covariance": (1 / (1 + eps), 100 / (100 + eps))}.items():
        model = _aa_linear(16, 8, name)
        layer = model[0]
        b0 = layer.weight_backward.detach().clone()
        target = layer.weight.detach()  # (beta / 2 alpha) W = W
        measured_top = regularizer_curvature(layer, layer.rule.active_coefficients, x,
                                             steps=24).top
        _steps(model, x, 1.0 / measured_top, count)
        n[name] = -math.log(_mode_residual(model, b0, target, v[:, 0]))
        assert n[name] == pytest.approx(-count * math.log(1 - slow / top), rel=1e-4)
    assert n["covariance"] >= 10 * n["none"], n


def test_preconditioned_steps_reach_activation_alignments_fixed_point_on_the_span():
    """B* = (beta / 2 alpha) W on the span of the input covariance (design.md section 4);
    B's component outside the span is never touched: P keeps the span, as Sigma does."""
    x, v = _input_with_spectrum(torch.logspace(0, 2, 6, dtype=torch.float64), 256, 12)
    model = _aa_linear(12, 5, "covariance", alpha=0.5, beta=0.6)
    layer = model[0]
    b0 = layer.weight_backward.detach().clone()
    top = regularizer_curvature(layer, layer.rule.active_coefficients, x, steps=24).top
    _steps(model, x, 1.0 / top, 80)
    span, rest = v[:, :6] @ v[:, :6].t(), v[:, 6:] @ v[:, 6:].t()
    B = layer.weight_backward.detach()
    W = layer.weight.detach()
    torch.testing.assert_close(B @ span, 0.6 * W @ span, atol=1e-9, rtol=0)
    torch.testing.assert_close(B @ rest, b0 @ rest, atol=1e-12, rtol=0)
    # the plan's own fixed point (conjugate gradients on the unpreconditioned H) agrees
    torch.testing.assert_close(fixed_point(layer, layer.rule.active_coefficients, x), B,
                               atol=1e-8, rtol=0)


def test_kronecker_factors_are_the_partial_traces_of_the_patch_covariance():
    """A conv's Sigma (from its unfolded patches) summed over kernel offsets is A, over
    channels is S; a padded, strided conv's patches include the padding's zeros."""
    torch.manual_seed(0)
    model = trainer.convert(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1)),
                            "activation_alignment").double()
    layer = model[0]
    x = torch.randn(5, 3, 9, 9, dtype=torch.float64).relu()
    patches = F.unfold(x, 3, padding=1, stride=2)  # (n, 27, positions)
    sigma = torch.einsum("npl,nql->pq", patches, patches) / x.shape[0]
    blocks = sigma.view(3, 9, 3, 9)
    channels, offsets, rows = kronecker_factors(layer, x)
    torch.testing.assert_close(channels, torch.einsum("ckdk->cd", blocks))
    torch.testing.assert_close(offsets, torch.einsum("ckcl->kl", blocks))
    assert rows == 5 * 25
    # and the sparse term's Hessian is 2 alpha v Sigma, what P approximates the inverse of
    v = torch.randn_like(layer.weight)
    hvp = regularizer_hvp(layer, {"sparse": 1.0}, x)([v])[0]
    torch.testing.assert_close(hvp.reshape(4, -1), 2 * v.reshape(4, -1) @ sigma)


def test_auto_plans_each_layer_from_the_preconditioned_spectrum():
    """The planner's curvature, stability ratio and relaxation times for a preconditioned
    layer are those of the closed-form spectrum 2 alpha lambda / (lambda + eps) seen from W;
    auto's multiplier keeps its peak step curvature at half the limit."""
    lam = torch.logspace(0, 2, 8, dtype=torch.float64)
    x, v = _input_with_spectrum(lam, 32, 8)
    factors = np.ones(40)
    relaxations = {}
    for name in FEEDBACK_PRECONDITIONERS:
        model = _aa_linear(8, 4, name)
        layer = model[0]
        group = {"lr_scale": 1.0}
        planner = FeedbackPlanner(model, {"0": group}, x, lr=0.05, factors=factors,
                                  momentum=0.0, multiplier="auto", target=1e3)
        plan = planner.plan(0, 0).layers["0"]
        eps = max(SHRINKAGE, 8 / 32) * float(lam.mean()) if name != "none" else 0.0
        curvature = (lam / (lam + eps) if eps else lam).numpy()  # per unit 2 alpha = 1
        assert plan.preconditioner == name
        assert plan.curvature == pytest.approx(curvature.max(), rel=1e-3)
        assert plan.stability_ratio == pytest.approx(0.5, rel=1e-3)  # capped by the top
        W = layer.weight.detach()
        weights = ((W @ v) ** 2).sum(0).numpy()
        weights /= weights.sum()
        lr_b = 0.05 * group["lr_scale"]
        assert plan.relaxations == pytest.approx(
            effective_relaxations(curvature, weights, lr_b, factors, 0.0, False), rel=0.05)
        relaxations[name] = plan.relaxations
    assert relaxations["covariance"] > 3 * relaxations["none"], relaxations
    assert "preconditioned" in planner.plan(0, 0).schedule()


SMALL = dict(rule="activation_alignment", arch="resnet8", dataset="digits", epochs=2,
             batch_size=64, max_steps_per_epoch=12, feedback_lr_multiplier="auto", seed=0)


@pytest.mark.slow
def test_a_preconditioned_run_trains_aligns_faster_and_states_it_in_its_plan():
    plain = trainer.train(SMALL)
    pre = trainer.train({**SMALL, "feedback_preconditioner": "covariance"})
    assert pre.status == plain.status == "completed"
    assert pre.feedback_plan["summary"]["stability_ratio_max"] <= 0.75
    assert {p["preconditioner"] for p in pre.feedback_plan["layers"].values()} == {"covariance"}
    assert "preconditioned" in pre.feedback_plan["summary"]["schedule"]
    slowest = {r.feedback_plan["summary"]["relaxations_min"] for r in (plain, pre)}
    assert pre.feedback_plan["summary"]["relaxations_min"] == max(slowest)
    angle = {name: r.final["diagnostics"]["summary"]["weight_angle_mean"]
             for name, r in (("plain", plain), ("pre", pre))}
    assert angle["pre"] < angle["plain"] - 5, angle


def test_the_preconditioner_is_model_state_so_checkpoints_carry_it():
    """Its last estimate is in the layer's buffers (tests/test_checkpoint.py continues such a
    run bit for bit)."""
    model, _ = build(TrainConfig(rule="activation_alignment", arch="resnet8",
                                 dataset="digits", feedback_preconditioner="covariance"))
    keys = [k for k in model.state_dict() if ".feedback_preconditioner." in k]
    layers = len(trainer.feedback_layers(model))
    assert len([k for k in keys if k.endswith(".gains")]) == layers == 10


def test_the_option_is_checked_and_noted_where_it_does_nothing():
    assert tuple(PRECONDITIONERS.names()) == FEEDBACK_PRECONDITIONERS
    with pytest.raises(UsageError, match="feedback_preconditioner"):
        TrainConfig(rule="activation_alignment", feedback_preconditioner="newton").validate()
    notes = option_notes("symmetric_alignment", {"feedback_preconditioner": "covariance"})
    assert any("no effect on symmetric_alignment" in n for n in notes)
    assert not option_notes("activation_alignment", {"feedback_preconditioner": "covariance"})
    model, _ = build(TrainConfig(rule="symmetric_alignment", arch="mlp",
                                 feedback_preconditioner="covariance"))
    assert all(preconditioner_of(layer) is None for _, layer in trainer.feedback_layers(model))
