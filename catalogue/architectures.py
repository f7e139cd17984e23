"""Architecture declarations: a name, its family, and the trainer function that builds it.

Declared here, without torch, so that listing and validating architectures is instant; the
builder is named as "module:function" and imported only when a model is built
(``trainer.create_model``). A family is one builder with per-name options (a ResNet's depth,
an RNN's hidden units), and declares its transfer axis: what changes from one of its members
to the next (depth for ResNets and MLPs, hidden units for RNNs). Each architecture states its
value on that axis (``scale``), so that a transfer study orders and plots its targets by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from catalogue.errors import UsageError
from catalogue.registry import Registry
from catalogue.tasks import InputSpec, Task, check_fits


@dataclass(frozen=True)
class Family:
    """A family's transfer axis: ``axis`` names it in tables, ``label`` on plots; and
    ``advice``, (training option, value, why): a line a run of the family is given while the
    option is not at that value (the RNNs train with plain SGD)."""

    name: str
    axis: str = "depth"
    label: str = "depth (weight layers)"
    advice: tuple[tuple[str, object, str], ...] = ()


FAMILIES: Registry[Family] = Registry("architecture family")


def register_family(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def dale_counts(hidden: int, excitatory: float) -> tuple[int, int]:
    """(excitatory, inhibitory) units of a Dale's-law RNN, or a one-line UsageError: the
    excitatory fraction rounds to whole units, and each type needs at least two, so that
    every unit still has inputs of both signs without itself."""
    if not 0.0 < excitatory < 1.0:
        raise UsageError(f"excitatory={excitatory!r}: the excitatory fraction must be in "
                         f"(0, 1), or 0 for no Dale's law")
    count = round(excitatory * hidden)
    if min(count, hidden - count) < 2:
        raise UsageError(f"excitatory={excitatory!r} of {hidden} units gives {count} "
                         f"excitatory and {hidden - count} inhibitory: Dale's law needs at "
                         f"least 2 of each")
    return count, hidden - count


def family_of(name: str) -> Family:
    """The family's declaration; a family nobody declared has the depth axis."""
    return FAMILIES.get(name) if name in FAMILIES else Family(name)


