"""Dynamic inversion (Podlaski & Machens 2020) on an MLP: each layer's error is carried down by
a feedback loop that inverts the layer's forward weights, instead of by W^T.

For a layer with forward weights W (d_out x d_in) and feedback B (d_in x d_out, the paper's
layout; the layer stores its transpose, in W's shape, as ``weight_backward``), the loop is

    r_up' = -alpha r_up + W r - delta_up        (the upper units, leak alpha)
    r'    = -r + B r_up                          (the lower units)

driven by the upper layer's error delta_up from r = r_up = 0. Its steady state is
r* = B (W B - alpha I)^-1 delta_up: W's pseudo-inverse applied to delta_up when B = -W^T and
alpha = 0, a Tikhonov-regularised one for alpha > 0. The lower layer's error is
delta = f'(a) * r*, and so on down the MLP, one layer at a time (the reference code's
sequential DI): the output error delta_L = dL/dlogits, and every W's update is
delta_l^T x_{l-1}, with the feedforward input x_{l-1} (for a mean-reduced loss, already divided
by the batch size: the loop is linear in delta and starts at 0, so its scale is delta's).

- ``solver=dynamic``: ``inference_steps`` Euler steps, the upper units first and the lower ones
  from the updated upper units (the reference code's order); the batch runs as one matrix
  system. ``dt`` is the largest step a layer may take, not the step: as W grows under training
  a loop that is stable in continuous time can be too stiff for Euler steps of a fixed size
  (the reference code's fixed dt=0.5 then blows up), which would end a trial for a numerical
  reason rather than the rule's. So before each training forward every layer takes the step in
  (0, dt] at which its Euler map contracts fastest (the smallest spectral radius, from the
  closed form below): ``dt`` itself while that is the fastest, smaller for a stiff loop. The
  smallest step any layer took is left in ``model.creditsweep_inversion_dt`` for the epoch
  record (``inversion_dt``); the residual then says whether T steps of it were enough. ``solver=steady``: the steady state by least squares (the
  paper's non-dynamic inversion, NDI), on the smaller of the two square systems.
- The loop must be stable: every eigenvalue of [[-I, B], [W, -alpha I]] with a negative real
  part. W moves under training and B does not, so before each training forward every layer's
  loop is checked; an unstable one gets B descended on the smoothed spectral abscissa (SSA,
  Vanbiervliet et al. 2009, as the reference code), or with ``stabilize=off`` (or when the
  descent does not get there) the trial ends as diverged with the reason; so does a stable
  loop for which no step in (0, dt] contracts (only when its slowest mode is all but
  undamped). B is not otherwise learned: it is in no optimizer group.
- The last Euler step's relative change of r, over all layers, is left in
  ``model.creditsweep_relaxation_residual`` for the epoch record (0 for the steady solver).

Only MLPs are inverted, as in the paper: a convolution's inversion or a residual block's is not
defined here, so LeNet and the ResNets are refused in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, ModelUpdate, register_behaviour, step_field
from trainer.mechanisms.relaxation import ELEMENTWISE, RESIDUAL, Frozen

RULE_NAME = "dynamic_inversion"
SUPPORTED = ("MLPs, as in the paper: an nn.Sequential of Linear layers, each followed by "
             "elementwise nonlinearities (a leading Flatten allowed), a Linear last")
# SSA descent on B (the reference code's SSA_opt): stop once the loop's spectral abscissa is
# below -MARGIN, with the gradient taken at SHIFT above the abscissa (the smoothed abscissa of
# some epsilon; at the abscissa itself the Lyapunov equations are singular).
SSA_MARGIN = 0.01
SSA_SHIFT = 0.1
SSA_LR = 0.5
SSA_MAX_STEPS = 200
SSA_MIN_LR = 1e-4
# The Euler step search: a geometric grid over [dt * STEP_FLOOR, dt], then a linear one between
# the best coarse step's neighbours. One evaluation is a few vector operations over the
# eigenvalues mu, so the grids cost nothing next to the eigendecomposition.
STEP_FLOOR = 1e-4
STEP_COARSE = 65
STEP_FINE = 33
# The model attribute holding the smallest Euler step any layer took in the last training
# forward (a 0-dim tensor); the training loop records it as the epoch's ``inversion_dt``.
STEP = step_field("inversion_dt", "creditsweep_inversion_dt")


@dataclass(frozen=True)
class Settings:
    steps: int
    dt: float
    alpha: float
    solver: str
    backward: str
    stabilize: bool

    @classmethod
    def of(cls, rule: Any) -> "Settings":
        o = rule.options
        return cls(int(o["inference_steps"]), float(o["dt"]), float(o["alpha"]),
                   str(o["solver"]), str(o["backward"]), o["stabilize"] == "ssa")


def mlp_blocks(model: nn.Module, rule_name: str = RULE_NAME
               ) -> tuple[list[nn.Module], list[tuple[nn.Linear, list[nn.Module]]]]:
    """The MLP as (leading Flatten modules, [(Linear, the nonlinearities after it)]), or a
    one-line UsageError saying what dynamic inversion supports."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"{rule_name} supports {SUPPORTED}; this model {why}")

    if not isinstance(model, nn.Sequential):
        raise refuse(f"is a {type(model).__name__}, not an nn.Sequential")
    prefix: list[nn.Module] = []
    blocks: list[tuple[nn.Linear, list[nn.Module]]] = []
    for module in model:
        if isinstance(module, nn.Linear):
            blocks.append((module, []))
        elif isinstance(module, nn.Flatten) and not blocks:
            prefix.append(module)
        elif isinstance(module, ELEMENTWISE) and blocks:
            blocks[-1][1].append(module)
        elif isinstance(module, nn.Conv2d):
            raise refuse("has a Conv2d (the paper inverts fully connected layers; a "
                         "convolution's inversion is not written)")
        else:
            raise refuse(f"has a {type(module).__name__}")
    if not blocks:
        raise refuse("has no Linear layer")
    if blocks[-1][1]:
        raise refuse("does not end in the Linear producing the outputs")
    return prefix, blocks


