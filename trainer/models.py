"""Model builders for the architectures the catalogue declares (``catalogue.architectures``).

Every builder takes the input's shape (``spec``, an image or a sequence: ``catalogue.tasks``),
the output width (``outputs``) and where the output is read (``readout``: at the last step,
or at every step of a sequence), so any model runs on any dataset that fits it, down to 8x8
digits. The catalogue names each builder; a new family is a builder here and a declaration
there, or ``@register_model`` for a model of one's own.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor, nn

from catalogue.architectures import (Architecture, architecture, list_architectures,
                                     register_architecture)
from catalogue.errors import UsageError
from catalogue.tasks import InputSpec, Readout


def register_model(name: str, family: str, summary: str = "",
                   inputs: tuple[str, ...] = ("image",)) -> Callable[[Callable], Callable]:
    """Declare an architecture whose builder is the decorated function, called as
    ``build(spec=..., outputs=..., readout=..., small_input=...)``."""
    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        register_architecture(Architecture(name, family, summary or name, build,
                                           inputs=inputs))
        return build
    return decorator


def list_models(family: str | None = None) -> list[str]:
    return list_architectures(family)


def _builder(arch: Architecture) -> Callable[..., nn.Module]:
    if callable(arch.builder):
        return arch.builder
    module, _, attr = arch.builder.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_model(name: str, *, spec: InputSpec | None = None, outputs: int | None = None,
                 readout: Readout = "last", num_classes: int | None = None,
                 in_channels: int | None = None, image_size: int | None = None,
                 small_input: bool | None = None, **options: Any) -> nn.Module:
    """Build a declared architecture for inputs of shape ``spec`` with ``outputs`` outputs,
    or, for images, of shape (in_channels, image_size, image_size) with ``num_classes``.

    ``options`` override the architecture's own (an RNN's ``hidden`` and ``leak``).
    ``small_input`` (ImageNet ResNets only) swaps the 7x7/stride-2 stem and max-pool for a 3x3
    stride-1 stem; by default it is on for images of 64 px or less.
    """
    arch = architecture(name)
    if spec is None:
        if in_channels is None or image_size is None:
            raise UsageError(f"{name}: give the input's spec, or in_channels and image_size")
        spec = InputSpec.image(in_channels, image_size)
    outputs = outputs if outputs is not None else num_classes
    if outputs is None:
        raise UsageError(f"{name}: give the number of outputs (outputs or num_classes)")
    if spec.kind not in arch.inputs:
        raise UsageError(f"{name} takes {' or '.join(arch.inputs)} inputs, not "
                         f"{spec.describe()}")
    if readout not in arch.readouts:
        raise UsageError(f"{name} reads its output at the last step only, not at every step")
    if small_input is None:
        small_input = spec.kind != "image" or spec.size <= 64
    return _builder(arch)(spec=spec, outputs=outputs, readout=readout,
                          small_input=small_input, **{**arch.options, **options})


# --- units: where a model can be cut into modules ------------------------------------------------

def unit_boundaries(model: nn.Module) -> list[str] | None:
    """The submodules (by name, in forward order) whose input is the boundary between two of
    the model's *units*, the pieces DFA's ``modules`` and ``hybrid`` group into modules; None
    for a model that declares none. A sequential model's units are its weight layers (the
    boundaries: every weight layer's input but the first's); any other model declares them as
    ``unit_boundary_names``, names whose input tensor no other module reads (a ResNet's stage,
    whose shortcut and first convolution both read it from inside)."""
    declared = getattr(model, "unit_boundary_names", None)
    if declared is not None:
        return list(declared)
    if isinstance(model, nn.Sequential):
        names = [name for name, m in model.named_children()
                 if isinstance(m, (nn.Linear, nn.Conv2d))]
        if len(names) == sum(1 for m in model.modules() if isinstance(m, (nn.Linear,
                                                                           nn.Conv2d))):
            return names[1:]
    return None


# --- MLP -------------------------------------------------------------------------------------

def _flat_width(spec: InputSpec) -> int:
    if spec.kind == "image":
        return spec.channels * spec.size * spec.size
    if spec.kind == "vector":
        return spec.features
    return spec.steps * spec.features


def mlp(*, spec: InputSpec, outputs: int, readout: Readout, small_input: bool,
        hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """Hidden ReLU layers on the flattened input (an image, or a whole sequence at once)."""
    num_classes = outputs
    layers: list[nn.Module] = [nn.Flatten()]
    width = _flat_width(spec)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# --- Song, Xu & Lafferty's two-layer network ----------------------------------------------------

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class Scale(nn.Module):
    """A fixed factor, no parameter: the two-layer network's p^-1/2."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def two_layer(*, spec: InputSpec, outputs: int, readout: Readout, small_input: bool,
              hidden: int, activation: str = "relu") -> nn.Module:
    """f(x) = p^-1/2 sum_r beta_r psi(w_r . x) (Song, Xu & Lafferty 2021): Linear(d, p), psi,
    the fixed p^-1/2, Linear(p, outputs), no biases. Both layers are Linear, so every rule
    converts it; under feedback alignment the second layer's B is the paper's fixed random b.
    Initialised as the paper and bench/fa_theory.py: every w_r and beta_r entry N(0, 1)."""
    if activation not in ACTIVATIONS:  # the catalogue checks it first; a direct call too
        raise UsageError(f"two_layer: activation must be one of {', '.join(ACTIVATIONS)}, got "
                         f"{activation!r}")
    first = nn.Linear(_flat_width(spec), hidden, bias=False)
    second = nn.Linear(hidden, outputs, bias=False)
    for layer in (first, second):
        nn.init.normal_(layer.weight)
    return nn.Sequential(nn.Flatten(), first, ACTIVATIONS[activation](), Scale(hidden ** -0.5),
                         second)


