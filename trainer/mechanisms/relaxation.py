"""Activation relaxation (Millidge, Tschantz, Seth & Buckley 2020) on an MLP.

The forward pass is the ordinary one. Its output is wrapped (``after_forward``) in an autograd
Function whose backward, given dL/dy from loss.backward(), runs the relaxation and writes
every layer's update:

- the nodes x_l (l = 1..L-1) are the hidden layers' outputs, after the nonlinearity; they
  start from their feedforward values, and the output node x_L is set to dL/dy;
- T top-down sweeps, x_l <- x_l - eta * (x_l - J_{l+1}^T x_{l+1}), each node taking its upper
  node's value from the same sweep (as the reference code), where the backward message
  J_{l+1}^T v = M_{l+1}^T (f'(a_{l+1}) * v) goes through M = W (backward=exact) or B
  (learned, random), with f' dropped when derivatives=off;
- the fixed point is x*_l = dL/dx_l (exact, derivatives on), so that the update
  dW_l = (f'(a_l) * x*_l)^T xbar_{l-1}, with the frozen feedforward input xbar_{l-1}, is
  autograd's gradient (f' is kept here whatever ``derivatives`` says, as in the reference
  code); with eta = 1 one sweep reaches the fixed point exactly;
- backward=learned: B receives W's update (dB = dW^T in the paper's layout; no decay).

The relaxation runs in per-example units: the output node is N * dL/dy for a batch of N rows
(a mean-reduced loss's gradient per example, the reference code's summed loss) and the updates
are divided by N again. The fixed point, and so the update at convergence, is the same; the
transient is not left to depend on the batch size (the feedforward start is per example).

The last sweep's relative change, ||x_T - x_{T-1}|| / ||x_T|| over all hidden nodes, is left in
``model.creditsweep_relaxation_residual`` (a 0-dim tensor), and the training loop records it
in each epoch's record as ``relaxation_residual``: whether T was enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, register_behaviour

# Elementwise nonlinearities whose derivative f'(a) the relaxation reads pointwise.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU,
               nn.Softplus, nn.Identity)
SUPPORTED = ("an MLP: an nn.Sequential of Linear layers with elementwise nonlinearities "
             "(an optional Flatten first, a Linear last); LeNet and the ResNets wait for the "
             "graph version")
RESIDUAL = "creditsweep_relaxation_residual"


@dataclass
class Block:
    """One weight layer and the elementwise nonlinearities after it (none for the output)."""

    linear: nn.Linear
    activations: list[nn.Module]


def chain(model: nn.Module, rule_name: str = "activation_relaxation") -> tuple[list[nn.Module],
                                                                              list[Block]]:
    """The model as (leading Flatten modules, blocks), or a one-line UsageError naming what
    the relaxation supports."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"{rule_name} supports {SUPPORTED}; this model {why}")

    if not isinstance(model, nn.Sequential):
        raise refuse(f"is a {type(model).__name__}, not an nn.Sequential")
    prefix: list[nn.Module] = []
    blocks: list[Block] = []
    for module in model:
        if isinstance(module, nn.Linear):
            blocks.append(Block(module, []))
        elif isinstance(module, nn.Flatten) and not blocks:
            prefix.append(module)
        elif isinstance(module, ELEMENTWISE) and blocks:
            blocks[-1].activations.append(module)
        else:
            raise refuse(f"has a {type(module).__name__}")
    if not blocks:
        raise refuse("has no Linear layer")
    if blocks[-1].activations:
        raise refuse("ends in a nonlinearity, not the Linear producing the outputs")
    return prefix, blocks


def _options(rule: Any) -> tuple[int, float, str, bool]:
    o = rule.options
    return (int(o["inference_steps"]), float(o["inference_lr"]), str(o["backward"]),
            o["derivatives"] == "on")


def relax(inputs: list[Tensor], derivatives: list[Tensor | None], feedback: list[Tensor],
          top: Tensor, steps: int, lr: float, use_derivatives: bool = True
          ) -> tuple[list[Tensor], Tensor]:
    """The relaxed nodes x*_1..x*_L and the last sweep's relative change.

    ``inputs[l]`` is layer l+1's feedforward input (rows: examples), so ``inputs[1:]`` are the
    starting hidden nodes; ``derivatives[l]`` is f'(a) of layer l+1 (None: no nonlinearity);
    ``feedback[l]`` the matrix (out x in, as W) layer l+1's backward message goes through;
    ``top`` the output node. Each of the ``steps`` sweeps updates the nodes top-down."""
    nodes = [x.clone() for x in inputs[1:]] + [top]
    depth = len(feedback)
    change = top.new_zeros(())
    for step in range(steps):
        last = step == steps - 1
        for layer in range(depth - 1, 0, -1):  # node `layer - 1` is layer `layer`'s input
            upper = nodes[layer]
            if use_derivatives and derivatives[layer] is not None:
                upper = upper * derivatives[layer]
            delta = nodes[layer - 1] - upper @ feedback[layer]
            if last:
                change = change + (lr * delta).square().sum()
            nodes[layer - 1] = nodes[layer - 1] - lr * delta
    size = sum(n.square().sum() for n in nodes[:-1]) if depth > 1 else top.new_zeros(())
    residual = (change.sqrt() / size.sqrt()) if depth > 1 else top.new_zeros(())
    return nodes, torch.nan_to_num(residual, nan=0.0)