# --- the loop of one layer, in the paper's layout: W is d_out x d_in, B is d_in x d_out -------

def joint_matrix(W: Tensor, B: Tensor, alpha: float) -> Tensor:
    """[[-I, B], [W, -alpha I]]: the loop's dynamics on (r, r_up)."""
    d_out, d_in = W.shape
    top = torch.cat([-torch.eye(d_in, dtype=W.dtype, device=W.device), B], 1)
    bottom = torch.cat([W, -alpha * torch.eye(d_out, dtype=W.dtype, device=W.device)], 1)
    return torch.cat([top, bottom], 0)


@dataclass(frozen=True)
class LoopSpectrum:
    """The eigenvalues mu of the smaller of WB and BW, from which the loop's continuous and
    Euler spectra follow in closed form.

    An eigenvalue lam of the joint matrix with eigenvector (x, y) has x = B y / (lam + 1) and
    W B y = (lam + 1)(lam + alpha) y: each mu gives the two roots of
    lam^2 + (1 + alpha) lam + alpha - mu = 0; the others are -1 (x in W's null space, when
    d_in > d_out) or -alpha (y in B's, when d_out > d_in). The Euler map (upper units first)
    likewise has, per mu, the roots of (z - 1 + dt alpha)(z - 1 + dt) = dt^2 mu z, and
    1 - dt or 1 - dt alpha for the others."""

    mu: Tensor
    d_in: int
    d_out: int

    @classmethod
    def of(cls, W: Tensor, B: Tensor) -> "LoopSpectrum":
        W, B = W.double(), B.double()
        d_out, d_in = W.shape
        small = W @ B if d_out <= d_in else B @ W
        return cls(torch.linalg.eigvals(small), d_in, d_out)

    def abscissa(self, alpha: float) -> float:
        """The largest real part of the joint matrix's eigenvalues: < 0 is a stable loop."""
        root = torch.sqrt((1 - alpha) ** 2 + 4 * self.mu)  # principal: Re >= 0, the larger
        largest = float(((-(1 + alpha) + root) / 2).real.max())
        return max([largest, *self._others(-1.0, -alpha)])

    def euler_radius(self, alpha: float, dt: float) -> float:
        """The spectral radius of one Euler step: < 1 is a simulation that converges."""
        return float(self.euler_radii(alpha, torch.tensor([dt], dtype=torch.float64))[0])

    def euler_radii(self, alpha: float, dts: Tensor) -> Tensor:
        """The Euler map's spectral radius at each step in ``dts`` (one vector operation)."""
        dt = dts.double()[:, None]
        b = 2 - dt * alpha - dt + dt * dt * self.mu[None, :]
        c = (1 - dt * alpha) * (1 - dt)
        root = torch.sqrt(b * b - 4 * c)
        radii = torch.maximum((b + root).abs(), (b - root).abs()).amax(1) / 2
        for other in self._others((1 - dts.double()).abs(), (1 - dts.double() * alpha).abs()):
            radii = torch.maximum(radii, other)
        return radii

    def fastest_step(self, alpha: float, dt_max: float) -> tuple[float, float]:
        """The Euler step in (0, ``dt_max``] whose map has the smallest spectral radius, and
        that radius: after T steps the error left is about radius^T, so for a fixed T this is
        the step that settles furthest. Small steps all contract slowly (radius -> 1 as
        dt -> 0) and too large ones not at all, so the search is a geometric grid, refined
        between the best point's neighbours; ties go to the larger step."""
        coarse = dt_max * torch.logspace(math.log10(STEP_FLOOR), 0, STEP_COARSE,
                                         dtype=torch.float64)
        best = _last_argmin(self.euler_radii(alpha, coarse))
        low, high = coarse[max(best - 1, 0)], coarse[min(best + 1, STEP_COARSE - 1)]
        steps = torch.cat([coarse[best:best + 1], torch.linspace(low, high, STEP_FINE,
                                                                dtype=torch.float64)])
        radii = self.euler_radii(alpha, steps)
        chosen = _last_argmin(radii)
        return float(steps[chosen]), float(radii[chosen])

    def _others(self, lower: Any, upper: Any) -> list[Any]:
        return ([lower] if self.d_in > self.d_out else []) + (
            [upper] if self.d_out > self.d_in else [])


