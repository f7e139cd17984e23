"""Activation relaxation (Millidge, Tschantz, Seth & Buckley 2020) on a sequential model (the
MLP, LeNet): blocks of one weight layer (Linear, Conv2d) and the parameter-free modules after
it (elementwise nonlinearities, pooling, Flatten).

The forward pass is the ordinary one. Its output is wrapped (``after_forward``) in an autograd
Function whose backward, given dL/dy from loss.backward(), runs the relaxation and writes
every layer's update:

- the nodes x_l (l = 1..L-1) are the blocks' outputs (after the nonlinearity and pooling); they
  start from their feedforward values, and the output node x_L is set to dL/dy;
- T top-down sweeps, x_l <- x_l - eta * (x_l - J_{l+1}^T x_{l+1}), each node taking its upper
  node's value from the same sweep (as the reference code), where the backward message
  J_{l+1}^T v = M_{l+1}^T (f'(a_{l+1}) * P^T v), the block's vector-Jacobian product (P^T:
  pooling's routing and Flatten, by autograd at the feedforward point), goes through
  M = W (backward=exact) or B (learned, random; a transposed convolution for Conv2d), with
  f' dropped when derivatives=off (pooling's routing stays);
- the fixed point is x*_l = dL/dx_l (exact, derivatives on), so that the update
  dW_l = (f'(a_l) * P_l^T x*_l)^T xbar_{l-1}, with the frozen feedforward input xbar_{l-1}, is
  autograd's gradient (f' is kept here whatever ``derivatives`` says, as in the reference
  code); with eta = 1 one sweep reaches the fixed point exactly;
- backward=learned: B receives W's update (dB = dW^T in the paper's layout; no decay).

The relaxation runs in per-example units: the output node is N * dL/dy for a batch of N rows
(a mean-reduced loss's gradient per example, the reference code's summed loss) and the updates
are divided by N again. The fixed point, and so the update at convergence, is the same; the
transient is not left to depend on the batch size (the feedforward start is per example).

The last sweep's relative change, ||x_T - x_{T-1}|| / ||x_T|| over all hidden nodes, is left in
``model.creditsweep_relaxation_residual`` (a 0-dim tensor), and the training loop records it
in each epoch's record as ``relaxation_residual`` (the epoch's last step): whether T was
enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, register_behaviour

# Elementwise nonlinearities whose derivative f'(a) the relaxation reads pointwise, and the
# parameter-free maps it pulls a message back through by their own vector-Jacobian product.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU,
               nn.Softplus, nn.Identity)
STRUCTURAL = (nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)
SUPPORTED = ("an nn.Sequential of Linear/Conv2d layers, each followed by elementwise "
             "nonlinearities, pooling or Flatten, a Linear last (the MLP and LeNet); the "
             "ResNets wait for the graph version")
RESIDUAL = "creditsweep_relaxation_residual"


@dataclass
class Block:
    """One weight layer and the parameter-free modules after it (none for the output)."""

    layer: nn.Module
    post: list[nn.Module]


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
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise refuse("has a Conv2d with padding other than zeros by number")
            blocks.append(Block(module, []))
        elif isinstance(module, nn.Linear):
            blocks.append(Block(module, []))
        elif isinstance(module, nn.Flatten) and not blocks:
            prefix.append(module)
        elif isinstance(module, ELEMENTWISE + STRUCTURAL) and blocks:
            blocks[-1].post.append(module)
        else:
            raise refuse(f"has a {type(module).__name__}")
    if not blocks:
        raise refuse("has no Linear layer")
    if blocks[-1].post or not isinstance(blocks[-1].layer, nn.Linear):
        raise refuse("does not end in the Linear producing the outputs")
    return prefix, blocks


def _options(rule: Any) -> tuple[int, float, str, bool]:
    o = rule.options
    return (int(o["inference_steps"]), float(o["inference_lr"]), str(o["backward"]),
            o["derivatives"] == "on")


class Frozen:
    """One block at the feedforward point: its weight layer's input, and how a message at
    its output is pulled back to the weight layer's output (f' of each nonlinearity, the
    vector-Jacobian product of each pooling or Flatten)."""

    def __init__(self, layer: nn.Module, post: list[nn.Module], x: Tensor) -> None:
        self.layer, self.x = layer, x
        self.steps: list[tuple[str, Any]] = []
        h = self.forward_weight(x)
        for module in post:
            if isinstance(module, nn.Flatten):  # its VJP is a reshape back
                self.steps.append(("reshape", h.shape))
                h = module(h)
                continue
            with torch.enable_grad():
                leaf = h.detach().requires_grad_(True)
                out = module(leaf.clone())  # an in-place module overwrites the copy only
                if isinstance(module, ELEMENTWISE):
                    (fprime,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
                    self.steps.append(("f'", fprime))
                else:
                    self.steps.append(("vjp", (leaf, out)))
            h = out.detach()
        self.out = h

    def forward_weight(self, x: Tensor) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            return torch.nn.functional.conv2d(x, layer.weight, layer.bias, layer.stride,
                                              layer.padding, layer.dilation, layer.groups)
        return torch.nn.functional.linear(x, layer.weight, layer.bias)

    def to_weight_output(self, v: Tensor, derivatives: bool = True) -> Tensor:
        """A message at the block's output, pulled back to the weight layer's output."""
        for kind, step in reversed(self.steps):
            if kind == "f'":
                if derivatives:
                    v = v * step
            elif kind == "reshape":
                v = v.reshape(step)
            else:
                leaf, out = step
                (v,) = torch.autograd.grad(out, leaf, v, retain_graph=True)
        return v

    def transpose(self, g: Tensor, matrix: Tensor) -> Tensor:
        """g at the weight layer's output, through ``matrix`` (W or B) to its input."""
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            return torch.nn.grad.conv2d_input(self.x.shape, matrix, g, layer.stride,
                                              layer.padding, layer.dilation, layer.groups)
        return g @ matrix

    def weight_grad(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """The weight layer's weight and bias gradients for g at its output."""
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            grad_w = torch.ops.aten.convolution_backward(
                g, self.x, layer.weight.detach(), None, list(layer.stride),
                list(layer.padding), list(layer.dilation), False, [0, 0], layer.groups,
                [False, True, False])[1]
            return grad_w, g.sum((0, 2, 3))
        return g.t() @ self.x, g.sum(0)


def relax(blocks: list[Frozen], feedback: list[Tensor], top: Tensor, steps: int, lr: float,
          use_derivatives: bool = True) -> tuple[list[Tensor], Tensor]:
    """The relaxed nodes x*_1..x*_L and the last sweep's relative change.

    Node l is block l's output (its feedforward value ``blocks[l].x`` is block l+1's input),
    node L the output node ``top``; ``feedback[l]`` is the matrix (W's shape) block l+1's
    message goes through. Each of the ``steps`` sweeps updates the nodes top-down."""
    nodes = [b.x.clone() for b in blocks[1:]] + [top]
    depth = len(blocks)
    change = top.new_zeros(())
    for step in range(steps):
        last = step == steps - 1
        for layer in range(depth - 1, 0, -1):  # node `layer - 1` is block `layer`'s input
            block = blocks[layer]
            message = block.transpose(block.to_weight_output(nodes[layer], use_derivatives),
                                      feedback[layer])
            delta = nodes[layer - 1] - message
            if last:
                change = change + (lr * delta).square().sum()
            nodes[layer - 1] = nodes[layer - 1] - lr * delta
    if depth == 1:
        return nodes, top.new_zeros(())
    size = sum(n.square().sum() for n in nodes[:-1])
    return nodes, torch.nan_to_num(change.sqrt() / size.sqrt(), nan=0.0)


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
        blocks = state["blocks"]
        rows = grad.shape[0]
        nodes, residual = relax(blocks, state["feedback"], grad * rows, state["steps"],
                                state["lr"], state["use_derivatives"])
        setattr(state["model"], RESIDUAL, residual.detach())
        grads: list[Tensor | None] = []
        for block, node, slots in zip(blocks, nodes, state["slots"]):
            grad_w, grad_bias = block.weight_grad(block.to_weight_output(node))
            grad_w = grad_w / rows
            grads.append(grad_w)
            if slots["bias"]:
                grads.append(grad_bias / rows)
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
        prefix, chained = chain(model)
        layers = [block.layer for block in chained]
        if any(getattr(layer, "exact_backward", False) for layer in layers):
            return None  # trainer.curvature asks for the true gradient
        steps, lr, backward, use_derivatives = _options(layers[0].rule)
        blocks = []
        with torch.no_grad():
            h = inputs[0]
            for module in prefix:
                h = module(h)
            for block in chained:
                blocks.append(Frozen(block.layer, block.post, h))
                h = blocks[-1].out
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
        state = {"model": model, "blocks": blocks, "feedback": feedback, "steps": steps,
                 "lr": lr, "use_derivatives": use_derivatives, "slots": slots}
        return _Relaxation.apply(output.detach(), state, *params)


register_behaviour(Relaxation())
