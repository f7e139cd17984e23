"""B's warm-up under ``auto``: a few steps of B alone, W frozen, before W's first step.

B starts from a random draw, and W's first steps, taken at the schedule's largest learning
rate and carried on by momentum, would follow a B that is still far from its fixed point. So
``auto`` first steps each B by itself on its regularizer, at step curvature
h = lr_B * lambda_max = ``STEP_CURVATURE`` (1: where Nesterov's, and plain SGD's, iteration
on the stiffest mode has both roots at 0, so a single-mode B, symmetric alignment's or weight
mirror's, reaches its fixed point in two steps; 0.74 of the stability limit at momentum 0.9,
never more than 0.75 of it at any momentum), for the fewest steps that reach the warm-up's
relaxation target, at most ``MAX_FRACTION`` of the run's steps. What the warm-up reaches is
credited to the plan's relaxation times; the run then spreads the rest of ``auto``'s target
as before (docs/design.md section 7).

Cost: none for rules whose regularizer reads no input (symmetric alignment, weight decay
alone); otherwise one training-mode forward pass on the probe batch, whose regularizer
inputs (real activity, or one draw of the rule's noise) every warm-up step reuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from trainer.dynamics.measure import RegularizerCurvature
from trainer.dynamics.modes import warmup_relaxations
from trainer.layers import FeedbackLayer
from trainer.preconditioner import precondition
from trainer.regularizer import regularizer_value_and_grad

STEP_CURVATURE = 1.0  # h on the stiffest mode: deadbeat for Nesterov and plain SGD
MAX_FRACTION = 0.1  # of the run's steps, at most


@dataclass
class LayerWarmup:
    steps: int
    relaxations: float  # reached, by the plan's accounting (exact for one mode)
    lr: float  # B's learning rate during the warm-up


def most_steps(run_steps: int) -> int:
    """The warm-up's length bound: MAX_FRACTION of the run, at least 2 steps (a single-mode
    B's two-step convergence)."""
    return max(2, math.ceil(MAX_FRACTION * run_steps))


def plan_layer(reg: RegularizerCurvature, target: float, most: int, momentum: float,
               nesterov: bool) -> LayerWarmup:
    """The fewest steps at h = STEP_CURVATURE on the top mode that reach ``target``
    relaxation times of W's direction, or, when none within ``most`` does, the count that
    gets furthest (an oscillating spectrum's n need not grow every step)."""
    lr = STEP_CURVATURE / reg.top
    n = warmup_relaxations(reg.nodes, reg.weights, lr, most, momentum, nesterov)
    hits = np.flatnonzero(n >= target)
    k = int(hits[0]) if len(hits) else int(np.argmax(n))
    return LayerWarmup(k + 1, float(n[k]), lr)


def run_layer(layer: FeedbackLayer, coefficients: Mapping[str, float], x: Tensor | None,
              warmup: LayerWarmup, momentum: float) -> None:
    """``warmup.steps`` steps of B alone on its regularizer (W and its input fixed; the
    layer's preconditioner, if it has one, estimated on that input too), with the trainer's
    optimizer (Nesterov when momentum > 0) from rest; its state is dropped, so B's training
    steps start at rest too, as the plan assumes."""
    B = layer.weight_backward
    optimizer = torch.optim.SGD([B], lr=warmup.lr, momentum=momentum,
                                nesterov=momentum > 0)
    start = None
    for _ in range(warmup.steps):
        value, grad = regularizer_value_and_grad(layer, coefficients, x)
        start = float(value) if start is None else start
        grad = precondition(layer, x, grad)  # as the plan measured its curvature
        if not torch.isfinite(grad).all():
            raise ArithmeticError("the warm-up's gradient is not finite")
        B.grad = grad
        optimizer.step()
    B.grad = None
    # the rate came from a Lanczos estimate of the top curvature: one that fell short of the
    # true top lets B grow instead of settle, which the regularizer's value shows
    end = float(regularizer_value_and_grad(layer, coefficients, x)[0])
    if start is not None and not (math.isfinite(end) and end <= start + 1e-6 * abs(start)):
        raise ArithmeticError(f"the warm-up raised B's regularizer from {start:.3g} to "
                              f"{end:.3g} (a top curvature above its estimate)")