def _last_argmin(values: Tensor) -> int:
    """The index of the smallest value, the last one among equals."""
    return int(values.numel() - 1 - torch.argmin(values.flip(0)))


def spectral_abscissa(W: Tensor, B: Tensor, alpha: float) -> float:
    """The largest real part of [[-I, B], [W, -alpha I]]'s eigenvalues."""
    return LoopSpectrum.of(W, B).abscissa(alpha)


def surely_stable(W: Tensor, B: Tensor, alpha: float) -> bool:
    """A cheap sufficient test: the joint matrix's symmetric part is negative definite, i.e.
    ||B + W^T||_2^2 < 4 alpha (its Schur complement), which holds for B = -W^T and alpha > 0
    and while B stays near -W^T."""
    if alpha <= 0:
        return False
    gap = float(torch.linalg.matrix_norm((B + W.t()).double(), ord=2))
    return gap * gap < 4 * alpha


def ssa_gradient(M: Tensor, shift: float) -> Tensor:
    """The gradient of the smoothed spectral abscissa with respect to M, at s = the abscissa +
    ``shift``: QP / tr(QP), where P and Q solve the Lyapunov equations
    (M - sI) P + P (M - sI)^T = I and (M - sI)^T Q + Q (M - sI) = I (Vanbiervliet et al.
    2009). Solved in M's eigenbasis, M = V diag(lam) V^-1: with A = M - sI,
    P = V [(V^-1 V^-T) / (lam_i + lam_j - 2s)] V^T and Q = V^-T [(V^T V) / (...)] V^-1."""
    lam, V = torch.linalg.eig(M.double())
    s = float(lam.real.max()) + shift
    shifted = lam - s
    pair = shifted[:, None] + shifted[None, :]
    V_inv = torch.linalg.inv(V)
    Y = (V_inv @ V_inv.t()) / pair
    Z = (V.t() @ V) / pair
    QP = (V_inv.t() @ Z @ Y @ V.t()).real
    return QP / torch.trace(QP)


def stabilize(W: Tensor, B: Tensor, alpha: float, lr: float = SSA_LR,
              max_steps: int = SSA_MAX_STEPS) -> tuple[Tensor, float, int]:
    """B descended on the smoothed spectral abscissa of the joint matrix until the abscissa
    is below -SSA_MARGIN; returns (B, the abscissa, the gradients taken). Only B moves, as in
    the reference code. Its fixed rate is replaced by a step that doubles after a step that
    lowered the abscissa and halves until one does: each gradient costs an eigendecomposition
    of the whole (d_in + d_out)-square matrix, each trial step only the small one."""
    d_in = W.shape[1]
    W64, B64 = W.double(), B.double().clone()
    abscissa = spectral_abscissa(W64, B64, alpha)
    steps = 0
    while abscissa >= -SSA_MARGIN and steps < max_steps:
        direction = ssa_gradient(joint_matrix(W64, B64, alpha), SSA_SHIFT)[:d_in, d_in:]
        steps += 1
        while lr >= SSA_MIN_LR:
            trial = B64 - lr * direction
            lowered = spectral_abscissa(W64, trial, alpha)
            if lowered < abscissa:
                B64, abscissa, lr = trial, lowered, 2 * lr
                break
            lr /= 2
        else:
            break  # no step along the gradient lowers the abscissa
    return B64.to(B.dtype), abscissa, steps


