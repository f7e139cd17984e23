"""B's dynamics against closed forms: the curvature routine against dense Hessians, the
stability limit against the optimizer itself, relaxation times against the angle formula,
and the plan against real runs."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dynamics_cases import orthogonal_sa_layer
import primitives_oracle as P
import trainer
from trainer.curvature import hutchinson_trace, lanczos, top_eigenvalue
from trainer.dynamics import (FeedbackPlanner, contraction, effective_relaxations,
                              regularizer_curvature, stability_limit)
from trainer.layers import FeedbackConv2d, FeedbackLinear, vector_angle
from trainer.regularizer import regularizer_hvp

COMBOS = {"information_alignment": {"amp": 0.6, "null": 0.25, "decay": 0.1},
          "activation_alignment": {"sparse": 0.4, "amp": 0.8},
          "all_quadratic": {"decay": 0.1, "null": 0.3, "sparse": 0.4}}


def _dense_hessian(layer, coefficients, x):
    """Hessian of sum_p c_p R_p by autograd through the primitives' definitions."""
    W = layer.weight.detach()
    f = layer.apply_kernel

    def g(r, K):
        z = torch.zeros(x.shape, dtype=r.dtype, requires_grad=True)
        (out,) = torch.autograd.grad(f(z, K), z, r, create_graph=True)
        return out

    defs = {"decay": lambda B: P.decay(B), "amp": lambda B: P.amp(x, W, B, f),
            "null": lambda B: P.null(x, W, B, f, g), "sparse": lambda B: P.sparse(x, B, f)}

    def R(flat):
        B = flat.view_as(W)
        return sum(c * defs[p](B) for p, c in coefficients.items())

    return torch.autograd.functional.hessian(R, layer.weight_backward.detach().flatten())


def _layers():
    rule = trainer.get_rule("weight_mirror")
    yield FeedbackLinear(6, 4, rule=rule).double(), (16, 6)
    yield FeedbackConv2d(2, 3, 3, stride=2, padding=1, rule=rule).double(), (4, 2, 7, 6)


@pytest.mark.parametrize("combo", sorted(COMBOS))
@pytest.mark.parametrize("kind", [0, 1], ids=["linear", "conv"])
def test_curvature_routine_agrees_with_the_dense_hessian(combo, kind):
    layer, shape = list(_layers())[kind]
    x = torch.randn(shape, dtype=torch.double)
    coefficients = COMBOS[combo]
    dense = _dense_hessian(layer, coefficients, x)
    hvp = regularizer_hvp(layer, coefficients, x)
    v = torch.randn_like(layer.weight)
    torch.testing.assert_close(hvp([v])[0].flatten(), dense @ v.flatten())
    eigenvalues = torch.linalg.eigvalsh(dense)
    top = top_eigenvalue(hvp, [layer.weight.detach()], steps=dense.shape[0])
    assert top == pytest.approx(float(eigenvalues.max()), rel=1e-8)
    # The quadrature from W: <W, f(H) W> / <W, W> for f = exp(-t lambda), exact at full k.
    W = layer.weight.detach().flatten()
    nodes, weights = lanczos(hvp, [layer.weight.detach()], dense.shape[0]).ritz()
    t = 1.0 / float(eigenvalues.max())
    exact = float(W @ torch.linalg.matrix_exp(-t * dense) @ W / (W @ W))
    assert float(np.sum(weights * np.exp(-t * nodes))) == pytest.approx(exact, rel=1e-6)
    # A handful of steps (what the plan uses) already finds the top eigenvalue closely.
    reg = regularizer_curvature(layer, coefficients, x)
    assert reg.top == pytest.approx(float(eigenvalues.max()), rel=0.02)
    assert hutchinson_trace(hvp, [layer.weight.detach()], samples=400) == pytest.approx(
        float(eigenvalues.sum()), rel=0.15)


def test_top_eigenvalue_is_algebraic_not_the_largest_magnitude():
    d = torch.tensor([-10.0, -3.0, 0.5, 2.0], dtype=torch.double)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.double))
    H = Q @ torch.diag(d) @ Q.T
    top = top_eigenvalue(lambda v: [H @ v[0]], [torch.zeros(4, dtype=torch.double)], steps=4)
    assert top == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize("momentum,nesterov", [(0.9, True), (0.5, True), (0.9, False),
                                               (0.0, False)])
def test_stability_limit_is_where_the_iteration_stops_contracting(momentum, nesterov):
    limit = stability_limit(momentum, nesterov)
    below, above = contraction(np.array([0.999 * limit, 1.001 * limit]), momentum, nesterov)
    assert below < 1 < above
    # And the formula is the optimizer's: torch's SGD on a 1-d quadratic of curvature lam.
    for h, shrinks in ((0.97 * limit, True), (1.03 * limit, False)):
        p = torch.nn.Parameter(torch.ones(()))
        opt = torch.optim.SGD([p], lr=h / 4.0, momentum=momentum, nesterov=nesterov)
        for _ in range(600):
            opt.zero_grad()
            (2.0 * p * p).backward()  # curvature 4
            opt.step()
        assert (abs(p.item()) < 1e-3) == shrinks, (h, p.item())


