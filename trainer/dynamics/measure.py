"""What B's plan measures on one layer: the curvature of its regularizer R and R's fixed point.

This is the *regularizer curvature*: the Hessian H of R_l with respect to B (constant, since R
is quadratic in B, given W and the input statistics), not the task loss's curvature that
``--curvature`` measures (``trainer.curvature.task_hessian``).

Which modes matter: B is pulled along W (SA, AA, WM and KP have fixed points proportional to
W; IA's is W's ridge pseudo-inverse, in W's row space), so the plan follows W's own direction.
A Lanczos run from W gives the spectral measure of H seen from W (nodes lambda_j, weights w_j),
from which ``trainer.dynamics.modes`` computes the residual of W's direction after a run.
Per rule (docs/design.md section 7):

- symmetric alignment, weight mirror, Kolen-Pollack: H = 2 alpha I, a single mode, n exact;
- information alignment: H = 2 beta (null term) + 2 gamma I; modes along W's small singular
  directions relax at close to the decay floor 2 gamma, and they dominate the residual;
- activation alignment: H = 2 alpha (input covariance, summed over positions), no floor;
  W's energy in low-variance input directions relaxes slowly and bounds the alignment.

The stability limit is set by the top eigenvalue: the largest Ritz value of the runs from W
and from a random start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from trainer.alignment import noise_shape, regularizer_inputs
from trainer.conversion import feedback_layers
from trainer.curvature import lanczos, random_like
from trainer.layers import FeedbackLayer
from trainer.noise import noise_like
from trainer.preconditioner import preconditioned_hvp
from trainer.regularizer import regularizer_hvp, weighted_regularizer

LANCZOS_STEPS = 8
CG_STEPS = 20
NOISE_SAMPLES_PER_INPUT = 16  # noise fixed points: examples x positions >= 16 x fan-in ...
NOISE_BATCHES = 4  # ... but at most 4 training batches of noise per layer (a cost bound)


@dataclass
class RegularizerCurvature:
    """Curvature of one layer's R in B: the top eigenvalue of its Hessian and the Hessian's
    spectral measure seen from W."""

    top: float
    nodes: np.ndarray
    weights: np.ndarray

    @property
    def along_w(self) -> float:
        """The Rayleigh quotient <W, H W> / <W, W>."""
        return float(np.sum(self.weights * self.nodes))


def regularizer_curvature(layer: FeedbackLayer, coefficients: Mapping[str, float],
                          x: Tensor | None, steps: int = LANCZOS_STEPS, seed: int = 0
                          ) -> RegularizerCurvature:
    """The curvature of sum_p c_p R_p in the layer's B, on the regularizer input ``x``, as B's
    steps see it: with the layer's preconditioner P, that of P^1/2 H P^1/2
    (``trainer.preconditioner``), whose spectrum sets the stability limit and the relaxation
    times of preconditioned steps."""
    decay = 2 * coefficients.get("decay", 0.0)
    if not (coefficients.get("sparse") or coefficients.get("null")):
        return RegularizerCurvature(decay, np.array([decay]), np.array([1.0]))  # H = decay * I
    hvp = preconditioned_hvp(layer, x, regularizer_hvp(layer, coefficients, x))
    W = layer.weight.detach()
    from_w = lanczos(hvp, [W], steps)
    from_random = lanczos(hvp, random_like([W], seed), steps)
    nodes, weights = from_w.ritz()
    top = max(from_w.largest(), from_random.largest())
    if not all(math.isfinite(v) for v in (top, *nodes)):
        raise ArithmeticError("the curvature estimate is not finite")
    return RegularizerCurvature(top, np.maximum(nodes, 0.0), weights)  # H is positive semi-definite


def fixed_point(layer: FeedbackLayer, coefficients: Mapping[str, float], x: Tensor | None,
                steps: int = CG_STEPS) -> Tensor:
    """The B that R pulls this B to: the minimum of R reached from B, by conjugate gradients
    on H d = -grad R(B) with the same Hessian-vector product (docs/design.md section 7).
    Modes outside H's range (activation alignment's directions its input never excites)
    keep B's own components, as they do in training."""
    B = layer.weight_backward
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(weighted_regularizer(layer, coefficients, x), B)
    hvp = regularizer_hvp(layer, coefficients, x)
    d = torch.zeros_like(grad)
    r = -grad
    p = r.clone()
    rr = float((r * r).sum())
    first = rr
    for _ in range(steps):
        if rr <= 1e-14 * first or rr == 0:
            break
        hp = hvp([p])[0]
        curvature_along_p = float((p * hp).sum())  # <p, H p>: R's curvature along p
        if curvature_along_p <= 0:
            break  # a direction without curvature: no pull along it
        step = rr / curvature_along_p
        d = d + step * p
        r = r - step * hp
        rr, previous = float((r * r).sum()), rr
        p = r + (rr / previous) * p
    return B.detach() + d


