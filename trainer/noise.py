"""The noise rules' input noise: its distributions, and one draw per training step.

Weight mirror and information alignment feed their regularizer white noise of each layer's
input shape, and every rule's fixed point depends only on its second moment, sigma^2 I
(docs/design.md section 3). Drawing it is the costliest elementwise work of a step on a CPU (a
ResNet-20 layer's noise takes as long as a convolution), so a step draws once, as many numbers
as its largest noise layer needs, and every layer reads a prefix of that draw in its own shape.
Each layer still sees fresh noise of exactly the right distribution at every step; what layers
share is the numbers, which correlates their B updates within a step but biases none of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from catalogue.rule import check_noise


def fill_noise(out: Tensor, distribution: str, std: float,
               generator: torch.Generator | None = None) -> Tensor:
    """Fill ``out`` in place with zero-mean noise of standard deviation ``std``."""
    check_noise(distribution)
    if distribution == "normal":
        return out.normal_(0.0, std, generator=generator)
    half_width = std * math.sqrt(3.0)  # U(-a, a) has variance a^2 / 3
    return out.uniform_(-half_width, half_width, generator=generator)


def noise_like(shape: torch.Size | tuple[int, ...], distribution: str, std: float, *,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> Tensor:
    """A fresh tensor of noise; with a CPU ``generator``, drawn on the CPU and then moved."""
    draw_on = "cpu" if generator is not None and generator.device.type == "cpu" else device
    out = fill_noise(torch.empty(shape, dtype=dtype, device=draw_on), distribution, std,
                     generator)
    return out.to(device)


class StepNoise:
    """One training step's noise, shared by every layer that asks for it.

    ``plan`` announces each request first (shape, dtype, device, distribution, std); ``take``
    then hands out views. Requests that agree on everything but the shape read one draw, sized
    for the largest of them. The flat buffers are kept across steps in ``pool`` (keyed like the
    groups), so a step allocates nothing once the sizes are known.
    """

    def __init__(self, pool: dict[tuple, Tensor] | None = None) -> None:
        self._sizes: dict[tuple, int] = {}
        self._drawn: dict[tuple, Tensor] = {}
        self._pool = {} if pool is None else pool

    @staticmethod
    def _group(x: Tensor, distribution: str, std: float) -> tuple:
        return (x.dtype, x.device, distribution, float(std))

    def plan(self, x: Tensor, distribution: str, std: float) -> None:
        key = self._group(x, distribution, std)
        self._sizes[key] = max(self._sizes.get(key, 0), x.numel())

    def take(self, x: Tensor, distribution: str, std: float) -> Tensor:
        """Noise of ``x``'s shape (a view of this step's draw); ``plan`` must have seen it."""
        key = self._group(x, distribution, std)
        if key not in self._drawn:
            size = self._sizes.get(key, 0)
            if size < x.numel():
                raise RuntimeError("StepNoise.take: a request larger than any planned one")
            flat = self._pool.get(key)
            if flat is None or flat.numel() < size:
                flat = torch.empty(size, dtype=x.dtype, device=x.device)
                self._pool[key] = flat
            self._drawn[key] = fill_noise(flat[:size], distribution, std)
        return self._drawn[key][:x.numel()].view(x.shape)