@pytest.mark.parametrize("target", [0.3, 1.0, 2.5])
def test_symmetric_alignment_angle_after_n_relaxation_times(target):
    """With W frozen, B's angle to W after n relaxation times is atan(1/(e^n - 1)), where
    n comes from the plan's own accounting (trainer's optimizer: Nesterov 0.9, cosine)."""
    model, layer = orthogonal_sa_layer(freeze_w=True)
    steps, momentum = 300, 0.9
    factors = 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps))
    reg = regularizer_curvature(layer, layer.rule.coefficients, None)
    assert reg.top == pytest.approx(2 * layer.rule.values["alpha"])
    # The B learning rate that gives `target` relaxation times (solved on the plan's n).
    lr_b = 1.0
    for _ in range(60):
        n = effective_relaxations(reg.nodes, reg.weights, lr_b, factors, momentum,
                                  True, from_rest=True)
        lr_b *= target / n
    opt = torch.optim.SGD([layer.weight_backward], lr=lr_b, momentum=momentum, nesterov=True)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_b * factors[t]
        model(torch.randn(4, 48))
        opt.zero_grad()
        trainer.alignment_loss(model).backward()
        opt.step()
    measured = vector_angle(layer.weight, layer.weight_backward)
    predicted = math.degrees(math.atan(1 / (math.exp(target) - 1)))
    assert measured == pytest.approx(predicted, abs=1.5), (measured, predicted)


def test_plan_errors_are_recorded_never_raised():
    model = trainer.convert(trainer.create_model("resnet8", num_classes=10, in_channels=1,
                                                 image_size=8), "activation_alignment")
    with torch.no_grad():
        model.layer1[0].conv1.weight.fill_(float("nan"))
    groups = {name: {"lr_scale": 1.0} for name, _ in trainer.feedback_layers(model)}
    planner = FeedbackPlanner(model, groups, torch.randn(8, 1, 8, 8), lr=0.05,
                              factors=np.ones(10), momentum=0.9, multiplier=1.0, target=10.0)
    plan = planner.plan(0, 0)
    assert plan.error and "not finite" in plan.error
    assert plan.summary()["verdict"] == "unknown" and "could not be computed" in plan.advice()


@pytest.mark.slow
def test_activation_alignment_on_28px_unstable_at_default_and_aligning_under_auto():
    """On 28x28 inputs the sparse term's curvature grows with the feature map's area: the plan
    says unstable at the default multiplier (and the run diverges); auto completes with B
    aligning."""
    common = dict(rule="activation_alignment", arch="resnet8", image_size=28)
    plans = []
    default = trainer.train({**common, "epochs": 2}, on_plan=plans.append)
    assert plans[0].summary()["verdict"] == "unstable"
    assert plans[0].summary()["stability_ratio_max"] > 1.5
    assert default.status == "diverged" and "epoch 1" in default.reason
    plans.clear()
    auto = trainer.train({**common, "epochs": 1, "feedback_lr_multiplier": "auto"},
                         on_plan=plans.append)
    assert auto.status == "completed"
    assert plans[0].summary()["stability_ratio_max"] <= 0.75  # the warm-up's h = 1; then 0.5
    assert auto.feedback_plan["summary"]["stability_ratio_max"] <= 0.75
    chosen = {p["multiplier"] for p in auto.feedback_plan["layers"].values()}
    assert len(chosen) > 1  # each layer its own learning rate
    assert auto.final["diagnostics"]["summary"]["weight_angle_mean"] < 80  # from ~90 at start


def test_plan_is_recorded_per_epoch_and_auto_reaches_its_target():
    result = trainer.train(dict(rule="symmetric_alignment", arch="mlp", epochs=3,
                                feedback_lr_multiplier="auto", feedback_relaxations=4.0,
                                feedback_warmup_relaxations=0.0))  # the even spread alone
    summaries = [r["feedback_plan"]["summary"] for r in result.history]
    assert [s["epoch"] for s in summaries] == [1, 2, 3]
    assert result.feedback_plan["initial"]["relaxations_min"] == pytest.approx(4.0, rel=0.02)
    assert result.feedback_plan["summary"]["relaxations_min"] >= 4.0 * 0.98
    angle = result.final["diagnostics"]["summary"]["weight_angle_mean"]
    assert angle < math.degrees(math.atan(1 / (math.exp(3.0) - 1)))  # W moved, so >= 3


@pytest.mark.parametrize("bad,match", [
    (dict(feedback_relaxations=0.0), "feedback_relaxations must be a positive"),
    (dict(feedback_relaxations=float("inf")), "feedback_relaxations must be a positive"),
    (dict(feedback_lr_multiplier="auto", feedback_plan=False), "needs the feedback plan"),
    (dict(feedback_lr_multiplier="often"), "feedback_lr_multiplier must be a positive"),
])
def test_bad_feedback_options(bad, match):
    with pytest.raises(ValueError, match=match):
        trainer.TrainConfig(**bad).validate()