def simulate(W: Tensor, B: Tensor, alpha: float, delta: Tensor, dt: float, steps: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """The loop by Euler from r = r_up = 0, a row per example (delta is N x d_out); returns
    (r after ``steps`` steps (N x d_in), the squared norm of the last step's change of r, the
    squared norm of r)."""
    r = delta.new_zeros(delta.shape[0], W.shape[1])
    r_up = torch.zeros_like(delta)
    W_t, B_t = W.t(), B.t()
    change = delta.new_zeros(())
    for step in range(steps):
        r_up = r_up + dt * (-alpha * r_up + r @ W_t - delta)
        move = dt * (r_up @ B_t - r)
        r = r + move
        if step == steps - 1:
            change = move.square().sum()
    return r, change, r.square().sum()


def steady_state(W: Tensor, B: Tensor, alpha: float, delta: Tensor) -> Tensor:
    """The loop's steady state r* = B (W B - alpha I)^-1 delta by least squares, on the
    smaller system as the reference code: (W B - alpha I) z = delta, r = B z when d_out <= d_in,
    else (B W - alpha I) r = B delta (the same r where either is solvable)."""
    d_out, d_in = W.shape
    if d_out <= d_in:
        system = W @ B - alpha * torch.eye(d_out, dtype=W.dtype, device=W.device)
        z = torch.linalg.lstsq(system, delta.t()).solution
        return (B @ z).t()
    system = B @ W - alpha * torch.eye(d_in, dtype=W.dtype, device=W.device)
    return torch.linalg.lstsq(system, (delta @ B.t()).t()).solution.t()


def _diverged(message: str) -> Exception:
    """The training loop's divergence error: the trial is recorded as diverged, with this
    reason (imported here, as the loop imports the mechanisms)."""
    from trainer.loop import Diverged
    return Diverged(message)


class _Inversion(ModelUpdate):
    """Identity on the output; its backward runs the inversions top-down and returns every
    layer's update as the gradient of W and the bias. The output it receives is detached, so
    autograd adds nothing else."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        state = ctx.state
        blocks: list[Frozen] = state["blocks"]
        settings: Settings = state["settings"]
        delta = grad  # dL/dlogits: the output Linear has nothing after it
        deltas = [delta]
        change = size = grad.new_zeros(())
        for upper in range(len(blocks) - 1, 0, -1):
            W = blocks[upper].layer.weight.detach()
            B = state["feedback"][upper]
            dt = state["steps"][upper]
            if dt is None:  # solver=steady
                r = steady_state(W, B, settings.alpha, delta)
            else:
                r, last, norm = simulate(W, B, settings.alpha, delta, dt, settings.steps)
                change, size = change + last, size + norm
            if not torch.isfinite(r).all():
                how = "its least-squares solve" if dt is None else f"Euler steps of {dt:.3g}"
                raise _diverged(f"dynamic inversion: the loop of layer {upper + 1} gave a "
                                f"non-finite error ({how})")
            delta = blocks[upper - 1].to_weight_output(r)  # f'(a) * r*
            deltas.append(delta)
        residual = torch.nan_to_num(change.sqrt() / size.sqrt(), nan=0.0)
        setattr(state["model"], RESIDUAL, residual.detach())
        grads: list[Tensor] = []
        for block, delta, has_bias in zip(blocks, reversed(deltas), state["biases"]):
            grad_w, grad_bias = block.weight_grad(delta)
            grads.append(grad_w)
            if has_bias:
                grads.append(grad_bias)
        return (None, None, *grads)


class DynamicInversion(Mechanism):
    name = RULE_NAME

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        mlp_blocks(model, rule.name)

    def link(self, model: nn.Module) -> None:
        """B = -W^T (stored in W's shape: -W) for backward=transpose; random keeps convert's
        draw at W's scale."""
        for layer, _ in mlp_blocks(model)[1]:
            if Settings.of(layer.rule).backward == "transpose":
                with torch.no_grad():
                    layer.weight_backward.copy_(-layer.weight)

    def feedback_weight(self, layer: Any) -> Tensor:
        """-B^T in W's shape: a layer's own backward (evaluation, diagnostics) then sends
        grad_out @ -B^T = (-B delta)^T, the inversion's first-order direction, which is W's
        backprop message when B = -W^T; and the diagnostics' weight angle is that of B
        against -W^T."""
        return -layer.weight_backward

    def plan_reason(self, rule: Rule) -> str | None:
        return ("dynamic inversion's B is fixed (the dynamics invert W, no second learning "
                "problem), only moved to keep each loop stable: nothing for the planner to pace")

    def after_forward(self, model: nn.Module, inputs: tuple, output: Any) -> Any:
        if not (model.training and torch.is_grad_enabled()) or not isinstance(output, Tensor):
            return None
        prefix, chained = mlp_blocks(model)
        layers = [layer for layer, _ in chained]
        if any(getattr(layer, "exact_backward", False) for layer in layers):
            return None  # trainer.curvature asks for the true gradient
        settings = Settings.of(layers[0].rule)
        # the first layer's loop is never run: nothing below it takes an error
        steps = [None, *(self._keep_stable(layer, index, settings)
                         for index, layer in enumerate(layers[1:], start=2))]
        if settings.solver == "dynamic" and len(layers) > 1:
            setattr(model, STEP, torch.tensor(min(steps[1:])))
        blocks = []
        with torch.no_grad():
            h = inputs[0]
            for module in prefix:
                h = module(h)
            for layer, post in chained:
                blocks.append(Frozen(layer, post, h))
                h = blocks[-1].out
        params, biases = [], []
        for layer in layers:
            params.append(layer.weight)
            if layer.bias is not None:
                params.append(layer.bias)
            biases.append(layer.bias is not None)
        state = {"model": model, "blocks": blocks, "settings": settings, "biases": biases,
                 "steps": steps, "feedback": [layer.weight_backward.detach().t() for layer in layers]}
        return _Inversion.apply(output.detach(), state, *params)

    @staticmethod
    def _keep_stable(layer: Any, index: int, settings: Settings) -> float | None:
        """Descend B on the smoothed spectral abscissa when the layer's loop is unstable, or
        end the trial with the reason; for the dynamic solver, return the Euler step the
        layer takes (``fastest_step`` in (0, dt]), or end the trial when none converges."""
        W, B = layer.weight.detach(), layer.weight_backward.detach().t()
        alpha = settings.alpha
        if settings.solver == "steady" and surely_stable(W, B, alpha):
            return None  # the cheap test spares the steady solver the spectrum
        spectrum = LoopSpectrum.of(W, B)
        abscissa = spectrum.abscissa(alpha)
        if abscissa >= 0:
            B = _stabilized(W, B, index, abscissa, settings)
            with torch.no_grad():
                layer.weight_backward.copy_(B.t())
            spectrum = LoopSpectrum.of(W, B)
            abscissa = spectrum.abscissa(alpha)
        if settings.solver == "steady":
            return None
        dt, radius = spectrum.fastest_step(alpha, settings.dt)
        if not radius < 1:
            raise _diverged(f"dynamic inversion: layer {index}'s loop is stable (largest real "
                            f"eigenvalue {abscissa:.3g}) but no Euler step up to "
                            f"dt={settings.dt:g} converges (spectral radius {radius:.6g} at "
                            f"best, at dt={dt:.3g})")
        return dt


def _stabilized(W: Tensor, B: Tensor, index: int, abscissa: float, settings: Settings
                ) -> Tensor:
    """A stable B for an unstable loop, or the divergence error saying why there is none."""
    # W's size in the reason: a loop turns unstable because W has moved away from the fixed
    # B, and a W that has grown by orders of magnitude says the training itself is diverging
    norm = float(torch.linalg.matrix_norm(W.double(), ord=2))
    where = (f"dynamic inversion: layer {index}'s loop is unstable (largest real "
             f"eigenvalue {abscissa:.3g} >= 0, alpha={settings.alpha:g}, W's largest "
             f"singular value {norm:.3g})")
    d_out, d_in = W.shape
    if settings.alpha <= 0 and d_out > d_in:
        raise _diverged(f"{where}: with no leak an expanding layer ({d_in} -> {d_out}) has a "
                      "zero eigenvalue whatever B is; set alpha > 0")
    if not settings.stabilize:
        raise _diverged(f"{where} and stabilize=off")
    stable, abscissa, steps = stabilize(W, B, settings.alpha)
    if not math.isfinite(abscissa) or abscissa >= 0:
        raise _diverged(f"{where}; {steps} smoothed-spectral-abscissa steps on B left it at "
                      f"{abscissa:.3g}")
    return stable


register_behaviour(DynamicInversion())
