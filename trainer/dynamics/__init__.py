"""B's dynamics: each layer's regularizer curvature, stability limit and relaxation budget,
and the plan that sets B's learning rate from them (docs/design.md section 7).

- ``modes``: the optimizer on one mode of a quadratic (numpy only): stability limit,
  contraction per step, relaxation times over a schedule;
- ``measure``: one layer's regularizer curvature (Lanczos on R's Hessian in B), R's fixed
  point, and the regularizer inputs on a probe batch;
- ``plan``: the plan's records, verdicts and advice text (what runs record and studies store);
- ``planner``: ``FeedbackPlanner``, which measures, plans and sets B's learning rates in a run.
"""

from trainer.dynamics.measure import (CG_STEPS, LANCZOS_STEPS, NOISE_BATCHES,
                                      NOISE_SAMPLES_PER_INPUT, RegularizerCurvature,
                                      fixed_point, fixed_point_noise, probe_regularizer_inputs,
                                      regularizer_curvature)
from trainer.dynamics.modes import (contraction, effective_relaxations,
                                    effective_relaxations_many, relaxations, stability_limit)
from trainer.dynamics.plan import UNDER_RELAXED, FeedbackPlan, LayerPlan, verdict
from trainer.dynamics.planner import (MULTIPLIER_RANGE, PROBE_EXAMPLES, SAFETY,
                                      FeedbackPlanner)

__all__ = [
    "CG_STEPS", "FeedbackPlan", "FeedbackPlanner", "LANCZOS_STEPS", "LayerPlan",
    "MULTIPLIER_RANGE", "NOISE_BATCHES", "NOISE_SAMPLES_PER_INPUT", "PROBE_EXAMPLES",
    "RegularizerCurvature", "SAFETY", "UNDER_RELAXED", "contraction", "effective_relaxations",
    "effective_relaxations_many", "fixed_point", "fixed_point_noise", "probe_regularizer_inputs",
    "regularizer_curvature", "relaxations", "stability_limit", "verdict",
]