@dataclass(frozen=True)
class ModelOption:
    """A number a model takes, checked with the configuration (so that a sweep refuses a
    bad value before any trial): its type, its range [low, high) and its help; or, with
    ``choices``, one of a few names (an activation)."""

    kind: type
    help: str
    low: float | None = None
    high: float | None = None  # exclusive
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """Its values, short: the names, or the range."""
        if self.choices:
            return "|".join(self.choices)
        kind = self.kind.__name__
        if self.high is not None:
            return f"{kind} in [{self.low:g}, {self.high:g})" if self.low is not None \
                else f"{kind} < {self.high:g}"
        return f"{kind} >= {self.low:g}" if self.low is not None else kind

    def check(self, arch: str, name: str, value: Any) -> None:
        if self.choices:
            if value not in self.choices:
                raise UsageError(f"{arch}: option {name} takes one of "
                                 f"{', '.join(self.choices)}, got {value!r}")
            return
        if isinstance(value, str):
            raise UsageError(f"{arch}: option {name} takes a {self.kind.__name__}: {value!r} "
                             "is not a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind is int and value != int(value)):
            raise UsageError(f"{arch}: option {name} takes a {self.kind.__name__}, got "
                             f"{value!r}")
        if (self.low is not None and value < self.low) or (
                self.high is not None and value >= self.high):
            raise UsageError(f"{arch}: option {name} must be in [{self.low:g}, "
                             f"{self.high:g}), got {value!r}" if self.high is not None else
                             f"{arch}: option {name} must be at least {self.low:g}, got "
                             f"{value!r}")


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    summary: str
    builder: str | Callable[..., Any]  # "module:function", or the function itself
    options: Mapping[str, Any] = field(default_factory=dict)
    image_sizes: tuple[int, int] | None = None  # the image sides it takes (None: any)
    scale: int | None = None  # its value on the family's transfer axis (layers, units)
    inputs: tuple[str, ...] = ("image",)  # the input kinds it takes (catalogue.tasks)
    readouts: tuple[str, ...] = ("last",)  # where it can read its output out
    # Options a user may set (--model-option NAME=VALUE): name -> ModelOption.
    settable: Mapping[str, "ModelOption"] = field(default_factory=dict)
    # How many units the model is a sequence of, the pieces DFA's modules are made of (its
    # builder's model declares them: trainer.models.unit_boundaries), so that options
    # counting them are checked before anything runs; None: checked when the model is built.
    module_units: int | None = None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """UsageError naming an option it does not take, or a value of the wrong type."""
        for name, value in options.items():
            if name in self.options:  # declared by the name, as rnn64's hidden units
                siblings = ", ".join(a for a in list_architectures(self.family)
                                     if a != self.name) or "none"
                raise UsageError(f"{self.name} is declared with {name}={self.options[name]}, "
                                 f"its value on the {self.axis.axis} axis; for another, name "
                                 f"the architecture (its family: {siblings})")
            if name not in self.settable:
                takes = ", ".join(sorted(self.settable)) or "none"
                raise UsageError(f"{self.name} takes no option {name!r} (its options: "
                                 f"{takes})")
            self.settable[name].check(self.name, name, value)
        if options.get("excitatory") and "hidden" in self.options:  # the RNNs' Dale's law
            dale_counts(int(self.options["hidden"]), float(options["excitatory"]))

    def check_fits(self, dataset: str, spec: InputSpec, task: Task) -> None:
        """UsageError unless this architecture can be trained on the dataset."""
        check_fits(self.name, self.inputs, dataset, spec, task, self.readouts)

    def check_image_size(self, size: int, what: str = "images") -> None:
        """UsageError unless the architecture takes ``size`` px images."""
        if self.image_sizes and not self.image_sizes[0] <= size <= self.image_sizes[1]:
            low, high = self.image_sizes
            raise UsageError(f"{self.name} takes {low} to {high} px images, but the {what} "
                             f"are {size} px (resize them with --image-size {high})")

    @property
    def axis(self) -> Family:
        """Its family's transfer axis."""
        return family_of(self.family)


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def register_architecture(arch: Architecture) -> Architecture:
    return ARCHITECTURES.register(arch.name, arch)


def list_architectures(family: str | None = None) -> list[str]:
    entries = [a for _, a in ARCHITECTURES.items() if family is None or a.family == family]
    return [a.name for a in sorted(entries, key=lambda a: (a.family, len(a.name), a.name))]


def architecture(name: str) -> Architecture:
    return ARCHITECTURES.get(name)


for _family in ("mlp", "lenet", "cifar_resnet", "imagenet_resnet"):
    register_family(Family(_family))
register_family(Family("two_layer", "hidden", "hidden units (width p)"))
register_family(Family("rnn", "hidden", "hidden units", advice=(
    ("momentum", 0.0, "Liu et al. train the rate RNN with plain SGD; with momentum 0.9 at the "
                      "default rate a ReLU RNN diverges within an epoch under most rules "
                      "(--momentum 0, --lr 0.01-0.3, or search them)"),)))

register_architecture(Architecture(
    "mlp", "mlp", "two hidden layers of 256 ReLU units; flattens images and sequences",
    "trainer.models:mlp", scale=3, inputs=("image", "sequence", "vector"), module_units=3))
# Deeper MLPs, named by their number of weight layers (mlp is mlp3): the depths a rule that
# runs only on MLPs (dynamic inversion) transfers across.
for _depth in (4, 6, 8):
    register_architecture(Architecture(
        f"mlp{_depth}", "mlp", f"{_depth - 1} hidden layers of 256 ReLU units",
        "trainer.models:mlp", {"hidden": (256,) * (_depth - 1)}, scale=_depth,
        inputs=("image", "sequence", "vector"), module_units=_depth))
register_architecture(Architecture(
    "lenet", "lenet", "LeNet-5 (LeCun et al. 1998): conv 6-16-120, fc 84; 28 to 32 px, grey "
    "or colour (smaller images are zero-padded to 32)", "trainer.models:lenet",
    image_sizes=(24, 32), module_units=5))
for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_architecture(Architecture(
        f"resnet{_depth}", "cifar_resnet",
        f"CIFAR-style ResNet (He et al. 2016), 3 stages of {(_depth - 2) // 6} basic blocks",
        "trainer.models:cifar_resnet", {"depth": _depth}, scale=_depth, module_units=4))
for _depth in (18, 34, 50, 101, 152):
    register_architecture(Architecture(
        f"resnet{_depth}", "imagenet_resnet",
        f"torchvision ResNet-{_depth} (3x3 stem without max-pool for images <= 64 px)",
        "trainer.models:imagenet_resnet", {"depth": _depth}, scale=_depth, module_units=5))
# The rate RNN of Liu et al. (NeurIPS 2022): rnn has their 128 units; the others are the
# hidden sizes a rule's settings transfer across.
_RNN_OPTIONS = {"leak": ModelOption(float, "leak d in [0, 1): v_t = d v_(t-1) + (1 - d)(...)",
                                     0.0, 1.0),
                "recurrent_gain": ModelOption(float, "W_rec's initial scale: N(0, gain^2 / "
                                                     "hidden); default sqrt 2 (with Dale's "
                                                     "law: its spectral radius, default 1)",
                                              0.0),
                "excitatory": ModelOption(float, "Dale's law: the fraction of excitatory "
                                                 "units (the reference 0.8); 0, the "
                                                 "default: none", 0.0, 1.0)}
for _hidden in (128, 32, 64, 256):
    register_architecture(Architecture(
        "rnn" if _hidden == 128 else f"rnn{_hidden}", "rnn",
        f"leaky rate RNN (Liu et al. 2022), {_hidden} ReLU units; images row by row",
        "trainer.recurrent:rate_rnn", {"hidden": _hidden}, image_sizes=(1, 64),
        scale=_hidden, inputs=("sequence", "image"), readouts=("last", "every"),
        settable=_RNN_OPTIONS))
# Song, Xu & Lafferty's two-layer network f(x) = p^-1/2 sum_r beta_r psi(w_r . x) (feedback
# alignment's theory), named by its width p: two_layer has 400 units, the others are the widths
# bench/fa_theory.py compares.
_TWO_LAYER_OPTIONS = {"activation": ModelOption(str, "psi: relu (default) or tanh",
                                                choices=("relu", "tanh"))}
for _width in (400, 100, 1600):
    register_architecture(Architecture(
        "two_layer" if _width == 400 else f"two_layer{_width}", "two_layer",
        f"f(x) = p^-1/2 beta . psi(W x) (Song et al. 2021), p = {_width} units, no biases, "
        "N(0, 1) weights; flattens images", "trainer.models:two_layer", {"hidden": _width},
        scale=_width, inputs=("vector", "image"), settable=_TWO_LAYER_OPTIONS,
        module_units=2))
