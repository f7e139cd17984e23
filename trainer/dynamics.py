"""B's dynamics: each layer's regularizer curvature, stability limit and relaxation budget.

Every rule's R_l is quadratic in B, so B moves like the optimizer on a quadratic with a
constant Hessian H (given W and the input statistics). A mode of H with eigenvalue lambda,
stepped with h = lr_B * lambda, contracts per step by rho(h), the spectral radius of the
optimizer's 2x2 iteration (``contraction``); B's error in that mode after a run is the product
of the per-step factors, e^-n with n = sum_t -ln rho(h_t): n *relaxation times*. For plain SGD
rho = |1 - h|; with momentum mu and small h, -ln rho ~ h / (1 - mu).

Which n matters: B is pulled along W (SA, AA, WM and KP have fixed points proportional to W;
IA's is W's ridge pseudo-inverse, in W's row space), so the plan follows W's own direction.
A Lanczos run from W gives the spectral measure of H seen from W (nodes lambda_j, weights w_j),
and the residual of W's direction after the run is R = sum_j w_j e^{-2 n_j}; the plan reports
n = -ln(R) / 2. Per rule (docs/design.md section 7):

- symmetric alignment, weight mirror, Kolen-Pollack: H = 2 alpha I, a single mode, n exact;
- information alignment: H = 2 beta (null term) + 2 gamma I; modes along W's small singular
  directions relax at close to the decay floor 2 gamma, and they dominate the residual;
- activation alignment: H = 2 alpha (input covariance, summed over positions), no floor;
  W's energy in low-variance input directions relaxes slowly and bounds the alignment.

The stability limit is the largest h at which the iteration still contracts, for the top
eigenvalue (largest Ritz value of a Lanczos run from a random start): 2 for SGD, 2(1+mu) for
heavy ball, 2(1+mu)/(1+2mu) for Nesterov, which the trainer uses.

``auto`` gives each layer's B the learning rate that reaches a target number of relaxation
times within the run, never above ``SAFETY`` of its stability limit, and re-plans each epoch
as W and the activity change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from trainer.convert import feedback_layers
from trainer.curvature import lanczos, random_like
from trainer.layers import FeedbackLayer
from trainer.noise import noise_like
from trainer.layers import vector_angle
from trainer.regularizer import regularizer_hvp, weighted_regularizer

SAFETY = 0.5  # auto keeps every layer's peak lr_B * lambda_max below this fraction of the limit
UNDER_RELAXED = 3.0  # fewer relaxation times than this: B is still far from its fixed point
LANCZOS_STEPS = 8
PROBE_EXAMPLES = 32
MULTIPLIER_RANGE = (1e-4, 1e6)  # what auto searches, on a log grid
_BINS = 256
_START_STEPS = 100  # steps simulated exactly when momentum starts from rest
CG_STEPS = 20
NOISE_SAMPLES_PER_INPUT = 16  # noise fixed points: examples x positions >= 16 x fan-in ...
NOISE_BATCHES = 4  # ... but at most 4 training batches of noise per layer (a cost bound)


# --- the optimizer on one mode --------------------------------------------------------------

def stability_limit(momentum: float, nesterov: bool) -> float:
    """The largest h = lr * lambda at which SGD still contracts a mode of curvature lambda.

    Nesterov (PyTorch's form) on g = lambda p: v' = mu v + g, p' = p - lr (g + mu v'), so
    [p', v'] = M [p, v] with characteristic polynomial z^2 - (1+mu)(1-h) z + mu(1-h). Jury's
    conditions give |z| < 1 iff 0 < h < 2(1+mu)/(1+2mu). Heavy ball: z^2 - (1+mu-h) z + mu,
    stable iff h < 2(1+mu). Plain SGD (mu = 0): h < 2 in both forms.
    """
    if nesterov and momentum > 0:
        return 2 * (1 + momentum) / (1 + 2 * momentum)
    return 2 * (1 + momentum)


def _characteristic(h: np.ndarray, momentum: float, nesterov: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) of the iteration's characteristic polynomial z^2 + b z + c."""
    mu = momentum
    if nesterov and mu > 0:
        return -(1 + mu) * (1 - h), mu * (1 - h)
    return -(1 + mu - h), np.full_like(h, mu)


