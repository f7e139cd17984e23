"""Relaxation on a sequential model, block by block: the first engine, kept for callers that
reason about an nn.Sequential as a chain of blocks (a weight layer and the parameter-free
modules after it). ``trainer.relaxation.graph`` runs the same dynamics on any model.

``chain`` splits the model into blocks (or refuses it in one line), ``Frozen`` holds one block
at the feedforward point (its input, f' of each nonlinearity, the pooling's routing) and
pulls messages back through it: predictive coding's strict predictions and dynamic inversion
walk a sequential model with them. (The block-by-block sweep itself is now the tests' oracle
for the graph engine, tests/relaxation_cases.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError

# Elementwise nonlinearities whose derivative f'(a) the relaxation reads pointwise, and the
# parameter-free maps it pulls a message back through by their own vector-Jacobian product.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU,
               nn.Softplus, nn.Identity)
STRUCTURAL = (nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)
SUPPORTED = ("an nn.Sequential of Linear/Conv2d layers, each followed by elementwise "
             "nonlinearities, pooling or Flatten, a Linear last (the MLP and LeNet)")


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

