"""B's plan as records: per layer and for the model, with the verdicts and the advice text.

Plain data (what a run records in its history and a study stores): the planner
(``trainer.dynamics.planner``) fills them in, ``search`` and the CLI read them. The field
names and the summary's keys are stored in studies and printed: they stay as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from catalogue.mechanism import PLAN_NOT_APPLICABLE

UNDER_RELAXED = 3.0  # fewer relaxation times than this: B is still far from its fixed point
NOT_APPLICABLE = PLAN_NOT_APPLICABLE


def not_applicable(reason: str) -> dict[str, Any]:
    """The plan a run records when the planner has nothing to pace (B is W, a fixed draw,
    W's updates, or a noise correlation), and why: the study says so instead of staying
    silent."""
    return {"summary": {"verdict": NOT_APPLICABLE, "reason": reason,
                        "advice": f"B's plan does not apply: {reason}"},
            "limit": None, "layers": {}}


@dataclass
class LayerPlan:
    curvature: float  # regularizer curvature: top eigenvalue of R's Hessian in B
    curvature_along_w: float  # <W, H W> / <W, W>, H that same Hessian
    multiplier: float  # lr_B / lr
    peak_h: float  # peak step curvature: the largest lr_B * curvature, run so far and rest
    stability_ratio: float  # peak_h / the stability limit
    relaxations: float  # over the whole run: realized so far + planned for the rest
    verdict: str
    warmup_steps: int = 0  # B-only steps before W's first (auto's warm-up)
    warmup_relaxations: float = 0.0  # what they reached, included in ``relaxations``
    # B's gradient is preconditioned (trainer.preconditioner): curvature, peak_h and the
    # relaxation times are those of the preconditioned operator P^1/2 H P^1/2
    preconditioner: str = "none"


@dataclass
class FeedbackPlan:
    """The plan for every learned B; ``error`` says why it could not be computed."""

    layers: dict[str, LayerPlan] = field(default_factory=dict)
    limit: float = 2.0
    auto: bool = False
    target: float | None = None
    epoch: int = 0
    error: str | None = None
    follows_w: bool = False  # B takes W's updates (Kolen-Pollack): its knob is its decay
    warmup: dict[str, Any] | None = None  # auto's B-only warm-up (FeedbackPlanner.warm_up)

    def counts(self) -> dict[str, Any]:
        if self.error is not None or not self.layers:
            return {"epoch": self.epoch, "error": self.error, "verdict": "unknown"}
        plans = list(self.layers.values())
        verdicts = [p.verdict for p in plans]
        worst = next((v for v in ("unstable", "under-relaxed") if v in verdicts), "ok")
        return {"epoch": self.epoch, "verdict": worst,
                "relaxations_min": min(p.relaxations for p in plans),
                "stiffness_max": max(stiffness(p) for p in plans),
                "stability_ratio_max": max(p.stability_ratio for p in plans),
                "unstable_layers": verdicts.count("unstable"),
                "under_relaxed_layers": verdicts.count("under-relaxed"),
                "layers": len(plans), "auto": self.auto, "target": self.target}

    def summary(self) -> dict[str, Any]:
        """The counts and extremes over the layers, with the one-line advice."""
        return {**self.counts(), "advice": self.advice(), "schedule": self.schedule()}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "limit": self.limit, "warmup": self.warmup,
                "layers": {name: asdict(p) for name, p in self.layers.items()}}

    def schedule(self) -> str | None:
        """B's learning-rate schedule under auto, in words: the warm-up, then the spread."""
        if not self.auto:
            return None
        target = "the target's" if self.target is None else f"{self.target:g}"
        spread = (f"lr_B = lr x each layer's multiplier x W's schedule factor, the smallest "
                  f"multiplier that reaches {target} relaxation times over the run "
                  f"(at least the rest's share of them, re-planned after every epoch), peak "
                  f"lr_B x lambda_max at most half the stability limit")
        preconditioned = sorted({p.preconditioner for p in self.layers.values()} - {"none"})
        if preconditioned:
            spread = (f"{spread}; B's gradient preconditioned ({', '.join(preconditioned)}: "
                      f"times (Sigma + eps I)^-1), lambda_max and relaxation times are the "
                      f"preconditioned curvature's")
        w = self.warmup
        if not w:
            return spread
        if w.get("error"):
            return f"warm-up failed ({w['error']}); {spread}"
        reached = w["relaxations_min"]
        return (f"warm-up: up to {w['steps']} steps of B alone before W's first, lr_B x "
                f"lambda_max = {w['step_curvature']:g} ({w['limit_fraction']:.2f} of the "
                f"stability limit), to {w['target']:g} relaxation times (reached: at least "
                f"{reached:.3g}); then {spread}" if reached is not None else
                f"warm-up: none needed; {spread}")

    def advice(self) -> str | None:
        """One line naming the problem and its fix, or None when every layer is fine."""
        s = self.counts()
        follows_w = self.follows_w
        if self.error is not None:
            return f"B's plan could not be computed: {self.error}"
        if s["unstable_layers"]:
            fix = ("a smaller alpha" if follows_w else
                   "--feedback-lr-multiplier auto, or a smaller multiplier")
            return (f"B is unstable in {s['unstable_layers']} of {s['layers']} layers "
                    f"(lr_B x curvature up to {s['stability_ratio_max']:.2g}x the limit): "
                    f"use {fix}")
        if not s["under_relaxed_layers"]:
            return None
        under = (f"B is under-relaxed in {s['under_relaxed_layers']} of {s['layers']} layers "
                 f"(as few as {s['relaxations_min']:.2g} relaxation times; "
                 f">= {UNDER_RELAXED:g} reach the fixed point)")
        if self.auto and not follows_w:
            # auto already steps each B as fast as its stiffest direction allows: what is
            # left slow is set by the metaparameters, which spread B's curvature.
            warm = " (its warm-up at up to 3/4)" if self.warmup else ""
            return (f"{under} although auto runs it at up to half its stability limit{warm}: "
                    f"these metaparameters make its curvature stiff (lambda_max up to "
                    f"{s['stiffness_max']:.3g}x the curvature along W), so its slow directions "
                    f"need more epochs")
        fix = ("more epochs, or a larger alpha" if follows_w else
               "--feedback-lr-multiplier auto, more epochs, or a larger multiplier")
        return f"{under}: use {fix}"


def stiffness(plan: LayerPlan) -> float:
    """How far the layer's curvature spreads: its top eigenvalue over the curvature along W
    (1 for a single mode). A rate the top allows relaxes W's direction this much slower, so
    under ``auto`` an under-relaxed B is the metaparameters' doing, not the rate's."""
    if plan.curvature_along_w <= 0:
        return float("inf") if plan.curvature > 0 else 1.0
    return plan.curvature / plan.curvature_along_w


def verdict(stability_ratio: float, relaxations: float) -> str:
    """unstable past the stability limit; under-relaxed below UNDER_RELAXED; else ok."""
    if not stability_ratio <= 1.0:
        return "unstable"
    return "under-relaxed" if relaxations < UNDER_RELAXED else "ok"