def contraction(h: np.ndarray, momentum: float, nesterov: bool) -> np.ndarray:
    """Spectral radius per step of the optimizer's iteration on modes with h = lr * lambda."""
    h = np.asarray(h, dtype=np.float64)
    b, c = _characteristic(h, momentum, nesterov)
    root = np.sqrt((b * b - 4 * c).astype(np.complex128))
    return np.maximum(np.abs((-b + root) / 2), np.abs((-b - root) / 2))


def _binned(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) summarizing a long schedule in at most _BINS groups of equal size."""
    if len(factors) <= _BINS:
        return factors, np.ones_like(factors)
    starts = np.linspace(0, len(factors), _BINS, endpoint=False).astype(np.int64)
    counts = np.diff(np.append(starts, len(factors))).astype(np.float64)
    return np.add.reduceat(np.sort(factors), starts) / counts, counts


def _from_rest(h: np.ndarray, momentum: float, nesterov: bool) -> np.ndarray:
    """-ln |p_T| per mode after the steps h[:, t], starting at p = 1 with no velocity.

    The optimizer's own recurrence, in units of u = lr * v: u' = mu u + h p, then
    p' = p - (h p + mu u') (Nesterov) or p' = p - u' (heavy ball). While the velocity builds
    up, over about 1 / (1 - mu) steps, a slow mode relaxes less than the steady rate says.
    """
    p = np.ones(h.shape[0])
    u = np.zeros(h.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(h.shape[1]):
            u = momentum * u + h[:, t] * p
            p = p - (h[:, t] * p + momentum * u) if nesterov else p - u
    return -np.log(np.maximum(np.abs(p), 1e-300))


def _steady(curvatures: np.ndarray, lr_b: float, factors: np.ndarray, momentum: float,
            nesterov: bool) -> np.ndarray:
    """sum_t -ln rho(h_t) per mode: the decay of the mode's envelope."""
    if not len(factors):
        return np.zeros(len(curvatures))
    values, counts = _binned(factors)
    h = lr_b * np.outer(curvatures, values)
    with np.errstate(divide="ignore"):
        per_step = -np.log(np.maximum(contraction(h, momentum, nesterov), 1e-300))
    return (per_step * counts).sum(axis=1)


