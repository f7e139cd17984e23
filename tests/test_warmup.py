"""auto's warm-up of B (trainer.dynamics.warmup) against closed forms: the Nesterov iteration
at h = 1 on symmetric alignment, the warm-up's relaxation accounting against torch's own
optimizer, its rate against the stability limit, and the schedule the plan states."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dynamics_cases import orthogonal_sa_layer
import trainer
from trainer.dynamics import FeedbackPlanner, stability_limit
from trainer.dynamics.modes import PRECISION_FLOOR, warmup_relaxations
from trainer.dynamics.warmup import STEP_CURVATURE, most_steps
from trainer.layers import vector_angle


def _planner(model, steps=40, target=3.0, momentum=0.9, probe=8):
    groups = {name: {"lr_scale": 1.0} for name, _ in trainer.feedback_layers(model)}
    return FeedbackPlanner(model, groups, torch.randn(probe, 48), lr=0.05,
                           factors=np.ones(steps), momentum=momentum, multiplier="auto",
                           target=10.0, warmup=target)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_warmup_rate_is_deadbeat_and_within_three_quarters_of_the_stability_limit(momentum):
    """At h = 1 both roots of the optimizer's characteristic polynomial are 0 (Nesterov,
    plain SGD): torch's own optimizer takes a mode from rest to 0 in two steps, at a rate
    below 3/4 of the stability limit at every momentum."""
    assert STEP_CURVATURE / stability_limit(momentum, momentum > 0) <= 0.75
    lam = 3.7
    p = torch.ones(5, dtype=torch.double, requires_grad=True)
    opt = torch.optim.SGD([p], lr=STEP_CURVATURE / lam, momentum=momentum,
                          nesterov=momentum > 0)
    for _ in range(2):
        p.grad = lam * p.detach()
        opt.step()
    assert float(p.detach().abs().max()) < 1e-12


def test_warmup_accounting_matches_torchs_optimizer_on_a_spread_spectrum():
    """warmup_relaxations against Nesterov SGD itself on a diagonal quadratic with modes
    from stiff to soft (the residual of W's direction, weights w_j), step by step."""
    nodes = np.array([2.0, 0.7, 0.11, 0.02])
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    lr = STEP_CURVATURE / nodes.max()
    predicted = warmup_relaxations(nodes, weights, lr, 12, 0.9, True)
    p = torch.tensor(np.sqrt(weights), requires_grad=True)
    curvature = torch.tensor(nodes)
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9, nesterov=True)
    for k in range(12):
        p.grad = curvature * p.detach()
        opt.step()
        residual = float((p.detach() ** 2).sum())
        measured = -0.5 * math.log(max(residual, math.exp(-2 * PRECISION_FLOOR)))
        assert predicted[k] == pytest.approx(measured, rel=1e-6, abs=1e-6), k


def test_symmetric_alignment_b_after_the_warmup_is_where_the_relaxation_formula_puts_it():
    """One warm-up step at h = 1 from rest: B = W + p (B0 - W) with p = 1 - h (1 + mu) =
    -0.9 and the plan's credit n = -ln|p|, so with B0 orthogonal to W at W's norm the angle is
    atan(e^-n / (1 + e^-n)) (the overshooting side of atan(1 / (e^n - 1))). Two steps reach
    B = W, as the formula says for n at float32's floor."""
    model, layer = orthogonal_sa_layer()
    planner = _planner(model, target=0.05)  # reached after one step
    planner.warm_up()
    warmup = planner.warmups["0"]
    assert warmup.steps == 1 and warmup.relaxations == pytest.approx(-math.log(0.9))
    q = math.exp(-warmup.relaxations)
    predicted = math.degrees(math.atan(q / (1 + q)))
    assert vector_angle(layer.weight, layer.weight_backward) == pytest.approx(predicted, abs=0.01)
    assert planner.realized["0"] == pytest.approx(warmup.relaxations)

    model, layer = orthogonal_sa_layer()
    planner = _planner(model, target=3.0)
    planner.warm_up()
    warmup = planner.warmups["0"]
    assert warmup.steps == 2 and warmup.relaxations == pytest.approx(PRECISION_FLOOR)
    predicted = math.degrees(math.atan(1 / math.expm1(warmup.relaxations)))
    assert vector_angle(layer.weight, layer.weight_backward) == pytest.approx(predicted, abs=0.01)
    torch.testing.assert_close(layer.weight_backward.detach(), layer.weight.detach())


