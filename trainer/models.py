"""Model registry: an MLP, CIFAR-style ResNets (depth 6n+2), torchvision ResNet-18...152.

Every builder takes the data's shape (``num_classes``, ``in_channels``, ``image_size``) so any
model runs on any dataset, down to 8x8 digits. Register a new family with ``@register_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    build: Callable[..., nn.Module]


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, family: str) -> Callable[[Callable[..., nn.Module]], Callable]:
    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelSpec(name, family, build)
        return build
    return decorator


def list_models(family: str | None = None) -> list[str]:
    names = [n for n, s in _MODELS.items() if family is None or s.family == family]
    return sorted(names, key=lambda n: (_MODELS[n].family, len(n), n))


def model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(list_models())}") \
            from None


def create_model(name: str, *, num_classes: int, in_channels: int, image_size: int,
                 small_input: bool | None = None) -> nn.Module:
    """Build a registered model for inputs of shape (in_channels, image_size, image_size).

    ``small_input`` (ImageNet ResNets only) swaps the 7x7/stride-2 stem and max-pool for a 3x3
    stride-1 stem; by default it is on for images of 64 px or less.
    """
    spec = model_spec(name)
    if small_input is None:
        small_input = image_size <= 64
    return spec.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      small_input=small_input)


# --- MLP -------------------------------------------------------------------------------------

@register_model("mlp", family="mlp")
def mlp(*, num_classes: int, in_channels: int, image_size: int, small_input: bool,
        hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# --- CIFAR-style ResNets (He et al. 2016, section 4.2) ------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Three stages of 16/32/64 channels, n basic blocks each: depth 6n + 2."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _register_cifar_resnet(depth: int) -> None:
    @register_model(f"resnet{depth}", family="cifar_resnet")
    def build(*, num_classes: int, in_channels: int, image_size: int,
              small_input: bool) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)


# --- torchvision ImageNet ResNets ---------------------------------------------------------------

def _register_imagenet_resnet(depth: int) -> None:
    factory = getattr(torchvision.models, f"resnet{depth}")

    @register_model(f"resnet{depth}", family="imagenet_resnet")
    def build(*, num_classes: int, in_channels: int, image_size: int,
              small_input: bool) -> nn.Module:
        model = factory(weights=None, num_classes=num_classes)
        if small_input:
            model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model


for _depth in (18, 34, 50, 101, 152):
    _register_imagenet_resnet(_depth)
