"""Architecture declarations: a name, its family, and the trainer function that builds it.

Declared here, without torch, so that listing and validating architectures is instant; the
builder is named as "module:function" and imported only when a model is built
(``trainer.create_model``). A family is one builder with per-name options (a ResNet's depth).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from catalogue.errors import UsageError
from catalogue.registry import Registry


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    summary: str
    builder: str | Callable[..., Any]  # "module:function", or the function itself
    options: Mapping[str, Any] = field(default_factory=dict)
    image_sizes: tuple[int, int] | None = None  # the image sides it takes (None: any)
    layers: int | None = None  # weight layers, where the name carries no depth (mlp: 3)

    def check_image_size(self, size: int, what: str = "images") -> None:
        """UsageError unless the architecture takes ``size`` px images."""
        if self.image_sizes and not self.image_sizes[0] <= size <= self.image_sizes[1]:
            low, high = self.image_sizes
            raise UsageError(f"{self.name} takes {low} to {high} px images, but the {what} "
                             f"are {size} px (resize them with --image-size {high})")

    @property
    def depth(self) -> int | None:
        """The number of weight layers: the trailing number of the name (resnet20 -> 20,
        mlp6 -> 6) or the declared count; the x axis of transfer plots."""
        if self.layers is not None:
            return self.layers
        match = re.search(r"(\d+)$", self.name)
        return int(match.group(1)) if match else None


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def register_architecture(arch: Architecture) -> Architecture:
    return ARCHITECTURES.register(arch.name, arch)


def list_architectures(family: str | None = None) -> list[str]:
    entries = [a for _, a in ARCHITECTURES.items() if family is None or a.family == family]
    return [a.name for a in sorted(entries, key=lambda a: (a.family, len(a.name), a.name))]


def architecture(name: str) -> Architecture:
    return ARCHITECTURES.get(name)


register_architecture(Architecture(
    "mlp", "mlp", "two hidden layers of 256 ReLU units", "trainer.models:mlp", layers=3))
# Deeper MLPs, named by their number of weight layers (mlp is mlp3): the depths a rule that
# runs only on MLPs (dynamic inversion) transfers across.
for _depth in (4, 6, 8):
    register_architecture(Architecture(
        f"mlp{_depth}", "mlp", f"{_depth - 1} hidden layers of 256 ReLU units",
        "trainer.models:mlp", {"hidden": (256,) * (_depth - 1)}))
register_architecture(Architecture(
    "lenet", "lenet", "LeNet-5 (LeCun et al. 1998): conv 6-16-120, fc 84; 28 to 32 px, grey "
    "or colour (smaller images are zero-padded to 32)", "trainer.models:lenet",
    image_sizes=(24, 32)))
for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_architecture(Architecture(
        f"resnet{_depth}", "cifar_resnet",
        f"CIFAR-style ResNet (He et al. 2016), 3 stages of {(_depth - 2) // 6} basic blocks",
        "trainer.models:cifar_resnet", {"depth": _depth}))
for _depth in (18, 34, 50, 101, 152):
    register_architecture(Architecture(
        f"resnet{_depth}", "imagenet_resnet",
        f"torchvision ResNet-{_depth} (3x3 stem without max-pool for images <= 64 px)",
        "trainer.models:imagenet_resnet", {"depth": _depth}))