def relaxations(curvatures: np.ndarray, lr_b: float, factors: np.ndarray, momentum: float,
                nesterov: bool, from_rest: bool = False) -> np.ndarray:
    """n per mode over the steps ``factors`` (lr_B,t = lr_b * factor_t); negative if unstable.

    ``from_rest``: the run's first steps, where momentum starts at zero, are simulated for
    the modes that stay overdamped through them (the slow ones, whose start-up lag matters);
    a mode that oscillates is measured by its envelope throughout, since the phase of an
    oscillation at one step says nothing of how far it has decayed.
    """
    curvatures = np.asarray(curvatures, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    n = _steady(curvatures, lr_b, factors, momentum, nesterov)
    if from_rest and momentum > 0 and len(factors):
        start, rest = factors[:_START_STEPS], factors[_START_STEPS:]
        h = lr_b * np.outer(curvatures, start)
        b, c = _characteristic(h, momentum, nesterov)
        slow = ((b * b - 4 * c >= 0) & (h < 1)).all(axis=1)
        if slow.any():
            n[slow] = (_from_rest(h[slow], momentum, nesterov)
                       + _steady(curvatures[slow], lr_b, rest, momentum, nesterov))
    return n


def effective_relaxations_many(nodes: np.ndarray, weights: np.ndarray, lr_bs: np.ndarray,
                               factors: np.ndarray, momentum: float, nesterov: bool,
                               from_rest: bool = False) -> np.ndarray:
    """n = -ln(R)/2 for each of several B learning rates, R the residual of W's direction:
    sum_j w_j e^{-2 n_j} (one vectorized pass over all of them)."""
    lr_bs = np.atleast_1d(np.asarray(lr_bs, dtype=np.float64))
    if len(factors) == 0:
        return np.zeros(len(lr_bs))
    n = relaxations(np.outer(lr_bs, nodes).ravel(), 1.0, factors, momentum, nesterov,
                    from_rest).reshape(len(lr_bs), len(nodes))
    with np.errstate(over="ignore", divide="ignore"):
        residual = (weights * np.exp(-2 * n)).sum(axis=1)
        out = -0.5 * np.log(residual)
    out[residual <= 0] = n.min(axis=1)[residual <= 0]
    return out


def effective_relaxations(nodes: np.ndarray, weights: np.ndarray, lr_b: float,
                          factors: np.ndarray, momentum: float, nesterov: bool,
                          from_rest: bool = False) -> float:
    """n = -ln(R)/2 for one B learning rate (see ``effective_relaxations_many``)."""
    return float(effective_relaxations_many(nodes, weights, np.array([lr_b]), factors,
                                            momentum, nesterov, from_rest)[0])


# --- measuring a layer ----------------------------------------------------------------------

@dataclass
class LayerCurvature:
    """Curvature of one layer's R: the top eigenvalue and the spectral measure from W."""

    top: float
    nodes: np.ndarray
    weights: np.ndarray

    @property
    def along_w(self) -> float:
        """The Rayleigh quotient <W, H W> / <W, W>."""
        return float(np.sum(self.weights * self.nodes))


def layer_curvature(layer: FeedbackLayer, coefficients: Mapping[str, float], x: Tensor | None,
                    steps: int = LANCZOS_STEPS, seed: int = 0) -> LayerCurvature:
    decay = 2 * coefficients.get("decay", 0.0)
    if not (coefficients.get("sparse") or coefficients.get("null")):
        return LayerCurvature(decay, np.array([decay]), np.array([1.0]))  # H = decay * I
    hvp = regularizer_hvp(layer, coefficients, x)
    W = layer.weight.detach()
    from_w = lanczos(hvp, [W], steps)
    from_random = lanczos(hvp, random_like([W], seed), steps)
    nodes, weights = from_w.ritz()
    top = max(from_w.largest(), from_random.largest())
    if not all(math.isfinite(v) for v in (top, *nodes)):
        raise ArithmeticError("the curvature estimate is not finite")
    return LayerCurvature(top, np.maximum(nodes, 0.0), weights)  # H is positive semi-definite


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
        curvature = float((p * hp).sum())
        if curvature <= 0:
            break  # a direction without curvature: no pull along it
        step = rr / curvature
        d = d + step * p
        r = r - step * hp
        rr, previous = float((r * r).sum()), rr
        p = r + (rr / previous) * p
    return B.detach() + d


def _noise_like(layer: FeedbackLayer, x: Tensor, gen: torch.Generator) -> Tensor:
    """The rule's input noise (variance sigma^2) of x's per-example shape, with enough examples for the noise's
    expectation (examples x output positions >= NOISE_SAMPLES_PER_INPUT x fan-in), but no
    more than NOISE_BATCHES times x's batch: wide layers at few positions (a ResNet-18's last
    stage) keep some sampling noise in their fixed point rather than cost a training epoch."""
    with torch.no_grad():
        positions = layer.apply_kernel(x[:1], layer.weight.detach()).shape
    positions_per_example = max(1, int(np.prod(positions[2:])) if len(positions) > 2 else 1)
    fan_in = layer.weight[0].numel()
    wanted = math.ceil(NOISE_SAMPLES_PER_INPUT * fan_in / positions_per_example)
    count = min(NOISE_BATCHES * x.shape[0], max(x.shape[0], wanted))
    return noise_like((count, *x.shape[1:]), layer.rule.noise, layer.rule.values["sigma"],
                      dtype=x.dtype, device=x.device, generator=gen)


def _regularizer_inputs(model: nn.Module, probe: Tensor, noise_seed: int
                        ) -> dict[str, Tensor | None]:
    """Each feedback layer's regularizer input on the probe batch: the real (padded) layer
    input, or the rule's input noise of its shape. The forward runs in training mode, as in a
    training step, and every buffer it touches (BatchNorm statistics) is restored."""
    layers = feedback_layers(model)
    if not any(layer.rule.rule.needs_layer_input for _, layer in layers):
        return {name: None for name, _ in layers}
    saved = {k: v.clone() for k, v in model.state_dict().items()
             if not any(k.endswith(s) for s in ("weight", "bias", "weight_backward"))}
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            model(probe)
    finally:
        model.load_state_dict(saved, strict=False)
        model.train(was_training)
    gen = torch.Generator(device="cpu").manual_seed(noise_seed)
    inputs: dict[str, Tensor | None] = {}
    for name, layer in layers:
        cache = layer.pop_regularizer_cache()
        x = None if cache is None else cache[0]
        if x is not None and layer.rule.rule.uses_noise:
            x = noise_like(x.shape, layer.rule.noise, layer.rule.values["sigma"],
                           dtype=x.dtype, device=x.device, generator=gen)
        inputs[name] = x
    return inputs


# --- the plan -------------------------------------------------------------------------------

@dataclass
class LayerPlan:
    curvature: float  # top eigenvalue of R's Hessian
    curvature_along_w: float  # <W, H W> / <W, W>
    multiplier: float  # lr_B / lr
    peak_h: float  # the largest lr_B * curvature of the run so far and of the rest
    stability_ratio: float  # peak_h / the stability limit
    relaxations: float  # over the whole run: realized so far + planned for the rest
    verdict: str


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

    def counts(self) -> dict[str, Any]:
        if self.error is not None or not self.layers:
            return {"epoch": self.epoch, "error": self.error, "verdict": "unknown"}
        plans = list(self.layers.values())
        verdicts = [p.verdict for p in plans]
        worst = next((v for v in ("unstable", "under-relaxed") if v in verdicts), "ok")
        return {"epoch": self.epoch, "verdict": worst,
                "relaxations_min": min(p.relaxations for p in plans),
                "stability_ratio_max": max(p.stability_ratio for p in plans),
                "unstable_layers": verdicts.count("unstable"),
                "under_relaxed_layers": verdicts.count("under-relaxed"),
                "layers": len(plans), "auto": self.auto, "target": self.target}

    def summary(self) -> dict[str, Any]:
        """The counts and extremes over the layers, with the one-line advice."""
        return {**self.counts(), "advice": self.advice()}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "limit": self.limit,
                "layers": {name: asdict(p) for name, p in self.layers.items()}}

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
        if s["under_relaxed_layers"]:
            fix = ("more epochs, or a larger alpha" if follows_w else
                   "more epochs (auto already runs each B at up to half its stability "
                   "limit)" if self.auto else
                   "--feedback-lr-multiplier auto, more epochs, or a larger multiplier")
            return (f"B is under-relaxed in {s['under_relaxed_layers']} of {s['layers']} layers "
                    f"(as few as {s['relaxations_min']:.2g} relaxation times; "
                    f">= {UNDER_RELAXED:g} reach the fixed point): use {fix}")
        return None