def fixed_point_noise(layer: FeedbackLayer, x: Tensor, gen: torch.Generator) -> Tensor:
    """The rule's input noise (variance sigma^2) of x's per-example shape, with enough examples
    for the noise's expectation (examples x output positions >= NOISE_SAMPLES_PER_INPUT x
    fan-in), but no more than NOISE_BATCHES times x's batch: wide layers at few positions (a
    ResNet-18's last stage) keep some sampling noise in their fixed point rather than cost a
    training epoch."""
    with torch.no_grad():
        positions = layer.apply_kernel(x[:1], layer.weight.detach()).shape
    positions_per_example = max(1, int(np.prod(positions[2:])) if len(positions) > 2 else 1)
    fan_in = layer.weight[0].numel()
    wanted = math.ceil(NOISE_SAMPLES_PER_INPUT * fan_in / positions_per_example)
    count = min(NOISE_BATCHES * x.shape[0], max(x.shape[0], wanted))
    return noise_like((count, *x.shape[1:]), layer.rule.noise, layer.rule.values["sigma"],
                      dtype=x.dtype, device=x.device, generator=gen)


_PARAMETERS = ("weight", "bias", "weight_backward")


def probe_regularizer_inputs(model: nn.Module, probe: Tensor, noise_seed: int
                             ) -> dict[str, Tensor | None]:
    """Each feedback layer's regularizer input on the probe batch (``regularizer_inputs``):
    the real (padded) layer input, or the rule's input noise of its shape, drawn from
    ``noise_seed``. The forward runs in training mode, as in a training step, and every
    buffer it touches (BatchNorm statistics) is restored."""
    layers = feedback_layers(model)
    if not any(layer.rule.rule.needs_layer_input for _, layer in layers):
        return {name: None for name, _ in layers}
    saved = {k: v.clone() for k, v in model.state_dict().items()
             if not any(k.endswith(s) for s in _PARAMETERS)}
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            model(probe)
    finally:
        model.load_state_dict(saved, strict=False)
        model.train(was_training)
    gen = torch.Generator(device="cpu").manual_seed(noise_seed)

    def draw(layer: FeedbackLayer, x: Tensor) -> Tensor:
        """The noise one training step draws: ``noise_batch`` examples where the rule takes
        fewer than the batch. Its curvature is an average over those k samples, whose top
        eigenvalue exceeds the expectation's (the sample covariance's edge grows as
        (1 + sqrt(n/k))^2 for n inputs); B's step must be stable at that per-step value."""
        shape = noise_shape(x, layer.rule.noise_batch).shape
        return noise_like(shape, layer.rule.noise, layer.rule.values["sigma"],
                          dtype=x.dtype, device=x.device, generator=gen)

    return {name: regularizer_inputs(layer, layer.pop_regularizer_cache(), draw)[0]
            for name, layer in layers}
