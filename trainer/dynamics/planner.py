"""The planner: measures each learned B's regularizer curvature during a run and, under
``auto``, sets B's learning rate from it.

``auto`` first warms each B up alone, W frozen, to a few relaxation times
(``trainer.dynamics.warmup``), then gives it the learning rate that reaches a target number of
relaxation times within the run, never above ``SAFETY`` of its stability limit, and re-plans
each epoch as W and the activity change. It is the one part of ``trainer.dynamics`` with
state (what the run has realized so far, kept in checkpoints) and side effects (the optimizer
groups' ``lr_scale``, and B itself during the warm-up).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from trainer.conversion import feedback_layers
from trainer.dynamics.measure import (RegularizerCurvature, fixed_point, fixed_point_noise,
                                      probe_regularizer_inputs, regularizer_curvature)
from trainer.dynamics.modes import (effective_relaxations, effective_relaxations_many,
                                    stability_limit)
from trainer.dynamics.plan import FeedbackPlan, LayerPlan, verdict
from trainer.dynamics.warmup import (STEP_CURVATURE, LayerWarmup, most_steps, plan_layer,
                                     run_layer)
from trainer.layers import FeedbackLayer, vector_angle
from trainer.preconditioner import preconditioner_name

SAFETY = 0.5  # auto keeps every layer's peak lr_B * lambda_max below this fraction of the limit
PROBE_EXAMPLES = 32
MULTIPLIER_RANGE = (1e-4, 1e6)  # what auto searches, on a log grid


class FeedbackPlanner:
    """Measures each learned B's regularizer curvature and sets its learning rate, at the start
    of a run and after every epoch.

    ``groups`` maps a feedback layer's name to the optimizer group of its B (one group each
    under ``auto``, one shared group otherwise); the planner writes ``lr_scale`` there.
    """

    def __init__(self, model: nn.Module, groups: Mapping[str, dict], probe: Tensor, *,
                 lr: float, factors: np.ndarray, momentum: float, multiplier: float | str,
                 target: float, warmup: float = 0.0, seed: int = 0) -> None:
        self.model, self.groups, self.probe = model, groups, probe[:PROBE_EXAMPLES]
        self.fixed_point_probe = probe
        self.lr, self.factors, self.momentum = lr, factors, momentum
        self.nesterov = momentum > 0
        self.auto = multiplier == "auto"
        self.multiplier = 1.0 if self.auto else float(multiplier)
        self.target, self.seed = target, seed
        self.warmup_target = warmup if self.auto else 0.0
        self.warmups: dict[str, LayerWarmup] = {}
        self.warmup_error: str | None = None
        self.limit = stability_limit(momentum, self.nesterov)
        self.layers = {name: layer for name, layer in feedback_layers(model)
                       if layer.mechanism.plan_reason(layer.rule.rule) is None}
        self.realized = {name: 0.0 for name in self.layers}
        self.peak_h = {name: 0.0 for name in self.layers}
        self._last: dict[str, tuple[RegularizerCurvature, float]] = {}
        self._planned_at = 0

    @staticmethod
    def _follows_w(layer: FeedbackLayer) -> bool:
        """B takes W's updates (Kolen-Pollack): its rate stays W's, its target is W."""
        return layer.mechanism.feedback_gets_weight_grad(layer.rule.rule)

    def multiplier_of(self, name: str) -> float:
        return float(self.groups[name]["lr_scale"])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to go on planning (tensors and plain values only)."""
        return {"realized": dict(self.realized), "peak_h": dict(self.peak_h),
                "planned_at": self._planned_at, "warmup_error": self.warmup_error,
                "warmups": {name: dict(vars(w)) for name, w in self.warmups.items()},
                "last": {name: {"top": reg.top, "nodes": torch.from_numpy(reg.nodes),
                                "weights": torch.from_numpy(reg.weights),
                                "multiplier": multiplier}
                         for name, (reg, multiplier) in self._last.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.realized = dict(state["realized"])
        self.peak_h = dict(state["peak_h"])
        self._planned_at = int(state["planned_at"])
        self.warmup_error = state.get("warmup_error")
        self.warmups = {name: LayerWarmup(**w) for name, w in state.get("warmups", {}).items()}
        self._last = {name: (RegularizerCurvature(float(v["top"]), v["nodes"].numpy(),
                                                  v["weights"].numpy()), float(v["multiplier"]))
                      for name, v in state["last"].items()}

    def warm_up(self) -> None:
        """Before W's first step (auto with a warm-up target): each B alone, on its
        regularizer at the probe batch, at step curvature STEP_CURVATURE on its stiffest mode,
        for the fewest steps that reach the target (``trainer.dynamics.warmup``); what they
        reach is credited to the run's relaxation times. A failure is recorded, not raised,
        and leaves the run to ``auto``'s even spread."""
        if self.warmup_target <= 0 or self._planned_at or self.warmups:
            return
        most = most_steps(len(self.factors))
        saved = {name: layer.weight_backward.detach().clone()
                 for name, layer in self.layers.items()}
        done: dict[str, LayerWarmup] = {}
        try:
            inputs = probe_regularizer_inputs(self.model, self.fixed_point_probe,
                                              self.seed + 15485863)
            for name, layer in self.layers.items():
                if self._follows_w(layer):
                    continue
                coefficients = {p: c for p, c in layer.rule.coefficients.items() if c}
                reg = regularizer_curvature(layer, coefficients, inputs[name], seed=self.seed)
                if reg.top <= 0:
                    continue
                warmup = plan_layer(reg, self.warmup_target, most, self.momentum,
                                    self.nesterov)
                run_layer(layer, coefficients, inputs[name], warmup, self.momentum)
                done[name] = warmup
        except (ArithmeticError, ValueError, RuntimeError) as exc:
            # every B back to where it started, nothing credited: the run is auto's even
            # spread, as the plan then says, not a half-warmed B the plan knows nothing of
            with torch.no_grad():
                for name, B in saved.items():
                    self.layers[name].weight_backward.copy_(B)
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            return
        for name, warmup in done.items():
            self.warmups[name] = warmup
            self.realized[name] += warmup.relaxations
            self.peak_h[name] = max(self.peak_h[name], STEP_CURVATURE)

    def plan(self, step: int, epoch: int) -> FeedbackPlan:
        """Re-measure at ``step``: credit the steps since the last plan, choose the learning
        rates for the rest (auto), and predict the relaxation times of the whole run."""
        done = self.factors[self._planned_at:step]
        for name, (reg, multiplier) in self._last.items():
            self.realized[name] += effective_relaxations(
                reg.nodes, reg.weights, self.lr * multiplier, done, self.momentum,
                self.nesterov, from_rest=self._planned_at == 0)
            if len(done):
                self.peak_h[name] = max(self.peak_h[name],
                                        self.lr * multiplier * float(done.max()) * reg.top)
        self._planned_at = step
        plan = FeedbackPlan(limit=self.limit, auto=self.auto,
                            target=self.target if self.auto else None, epoch=epoch,
                            warmup=self.warmup_record(),
                            follows_w=any(layer.mechanism.feedback_gets_weight_grad(layer.rule.rule)
                                          for layer in self.layers.values()))
        try:
            inputs = probe_regularizer_inputs(self.model, self.probe, self.seed + epoch)
            measured = {name: regularizer_curvature(layer, {p: c for p, c in
                                                            layer.rule.coefficients.items()
                                                            if c},
                                                    inputs[name], seed=self.seed + epoch)
                        for name, layer in self.layers.items()}
        except (ArithmeticError, ValueError, RuntimeError) as exc:
            plan.error = f"{type(exc).__name__}: {exc}"
            return plan
        rest = self.factors[step:]
        peak = float(rest.max()) if len(rest) else 0.0
        for name, reg in measured.items():
            if self.auto and not self._follows_w(self.layers[name]):
                self.groups[name]["lr_scale"] = self._choose(name, reg, rest)
            multiplier = self.multiplier_of(name)
            ahead = effective_relaxations(reg.nodes, reg.weights, self.lr * multiplier, rest,
                                          self.momentum, self.nesterov, from_rest=step == 0)
            total = self.realized[name] + ahead
            peak_h = max(self.peak_h[name], self.lr * multiplier * peak * reg.top)
            ratio = peak_h / self.limit
            warmup = self.warmups.get(name)
            plan.layers[name] = LayerPlan(reg.top, reg.along_w, multiplier, peak_h, ratio,
                                          total, verdict(ratio, total),
                                          warmup.steps if warmup else 0,
                                          warmup.relaxations if warmup else 0.0,
                                          preconditioner_name(self.layers[name]))
            self._last[name] = (reg, multiplier)
        return plan

    def warmup_record(self) -> dict[str, Any] | None:
        """The warm-up as the plan states it: its target, steps (the most any layer took),
        step curvature, and the fewest relaxation times a layer reached; None without one."""
        if self.warmup_target <= 0:
            return None
        done = list(self.warmups.values())
        return {"target": self.warmup_target, "step_curvature": STEP_CURVATURE,
                "limit_fraction": STEP_CURVATURE / self.limit,
                "max_steps": most_steps(len(self.factors)),
                "steps": max((w.steps for w in done), default=0),
                "relaxations_min": min((w.relaxations for w in done), default=None),
                "error": self.warmup_error}

    def fixed_point_angles(self) -> dict[str, float]:
        """Each learned B's angle (degrees) to the fixed point its rule pulls it to.

        A noise rule's fixed point is an expectation over the noise, so it is estimated from
        enough draws that examples x output positions >= 16 x the layer's fan-in. Kolen-
        Pollack's B takes W's updates, so its target is W itself (B - W decays).
        """
        inputs = probe_regularizer_inputs(self.model, self.fixed_point_probe, self.seed + 7919)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 104729)
        angles = {}
        for name, layer in self.layers.items():
            coefficients = {p: c for p, c in layer.rule.coefficients.items() if c}
            x = inputs[name]
            try:
                if self._follows_w(layer):
                    target = layer.weight.detach()
                else:
                    if x is not None and layer.rule.rule.uses_noise:
                        x = fixed_point_noise(layer, x, gen)
                    target = fixed_point(layer, coefficients, x)
                angles[name] = vector_angle(layer.weight_backward, target)
            except (ArithmeticError, ValueError, RuntimeError):
                angles[name] = float("nan")
        return angles

    def _choose(self, name: str, reg: RegularizerCurvature, rest: np.ndarray) -> float:
        """The smallest multiplier whose relaxations over the rest of the run reach what is
        left of the target (never less than the rest's share of it, so that B keeps tracking
        a moving W), capped at SAFETY of the stability limit."""
        peak = float(rest.max()) if len(rest) else 0.0
        if peak <= 0 or reg.top <= 0:
            return self.multiplier_of(name)
        share = self.target * len(rest) / len(self.factors)
        wanted = max(self.target - self.realized[name], share)
        cap = min(MULTIPLIER_RANGE[1], SAFETY * self.limit / (self.lr * peak * reg.top))

        def first_enough(grid: np.ndarray) -> int | None:
            n = effective_relaxations_many(reg.nodes, reg.weights, self.lr * grid, rest,
                                           self.momentum, self.nesterov,
                                           from_rest=len(rest) == len(self.factors))
            hits = np.flatnonzero(n >= wanted)
            return int(hits[0]) if len(hits) else None

        grid = np.geomspace(min(MULTIPLIER_RANGE[0], cap), cap, 48)
        first = first_enough(grid)
        if first is None:
            return float(cap)  # stability caps it: the plan will say under-relaxed
        if first == 0:
            return float(grid[0])
        fine = np.geomspace(grid[first - 1], grid[first], 32)  # within 1.6 % of the smallest
        return float(fine[first_enough(fine) or len(fine) - 1])
