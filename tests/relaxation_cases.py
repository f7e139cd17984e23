"""What the tests of the settling rules share: small models, a digits batch, a model's
gradients after one backward under a rule or under autograd, and their relative error."""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

import trainer


def small_model(arch: str = "mlp", dtype: torch.dtype = torch.float32, size: int = 8
                ) -> torch.nn.Module:
    """A seeded 10-class model for one-channel images of ``size`` px."""
    torch.manual_seed(0)
    return trainer.create_model(arch, num_classes=10, in_channels=1, image_size=size).to(dtype)


def digits(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch of the embedded digits."""
    from trainer.datasets import load_dataset

    data = load_dataset("digits", batch_size=n, seed=0, data_dir=None, image_size=None,
                        num_workers=0)
    return next(iter(data.train.batches(0)))


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter's gradient but B's, in order."""
    return [p.grad for n, p in model.named_parameters() if not n.endswith("weight_backward")]


def named_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters()
            if not n.endswith("weight_backward")}


def relative(got: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
             want: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> float:
    """The relative error of the whole update (every tensor flattened into one vector)."""
    def flat(tensors):
        values = tensors.values() if isinstance(tensors, Mapping) else tensors
        return torch.cat([t.flatten() for t in values])

    a, b = flat(got), flat(want)
    return float((a - b).norm() / b.norm())


def converted_step(model: torch.nn.Module, rule: str, x: torch.Tensor, y: torch.Tensor,
                   scale: float = 1.0, **options) -> torch.nn.Module:
    """A copy of ``model`` converted to ``rule``, after one training forward and backward of
    ``scale`` times the cross-entropy: its .grad fields hold the rule's update."""
    converted = trainer.convert(copy.deepcopy(model), rule, **options).train()
    (scale * F.cross_entropy(converted(x), y)).backward()
    return converted


def settling(model: torch.nn.Module, rule: str, x: torch.Tensor, y: torch.Tensor,
             want: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], steps: Sequence[int],
             **options) -> tuple[list[float], list[float]]:
    """At each T of ``steps``: the whole update's relative error against ``want`` and the
    last step's residual (the mechanism's ``relaxation_residual``)."""
    from trainer.mechanisms.relaxation import RESIDUAL

    errors, residuals = [], []
    for t in steps:
        stepped = converted_step(model, rule, x, y, inference_steps=t, **options)
        errors.append(relative(grads(stepped), want))
        residuals.append(float(getattr(stepped, RESIDUAL)))
    return errors, residuals


def relax(blocks: list, feedback: list[torch.Tensor], top: torch.Tensor, steps: int,
          lr: float, use_derivatives: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Activation relaxation block by block on a sequential model (the first engine, kept as
    an independent oracle for the graph engine's transient): the relaxed nodes x*_1..x*_L
    and the last sweep's relative change.

    Node l is block l's output (its feedforward value ``blocks[l].x``, a
    trainer.relaxation.sequential.Frozen, is block l+1's input), node L the output node
    ``top``; ``feedback[l]`` is the matrix (W's shape) block l+1's message goes through. Each
    of the ``steps`` sweeps updates the nodes top-down."""
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