# --- LeNet-5 ------------------------------------------------------------------------------------

LENET_SIZE = 32  # the 5x5 conv3 needs a 5x5 map: 32 -> 28 -> 14 -> 10 -> 5 -> 1


def lenet(*, spec: InputSpec, outputs: int, readout: Readout, small_input: bool
          ) -> nn.Module:
    """The classic LeNet-5 that peers benchmark (conv 6-16-120 with 5x5 kernels, 2x2 max
    pooling, fc 84): a 28 px input is zero-padded to 32, as LeCun et al. padded MNIST (an odd
    side is padded to 33, which the pooling floors to the same maps)."""
    image_size, in_channels, num_classes = spec.size, spec.channels, outputs
    architecture("lenet").check_image_size(image_size)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=(LENET_SIZE - image_size + 1) // 2),
        nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5), nn.ReLU(inplace=True), nn.Flatten(),
        nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))


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

    # Units (unit_boundaries): the stem with the first stage (same width and resolution), the
    # second stage, the third, and the head (pooling and fc).
    unit_boundary_names = ("layer2", "layer3", "fc")

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


def cifar_resnet(*, depth: int, spec: InputSpec, outputs: int, readout: Readout,
                 small_input: bool) -> nn.Module:
    return CifarResNet(depth, outputs, spec.channels)


# --- torchvision ImageNet ResNets ---------------------------------------------------------------

def imagenet_resnet(*, depth: int, spec: InputSpec, outputs: int, readout: Readout,
                    small_input: bool) -> nn.Module:
    # Imported here: torchvision's import costs ~1.5 s (it loads torch._dynamo), which every
    # trial worker and CLI call paid before it built any of these models.
    import torchvision.models

    num_classes, in_channels = outputs, spec.channels
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    # Units (unit_boundaries): the stem with the first stage, each later stage, the head.
    model.unit_boundary_names = ("layer2", "layer3", "layer4", "fc")
    return model
