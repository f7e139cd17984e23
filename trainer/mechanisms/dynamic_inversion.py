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
from trainer.relaxation.inversion import (LoopSpectrum, joint_matrix, simulate, stabilize,
                                          steady_state, surely_stable)

__all__ = ["DynamicInversion", "LoopSpectrum", "STEP", "joint_matrix", "simulate", "stabilize",
           "steady_state"]

RULE_NAME = "dynamic_inversion"
SUPPORTED = ("MLPs, as in the paper: an nn.Sequential of Linear layers, each followed by "
             "elementwise nonlinearities (a leading Flatten allowed), a Linear last")
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