def verdict(stability_ratio: float, relaxations: float) -> str:
    if not stability_ratio <= 1.0:
        return "unstable"
    return "under-relaxed" if relaxations < UNDER_RELAXED else "ok"


class FeedbackPlanner:
    """Measures each learned B's curvature and sets its learning rate, at the start of a run
    and after every epoch.

    ``groups`` maps a feedback layer's name to the optimizer group of its B (one group each
    under ``auto``, one shared group otherwise); the planner writes ``lr_scale`` there.
    """

    def __init__(self, model: nn.Module, groups: Mapping[str, dict], probe: Tensor, *,
                 lr: float, factors: np.ndarray, momentum: float, multiplier: float | str,
                 target: float, seed: int = 0) -> None:
        self.model, self.groups, self.probe = model, groups, probe[:PROBE_EXAMPLES]
        self.fixed_point_probe = probe
        self.lr, self.factors, self.momentum = lr, factors, momentum
        self.nesterov = momentum > 0
        self.auto = multiplier == "auto"
        self.multiplier = 1.0 if self.auto else float(multiplier)
        self.target, self.seed = target, seed
        self.limit = stability_limit(momentum, self.nesterov)
        self.layers = {name: layer for name, layer in feedback_layers(model)
                       if layer.rule.rule.learns_feedback}
        self.realized = {name: 0.0 for name in self.layers}
        self.peak_h = {name: 0.0 for name in self.layers}
        self._last: dict[str, tuple[LayerCurvature, float]] = {}
        self._planned_at = 0

    def multiplier_of(self, name: str) -> float:
        return float(self.groups[name]["lr_scale"])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to go on planning (tensors and plain values only)."""
        return {"realized": dict(self.realized), "peak_h": dict(self.peak_h),
                "planned_at": self._planned_at,
                "last": {name: {"top": curv.top, "nodes": torch.from_numpy(curv.nodes),
                                "weights": torch.from_numpy(curv.weights),
                                "multiplier": multiplier}
                         for name, (curv, multiplier) in self._last.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.realized = dict(state["realized"])
        self.peak_h = dict(state["peak_h"])
        self._planned_at = int(state["planned_at"])
        self._last = {name: (LayerCurvature(float(v["top"]), v["nodes"].numpy(),
                                            v["weights"].numpy()), float(v["multiplier"]))
                      for name, v in state["last"].items()}

    def plan(self, step: int, epoch: int) -> FeedbackPlan:
        """Re-measure at ``step``: credit the steps since the last plan, choose the learning
        rates for the rest (auto), and predict the relaxation times of the whole run."""
        done = self.factors[self._planned_at:step]
        for name, (curv, multiplier) in self._last.items():
            self.realized[name] += effective_relaxations(
                curv.nodes, curv.weights, self.lr * multiplier, done, self.momentum,
                self.nesterov, from_rest=self._planned_at == 0)
            if len(done):
                self.peak_h[name] = max(self.peak_h[name],
                                        self.lr * multiplier * float(done.max()) * curv.top)
        self._planned_at = step
        plan = FeedbackPlan(limit=self.limit, auto=self.auto,
                            target=self.target if self.auto else None, epoch=epoch,
                            follows_w=any(layer.rule.rule.receives_task_gradient
                                          for layer in self.layers.values()))
        try:
            inputs = _regularizer_inputs(self.model, self.probe, self.seed + epoch)
            measured = {name: layer_curvature(layer, {p: c for p, c in
                                                      layer.rule.coefficients.items() if c},
                                              inputs[name], seed=self.seed + epoch)
                        for name, layer in self.layers.items()}
        except (ArithmeticError, ValueError, RuntimeError) as exc:
            plan.error = f"{type(exc).__name__}: {exc}"
            return plan
        rest = self.factors[step:]
        peak = float(rest.max()) if len(rest) else 0.0
        for name, curv in measured.items():
            if self.auto and not self.layers[name].rule.rule.receives_task_gradient:
                self.groups[name]["lr_scale"] = self._choose(name, curv, rest)
            multiplier = self.multiplier_of(name)
            ahead = effective_relaxations(curv.nodes, curv.weights, self.lr * multiplier, rest,
                                          self.momentum, self.nesterov, from_rest=step == 0)
            total = self.realized[name] + ahead
            peak_h = max(self.peak_h[name], self.lr * multiplier * peak * curv.top)
            ratio = peak_h / self.limit
            plan.layers[name] = LayerPlan(curv.top, curv.along_w, multiplier, peak_h, ratio,
                                          total, verdict(ratio, total))
            self._last[name] = (curv, multiplier)
        return plan

    def fixed_point_angles(self) -> dict[str, float]:
        """Each learned B's angle (degrees) to the fixed point its rule pulls it to.

        A noise rule's fixed point is an expectation over the noise, so it is estimated from
        enough draws that examples x output positions >= 16 x the layer's fan-in. Kolen-
        Pollack's B takes W's updates, so its target is W itself (B - W decays).
        """
        inputs = _regularizer_inputs(self.model, self.fixed_point_probe, self.seed + 7919)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 104729)
        angles = {}
        for name, layer in self.layers.items():
            coefficients = {p: c for p, c in layer.rule.coefficients.items() if c}
            x = inputs[name]
            try:
                if layer.rule.rule.receives_task_gradient:
                    target = layer.weight.detach()
                else:
                    if x is not None and layer.rule.rule.uses_noise:
                        x = _noise_like(layer, x, gen)
                    target = fixed_point(layer, coefficients, x)
                angles[name] = vector_angle(layer.weight_backward, target)
            except (ArithmeticError, ValueError, RuntimeError):
                angles[name] = float("nan")
        return angles

    def _choose(self, name: str, curv: LayerCurvature, rest: np.ndarray) -> float:
        """The smallest multiplier whose relaxations over the rest of the run reach what is
        left of the target (never less than the rest's share of it, so that B keeps tracking
        a moving W), capped at SAFETY of the stability limit."""
        peak = float(rest.max()) if len(rest) else 0.0
        if peak <= 0 or curv.top <= 0:
            return self.multiplier_of(name)
        share = self.target * len(rest) / len(self.factors)
        wanted = max(self.target - self.realized[name], share)
        cap = min(MULTIPLIER_RANGE[1], SAFETY * self.limit / (self.lr * peak * curv.top))

        def first_enough(grid: np.ndarray) -> int | None:
            n = effective_relaxations_many(curv.nodes, curv.weights, self.lr * grid, rest,
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