def test_warmup_on_activation_alignment_stays_below_the_limit_and_aligns():
    """A spread spectrum (activation alignment reads the layer input): the warm-up steps the
    stiffest mode at h = 1, takes at most a tenth of the run, and B moves toward the fixed
    point its rule pulls it to on the probe batch."""
    from trainer.dynamics import fixed_point

    torch.manual_seed(0)
    model = trainer.convert(nn.Sequential(nn.Linear(48, 24, bias=False)),
                            "activation_alignment")
    layer = model[0]
    planner = _planner(model, steps=50, target=3.0, probe=256)
    x = planner.fixed_point_probe
    target = fixed_point(layer, layer.rule.coefficients, x)
    before = vector_angle(target, layer.weight_backward)
    planner.warm_up()
    warmup = planner.warmups["0"]
    assert 1 <= warmup.steps <= most_steps(50) == 5
    assert planner.peak_h["0"] / planner.limit <= 0.75
    assert vector_angle(target, layer.weight_backward) < before - 20
    plan = planner.plan(0, 0)
    assert plan.layers["0"].stability_ratio <= 0.75
    assert plan.layers["0"].warmup_steps == warmup.steps


def test_the_plan_states_the_schedule_and_zero_turns_the_warmup_off():
    common = dict(rule="symmetric_alignment", arch="mlp", epochs=1,
                  feedback_lr_multiplier="auto", feedback_relaxations=4.0, diagnostics=False)
    warm = trainer.train(common).feedback_plan
    assert warm["warmup"]["steps"] == 2 and warm["warmup"]["error"] is None
    assert warm["initial"]["schedule"].startswith("warm-up: up to 2 steps of B alone")
    assert warm["summary"]["relaxations_min"] >= PRECISION_FLOOR
    assert all(p["warmup_steps"] == 2 for p in warm["layers"].values())
    even = trainer.train({**common, "feedback_warmup_relaxations": 0.0}).feedback_plan
    assert even["warmup"] is None and "warm-up" not in even["initial"]["schedule"]
    assert even["initial"]["relaxations_min"] == pytest.approx(4.0, rel=0.02)
    fixed = trainer.train({**common, "feedback_lr_multiplier": 1.0}).feedback_plan
    assert fixed["warmup"] is None and fixed["summary"]["schedule"] is None


def test_a_negative_warmup_target_is_refused():
    with pytest.raises(ValueError, match="feedback_warmup_relaxations must be >= 0"):
        trainer.TrainConfig(feedback_warmup_relaxations=-1.0).validate()


def test_a_warmup_that_raises_b_leaves_every_b_where_it_started(monkeypatch):
    """The warm-up's rate is 1 / an estimate of the top curvature; where the estimate falls
    short (injected here: a fifth of the measured top for the second layer), B grows instead
    of settling. The warm-up is then undone for every layer, nothing is credited, and the
    reason is recorded, so the run is auto's even spread with the B it started from."""
    import dataclasses

    import trainer.dynamics.planner as planner_module

    measured = planner_module.regularizer_curvature
    calls = []

    def short_of_the_top(layer, *args, **kwargs):
        reg = measured(layer, *args, **kwargs)
        calls.append(layer)
        return dataclasses.replace(reg, top=reg.top / 5) if len(calls) == 2 else reg

    monkeypatch.setattr(planner_module, "regularizer_curvature", short_of_the_top)
    torch.manual_seed(0)
    model = trainer.convert(nn.Sequential(nn.Linear(48, 24, bias=False), nn.ReLU(),
                                          nn.Linear(24, 24, bias=False)), "symmetric_alignment")
    before = [layer.weight_backward.detach().clone() for _, layer in trainer.feedback_layers(model)]
    planner = _planner(model)
    planner.warm_up()
    assert len(calls) == 2
    assert "raised B's regularizer" in planner.warmup_error
    assert planner.warmups == {} and all(n == 0 for n in planner.realized.values())
    for B0, (_, layer) in zip(before, trainer.feedback_layers(model), strict=True):
        torch.testing.assert_close(layer.weight_backward.detach(), B0)