class _Relaxation(torch.autograd.Function):
    """Identity on the output; its backward runs the relaxation and returns every layer's
    update as the gradient of W, the bias and (learned) B. The output it receives is detached,
    so autograd adds nothing else."""

    @staticmethod
    def forward(ctx: Any, output: Tensor, state: dict, *params: Tensor) -> Tensor:
        ctx.state = state
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        state = ctx.state
        inputs, derivatives = state["inputs"], state["derivatives"]
        rows = grad.shape[0]
        top = grad.reshape(rows, -1) * rows
        nodes, residual = relax(inputs, derivatives, state["feedback"], top, state["steps"],
                                state["lr"], state["use_derivatives"])
        setattr(state["model"], RESIDUAL, residual.detach())
        grads: list[Tensor | None] = []
        for x, fprime, node, slots in zip(inputs, derivatives, nodes, state["slots"]):
            error = node if fprime is None else node * fprime
            grad_w = (error.t() @ x) / rows
            grads.append(grad_w)
            if slots["bias"]:
                grads.append(error.sum(0) / rows)
            if slots["feedback"]:
                grads.append(grad_w)  # dB = dW^T in the paper's layout: B has W's shape here
        return (None, None, *grads)


class Relaxation(Mechanism):
    name = "relaxation"

    def check(self, model: nn.Module, rule: Rule) -> None:
        chain(model, rule.name)

    def init_layer(self, layer: Any) -> None:
        # B learns (from W's update, in the optimizer's feedback group) only for
        # backward=learned; exact ignores it, random keeps its draw.
        layer.weight_backward.requires_grad_(layer.rule.options["backward"] == "learned")

    def feedback_weight(self, layer: Any) -> Tensor:
        if layer.rule.options["backward"] == "exact":
            return layer.weight.detach()
        return layer.weight_backward

    def plan_reason(self, rule: Rule) -> str | None:
        return ("activation relaxation's B is W, a fixed draw or W's updates (dB = dW^T), "
                "with no regularizer for the planner to pace")

    def after_forward(self, model: nn.Module, inputs: tuple, output: Any) -> Any:
        if not (model.training and torch.is_grad_enabled()) or not isinstance(output, Tensor):
            return None
        prefix, blocks = chain(model)
        layers = [block.linear for block in blocks]
        if any(getattr(layer, "exact_backward", False) for layer in layers):
            return None  # trainer.curvature asks for the true gradient
        rule = layers[0].rule
        steps, lr, backward, use_derivatives = _options(rule)
        xs, fprimes = [], []
        with torch.no_grad():
            h = inputs[0]
            for module in prefix:
                h = module(h)
            h = h.reshape(h.shape[0], -1)
            for block in blocks:
                xs.append(h)
                a = _linear(block.linear, h)
                fprime = None
                if block.activations:
                    h, fprime = _derivative(block.activations, a)
                else:
                    h = a
                fprimes.append(fprime)
        slots, params = [], []
        for layer in layers:
            params.append(layer.weight)
            has_bias = layer.bias is not None
            if has_bias:
                params.append(layer.bias)
            learned = backward == "learned" and layer.weight_backward.requires_grad
            if learned:
                params.append(layer.weight_backward)
            slots.append({"bias": has_bias, "feedback": learned})
        feedback = [layer.weight.detach() if backward == "exact"
                    else layer.weight_backward.detach() for layer in layers]
        state = {"model": model, "inputs": xs, "derivatives": fprimes, "feedback": feedback,
                 "steps": steps, "lr": lr, "use_derivatives": use_derivatives, "slots": slots}
        return _Relaxation.apply(output.detach(), state, *params)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return torch.nn.functional.linear(x, layer.weight, layer.bias)


def _derivative(activations: list[nn.Module], a: Tensor) -> tuple[Tensor, Tensor]:
    """f(a) and f'(a) of a chain of elementwise nonlinearities, by autograd on a copy."""
    with torch.enable_grad():
        leaf = a.detach().requires_grad_(True)
        h = leaf.clone()  # an in-place nonlinearity may overwrite it, not the leaf
        for module in activations:
            h = module(h)
        (fprime,) = torch.autograd.grad(h, leaf, torch.ones_like(h))
    return h.detach(), fprime


register_behaviour(Relaxation())