@pytest.mark.parametrize("steps,schedule", [(69, "cosine"), (400, "step"), (30, "constant")])
def test_relaxations_grow_with_the_learning_rate_below_the_cap(steps, schedule):
    """What auto searches must be monotone: more B learning rate, more relaxation times, up
    to SAFETY of the stability limit, for spectra with slow and fast modes alike."""
    from trainer.dynamics import SAFETY, effective_relaxations_many
    from trainer.schedule import lr_factors

    factors = lr_factors(trainer.TrainConfig(schedule=schedule, epochs=1), steps, steps)
    rng = np.random.default_rng(steps)
    nodes = np.sort(10 ** rng.uniform(-4, 0, 8))
    weights = rng.dirichlet(np.ones(8))
    peak_h = SAFETY * stability_limit(0.9, True)
    lr_bs = np.geomspace(1e-6, peak_h / (nodes.max() * factors.max()), 300)
    n = effective_relaxations_many(nodes, weights, lr_bs, factors, 0.9, True, from_rest=True)
    assert np.all(np.diff(n) >= -1e-9), n


def test_fixed_point_solver_matches_the_closed_forms():
    from trainer.dynamics import fixed_point

    sa = trainer.convert(nn.Sequential(nn.Linear(24, 12, bias=False)), "symmetric_alignment",
                         alpha=1e-3, beta=3e-3)[0]
    torch.testing.assert_close(fixed_point(sa, sa.rule.coefficients, None),
                               1.5 * sa.weight.detach())
    ia = trainer.convert(nn.Sequential(nn.Linear(24, 12, bias=False)).double(),
                         "information_alignment")[0]
    v = ia.rule.values
    W = ia.weight.detach()
    x = torch.randn(50000, 24, dtype=torch.double)  # sigma = 1
    ridge = 2 * v["beta"] * W @ W.t() + 2 * v["gamma"] * torch.eye(12, dtype=torch.double)
    target = v["alpha"] * torch.linalg.solve(ridge, W)
    found = fixed_point(ia, ia.rule.coefficients, x)
    assert vector_angle(found, target) < 2.0
    assert float(found.norm() / target.norm()) == pytest.approx(1.0, abs=0.03)
    # Weight mirror on a convolution: (beta sigma^2 P / 2 alpha) W, P output positions.
    wm = trainer.convert(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)), "weight_mirror",
                         alpha=1e-2, beta=1e-3)[0]
    found = fixed_point(wm, wm.rule.coefficients, torch.randn(2000, 3, 6, 6))
    expected = 1e-3 * 16 / (2 * 1e-2) * wm.weight.detach()
    assert vector_angle(found, expected) < 2.0


def test_an_under_relaxed_plan_under_auto_does_not_advise_auto():
    from trainer.dynamics import FeedbackPlan, LayerPlan

    slow = LayerPlan(curvature=1.0, curvature_along_w=1.0, multiplier=1.0, peak_h=0.5,
                     stability_ratio=0.5, relaxations=0.7, verdict="under-relaxed")
    fixed, auto = FeedbackPlan({"fc": slow}), FeedbackPlan({"fc": slow}, auto=True)
    assert "--feedback-lr-multiplier auto" in fixed.advice()
    assert "--feedback-lr-multiplier" not in auto.advice()  # it runs at auto already
    assert "more epochs" in auto.advice()


def test_auto_plans_at_the_noise_batch_a_step_draws():
    """With k noise samples per step, the null term's Hessian is a k-sample average whose top
    eigenvalue exceeds the batch-sized one's (the sample covariance's edge grows as
    (1 + sqrt(n/k))^2 for a fan-in n): the plan measures the per-step value, so B's rate is
    stable at k = 4 of 128, where a plan on 128 samples had the run diverge."""
    common = dict(rule="information_alignment", arch="mlp", batch_size=128,
                  feedback_lr_multiplier="auto")
    plans: dict[int, list] = {0: [], 4: []}
    for k, seen in plans.items():
        result = trainer.train({**common, "epochs": 3 if k else 1, "noise_batch": k},
                               on_plan=seen.append)
        if k:
            assert result.status == "completed", result.reason
            assert result.final["diagnostics"]["summary"]["weight_angle_mean"] < 80
    full, few = (plans[k][0].layers for k in (0, 4))
    ratios = [few[name].curvature / full[name].curvature for name in full]
    # for white noise into 256 inputs, (1 + sqrt(256/4))^2 / (1 + sqrt(256/128))^2 = 14; the
    # null term sees the noise through W (the output layer's through 10 outputs), so less
    assert len(ratios) == 3 and min(ratios) > 1.5 and max(ratios) > 3, ratios
