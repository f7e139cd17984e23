"""Activation relaxation (Millidge, Tschantz, Seth & Buckley 2020) on any model built from
feedback Linear/Conv2d layers and parameter-free or BatchNorm glue: the MLP, LeNet, the CIFAR
and ImageNet ResNets (skip connections as a computation graph).

The forward pass is the ordinary one, with each weight layer linked into the model's capture
(``layer_forward``; the engine is ``trainer.relaxation.graph``). Its output is wrapped
(``after_forward``) in an autograd Function whose backward, given dL/dy from loss.backward(),
runs the relaxation and writes every parameter's update:

- the nodes x_u are the weight layers' distinct inputs (after nonlinearities, pooling,
  BatchNorm, adds); they start from their feedforward values, and the output node is set to
  dL/dy;
- T top-down sweeps, x_u <- x_u - eta * (x_u - sum_k J_ku^T x_k), each node taking the values
  of the nodes above it from the same sweep (as the reference code), where a message goes back
  through each consumer layer's matrix M = W (backward=exact) or B (learned, random; a
  transposed convolution for Conv2d) and through the glue by autograd's vector-Jacobian
  product (BatchNorm in training mode, pooling's routing, the shortcuts' adds), with the
  nonlinearities' f' dropped when derivatives=off;
- the fixed point is x*_u = dL/dx_u (exact, derivatives on), so that the update
  dW_k = g_k^T xbar_k, with g_k the glue's product of the final nodes at layer k's output and
  the frozen feedforward input xbar_k, is autograd's gradient (f' is kept in g_k whatever
  ``derivatives`` says, as in the reference code), and so are the glue's own parameters'
  (BatchNorm's weight and bias, the biases); with eta = 1 one sweep reaches the fixed point
  exactly;
- backward=learned: B receives W's update (dB = dW^T in the paper's layout; no decay).

The relaxation runs in per-example units: the output node is N * dL/dy for a batch of N rows
(a mean-reduced loss's gradient per example, the reference code's summed loss) and the updates
are divided by N again. The fixed point, and so the update at convergence, is the same; the
transient is not left to depend on the batch size (the feedforward start is per example). (The
dynamics are linear in the nodes, so the engine runs them divided by N: start z / N, output
node dL/dy; the same numbers, without the rescaling.)

The last sweep's relative change, ||x_T - x_{T-1}|| / ||x_T|| over all hidden nodes, is left in
``model.creditsweep_relaxation_residual`` (a 0-dim tensor), and the training loop records it
in each epoch's record as ``relaxation_residual`` (the epoch's last step): whether T was
enough.

``chain``, ``Frozen`` and ``Block`` (the sequential walk) are re-exported from
``trainer.relaxation.sequential`` for callers that work block by block.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, register_behaviour, step_field
from trainer.relaxation.graph import Capture, Recorder
from trainer.relaxation.sequential import (ELEMENTWISE, STRUCTURAL, SUPPORTED, Block, Frozen,
                                           chain)

__all__ = ["Block", "ELEMENTWISE", "Frozen", "RESIDUAL", "Relaxation", "STRUCTURAL",
           "SUPPORTED", "chain"]

RESIDUAL = step_field("relaxation_residual", "creditsweep_relaxation_residual")
RECORDER = "creditsweep_relaxation_recorder"  # the model's and each weight layer's Recorder


def _options(rule: Any) -> tuple[int, float, str, bool]:
    o = rule.options
    return (int(o["inference_steps"]), float(o["inference_lr"]), str(o["backward"]),
            o["derivatives"] == "on")


class _Relaxation(torch.autograd.Function):
    """Identity on the output; its backward runs the relaxation and returns every parameter's
    update as its gradient (W, biases, BatchNorm's, learned B). The output it receives is
    detached, so autograd adds nothing else."""

    @staticmethod
    def forward(ctx: Any, output: Tensor, routine: "_Routine", *params: Tensor) -> Tensor:
        ctx.routine = routine
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        routine, ctx.routine = ctx.routine, None
        if routine is None:
            raise RuntimeError("activation relaxation: this forward's graph was used by an "
                               "earlier backward (it is freed there); run the forward again")
        return (None, None, *routine.run(grad))


class _Routine:
    """One training step's relaxation: the capture, the graph's output, the rule's options
    and which parameters the wrapper hands the updates to."""

    def __init__(self, model: nn.Module, capture: Capture, output: Tensor,
                 params: list[Tensor], feedback_of: dict[int, int], options: tuple,
                 start_scale: Callable[[int], float]) -> None:
        self.model, self.capture, self.output = model, capture, output
        self.params, self.feedback_of = params, feedback_of  # B's position -> its W's
        self.steps, self.lr, _, self.derivatives = options
        self.start_scale = start_scale  # of the batch's rows

    def run(self, grad: Tensor) -> list[Tensor | None]:
        trained = [i for i in range(len(self.params)) if i not in self.feedback_of]
        updates, residual = self.capture.relax(
            self.output, grad, [self.params[i] for i in trained], steps=self.steps,
            lr=self.lr, start_scale=self.start_scale(grad.shape[0]),
            derivatives=self.derivatives)
        setattr(self.model, RESIDUAL, residual.detach())
        grads: list[Tensor | None] = [None] * len(self.params)
        for i, update in zip(trained, updates):
            grads[i] = update
        for b, w in self.feedback_of.items():  # dB = dW^T in the paper's layout
            grads[b] = grads[w]
        return grads


class Relaxation(Mechanism):
    name = "relaxation"

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules()):
            raise UsageError(f"{rule.name} relaxes the inputs of a model's Linear/Conv2d "
                             f"layers; this {type(model).__name__} has none")

    def init_layer(self, layer: Any) -> None:
        # B learns (from W's update, in the optimizer's feedback group) only for
        # backward=learned; exact ignores it, random keeps its draw.
        layer.weight_backward.requires_grad_(layer.rule.options["backward"] == "learned")

    def link(self, model: nn.Module) -> None:
        """One Recorder shared by the model and its weight layers, opened by a pre-hook at
        each forward (so a forward that failed half-way leaves nothing behind)."""
        recorder = Recorder()
        setattr(model, RECORDER, recorder)
        for module in model.modules():
            if hasattr(module, "weight_backward"):
                setattr(module, RECORDER, recorder)
        handle = getattr(model, "_creditsweep_capture_hook", None)
        if handle is not None:
            handle.remove()
        model._creditsweep_capture_hook = model.register_forward_pre_hook(  # type: ignore
            self.before_forward)

    def before_forward(self, model: nn.Module, inputs: tuple) -> None:
        recorder = getattr(model, RECORDER)
        if model.training and torch.is_grad_enabled():
            recorder.open()
        else:
            recorder.close()

    def layer_forward(self, layer: Any, x: Tensor, forward: Callable[[Tensor], Tensor]
                      ) -> Tensor:
        """In a training forward: the layer linked into the model's capture; otherwise the
        layer's own op (evaluation, no grad, a call outside the model's forward)."""
        recorder = getattr(layer, RECORDER, None)
        capture = None if recorder is None else recorder.capture
        if capture is None or not (layer.training and torch.is_grad_enabled()):
            return forward(x)
        return capture.link(layer, layer.padded_input(x), self.feedback_weight(layer).detach())

    def feedback_weight(self, layer: Any) -> Tensor:
        if layer.rule.options["backward"] == "exact":
            return layer.weight.detach()
        return layer.weight_backward

    def start_scale(self, rows: int) -> float:
        """The nodes' start as a multiple of their feedforward values, for a batch of
        ``rows``: the feedforward values in per-example units (module docstring); a
        mechanism relaxing errors from zero returns 0."""
        return 1.0 / rows

    def plan_reason(self, rule: Rule) -> str | None:
        return ("activation relaxation's B is W, a fixed draw or W's updates (dB = dW^T), "
                "with no regularizer for the planner to pace")

    def after_forward(self, model: nn.Module, inputs: tuple, output: Any) -> Any:
        capture = getattr(model, RECORDER).close()
        if capture is None or not capture.layers:
            return None  # evaluation, no grad, or trainer.curvature's exact backward
        if not isinstance(output, Tensor):
            rule = capture.layers[0].rule.name
            raise UsageError(f"{rule} relaxes to the dL/dy of a model's one output tensor; "
                             f"this {type(model).__name__} returned a {type(output).__name__}")
        if output.grad_fn is None:
            return None
        options = _options(capture.layers[0].rule)
        feedback = {id(layer.weight_backward): layer for _, layer in _weight_layers(model)}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in feedback]
        position = {id(p): i for i, p in enumerate(params)}
        feedback_of = {}
        for layer in capture.layers:
            B = layer.weight_backward
            if options[2] == "learned" and B.requires_grad and id(layer.weight) in position:
                feedback_of[len(params)] = position[id(layer.weight)]
                params.append(B)
        routine = _Routine(model, capture, output, params, feedback_of, options,
                           self.start_scale)
        return _Relaxation.apply(output.detach(), routine, *params)


def _weight_layers(model: nn.Module) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "weight_backward")]


register_behaviour(Relaxation())
