"""The Rule declaration, the rule registry, and a rule bound to metaparameter values.

A rule is data: which primitives it weights with which coefficient letters, their defaults,
what its regularizer reads (nothing, fresh noise, or the real layer input), how its feedback
weights B relate to W, its locality and its reference. The trainer, the search spaces and the
reports all read this one declaration. Every module in ``catalogue/rules/`` is imported the
first time the registry is read, so adding a rule is adding one file there that calls
``register_rule``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

from catalogue.errors import UsageError
from catalogue.mechanism import MECHANISMS, MechanismDeclaration
from catalogue.primitives import PRIMITIVES
from catalogue.registry import Registry, import_submodules

RegularizerInput = Literal["none", "noise", "activation"]
# How B relates to W is the rule's mechanism, a name in catalogue.mechanism.MECHANISMS: tied
# (B is W: backprop), fixed (a random B that never changes), sign (B = magnitude * sign(W),
# following W's signs), learned (B is trained by the rule's regularizer), direct (the output
# error reaches each layer through a fixed random matrix of its own), or any registered later.
# The magnitudes of a sign rule's B (Liao et al. 2016): fixed (|B0|, drawn once: frSF),
# uniform (one value per layer, the mean of |B0|: uSF), redrawn (|R|, R drawn afresh at B0's
# scale every training step: brSF).
SignMagnitude = Literal["fixed", "uniform", "redrawn"]
NOISE_STD = "sigma"
# The distribution of a noise rule's regularizer input, always at variance sigma^2: each rule's
# fixed point depends only on the noise's second moment (docs/design.md section 3).
NoiseDistribution = Literal["normal", "uniform"]
NOISE_DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform")
DEFAULT_NOISE = "normal"


def check_noise(noise: str) -> str:
    if noise not in NOISE_DISTRIBUTIONS:
        raise UsageError(f"noise distribution must be one of {', '.join(NOISE_DISTRIBUTIONS)}, "
                         f"got {noise!r}")
    return noise


def check_noise_batch(noise_batch: object) -> int:
    """A count of noise samples per step: an integer >= 0 (0: the layer input's batch)."""
    if isinstance(noise_batch, bool) or not isinstance(noise_batch, int) or noise_batch < 0:
        raise UsageError(f"noise batch must be an integer >= 0 (0: the training batch), "
                         f"got {noise_batch!r}")
    return noise_batch


OptionKind = Literal["int", "float", "categorical"]
OPTION_KINDS: tuple[str, ...] = ("int", "float", "categorical")
OptionValue = int | float | str


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and value.is_integer())


@dataclass(frozen=True)
class RuleOption:
    """A typed option a rule declares beside its primitive coefficients (an inference step
    count, a switch): its kind, default, and range or choices. ``bind`` validates it, the
    derived search space gives it its distribution (int: an integer one; categorical: a
    choice), and ``--set``/``--fix``/``--space`` take it like a coefficient."""

    name: str
    kind: OptionKind
    default: OptionValue
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    # The derived search space's range, where narrower than the valid one (None: low..high):
    # values a user may set but a search should not spend trials on.
    search: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        where = f"rule option {self.name!r}"
        if self.search is not None and not (
                self.low is not None and self.high is not None
                and self.low <= self.search[0] < self.search[1] <= self.high):
            raise ValueError(f"{where}: its search range must lie inside low..high")
        if self.kind not in OPTION_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(OPTION_KINDS)}, "
                             f"got {self.kind!r}")
        if self.kind == "categorical":
            if len(self.choices) < 2 or len(set(self.choices)) != len(self.choices) \
                    or not all(isinstance(c, str) and c for c in self.choices):
                raise ValueError(f"{where}: a categorical option needs two or more distinct "
                                 "names as choices")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError(f"{where}: a categorical option has choices, not a range")
        else:
            if self.choices:
                raise ValueError(f"{where}: only a categorical option has choices")
            if self.low is None or self.high is None or not (
                    math.isfinite(self.low) and math.isfinite(self.high)
                    and self.low < self.high):
                raise ValueError(f"{where}: a numeric option needs finite low < high")
            if self.kind == "int" and not (_whole(self.low) and _whole(self.high)):
                raise ValueError(f"{where}: an int option needs whole-number bounds")
            if self.log and self.low <= 0:
                raise ValueError(f"{where}: a log range needs low > 0")
        try:
            self.parse(self.default)
        except UsageError as exc:
            raise ValueError(f"{where}: its default is invalid ({exc})") from None

    def parse(self, raw: object) -> OptionValue:
        """The value as the option takes it, or a one-line UsageError. An int option takes
        whole numbers only (a searcher's 5.0 is 5; 2.5 is refused)."""
        if self.kind == "categorical":
            if raw not in self.choices:
                raise UsageError(f"rule option {self.name}={raw!r} must be one of "
                                 f"{', '.join(self.choices)}")
            return str(raw)
        value: float
        if isinstance(raw, bool):
            raise UsageError(f"rule option {self.name}={raw!r} is not a number")
        if isinstance(raw, str):
            try:
                value = int(raw) if self.kind == "int" else float(raw)
            except ValueError:
                what = "a whole number" if self.kind == "int" else "a number"
                raise UsageError(f"rule option {self.name}={raw!r} is not {what}") from None
        elif isinstance(raw, (int, float)):
            value = raw
        else:
            raise UsageError(f"rule option {self.name}={raw!r} is not a number")
        if self.kind == "int" and not _whole(value):
            raise UsageError(f"rule option {self.name}={raw!r} must be a whole number")
        assert self.low is not None and self.high is not None
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise UsageError(f"rule option {self.name}={raw!r} must be in "
                             f"[{self.low:g}, {self.high:g}]")
        return int(value) if self.kind == "int" else float(value)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{'|'.join(self.choices)} (default {self.default})"
        assert self.low is not None and self.high is not None
        searched = f", searched {self.search[0]:g}..{self.search[1]:g}" if self.search else ""
        return (f"{self.kind} {self.low:g}..{self.high:g} {'log' if self.log else 'linear'} "
                f"(default {self.default:g}{searched})")


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    reference: str
    mechanism: str  # a registered mechanism's name (catalogue.mechanism)
    terms: Mapping[str, str] = field(default_factory=dict)  # primitive -> coefficient letter
    defaults: Mapping[str, float] = field(default_factory=dict)
    regularizer_input: RegularizerInput = "none"
    local: bool = True
    receives_task_gradient: bool = False  # Kolen-Pollack: B also receives W's gradient
    sign_magnitude: SignMagnitude = "fixed"  # only read for mechanism="sign"
    # Search ranges that differ from the standard ones (spaces.registry): letter -> (low, high).
    search_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Typed options beside the coefficients (RuleOption), e.g. an inference step count.
    options: tuple[RuleOption, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, str) or self.mechanism not in MECHANISMS:
            raise ValueError(f"rule {self.name!r}: unknown mechanism {self.mechanism!r}; "
                             f"valid: {', '.join(sorted(MECHANISMS.names()))}")
        unknown = set(self.terms) - set(PRIMITIVES)
        if unknown:
            raise ValueError(f"rule {self.name!r}: unknown primitives {sorted(unknown)}")
        needed = set(self.terms.values()) | ({NOISE_STD} if self.uses_noise else set())
        if needed != set(self.defaults):
            raise ValueError(f"rule {self.name!r}: defaults must cover exactly {sorted(needed)}")
        if self.terms and not self.declared_mechanism.has_regularizer:
            raise ValueError(f"rule {self.name!r}: only a learned B has regularizer terms "
                             f"(mechanism {self.mechanism!r} has none)")
        uses_input = any(PRIMITIVES[p].uses_input for p in self.terms)
        if uses_input != (self.regularizer_input != "none"):
            raise ValueError(f"rule {self.name!r}: regularizer_input must be 'none' exactly "
                             "when no term reads an input")
        if self.local and any(not PRIMITIVES[p].local for p in self.terms):
            raise ValueError(f"rule {self.name!r}: a non-local primitive makes it non-local")
        if set(self.search_ranges) - set(self.defaults):
            raise ValueError(f"rule {self.name!r}: search ranges for unknown metaparameters")
        names = [o.name for o in self.options]
        if not all(isinstance(o, RuleOption) for o in self.options) \
                or len(set(names)) != len(names) or set(names) & set(self.defaults):
            raise ValueError(f"rule {self.name!r}: options must be RuleOptions with distinct "
                             "names that are not coefficients")

    # --- what the trainer asks -----------------------------------------------------------------

    @property
    def declared_mechanism(self) -> MechanismDeclaration:
        """The mechanism's torch-free declaration; its behaviour is ``trainer.mechanisms``'."""
        return MECHANISMS.get(self.mechanism)

    @property
    def feedback(self) -> str:
        """The mechanism's name, under the column name listings and stored reports use."""
        return self.mechanism

    @property
    def learns_feedback(self) -> bool:
        return self.declared_mechanism.learns_feedback

    @property
    def transported_options(self) -> dict[str, str]:
        """The options that make B W's transported copy (none: the rule has no such B)."""
        return dict(self.declared_mechanism.transported)

    @property
    def uses_noise(self) -> bool:
        return self.regularizer_input == "noise"

    @property
    def needs_layer_input(self) -> bool:
        return self.regularizer_input != "none"

    @property
    def metaparameters(self) -> tuple[str, ...]:
        """Everything ``bind`` takes by name: the coefficients (and sigma), then the options."""
        return tuple(self.defaults) + tuple(o.name for o in self.options)

    def option(self, name: str) -> RuleOption | None:
        return next((o for o in self.options if o.name == name), None)

    def coerce(self, name: str, value: object) -> OptionValue:
        """A sampled, fixed or recorded value as ``bind`` takes it: a coefficient as a float,
        an option as its kind (a searcher's 5.0 for an int option is 5)."""
        option = self.option(name)
        return option.parse(value) if option is not None else float(value)  # type: ignore[arg-type]

    # --- what the spaces and reports ask -------------------------------------------------------

    def describe_parameter(self, name: str) -> str:
        """What a metaparameter does, for axis labels and help: 'weight of decay'."""
        if name == NOISE_STD and self.uses_noise:
            return "input-noise std"
        option = self.option(name)
        if option is not None:
            return option.help or name
        weighted = [p for p, letter in self.terms.items() if letter == name]
        if weighted:
            return "weight of " + " and ".join(weighted)
        raise UsageError(f"rule {self.name!r} has no metaparameter {name!r}; valid: "
                         f"{', '.join(self.metaparameters) or 'none'}")

    def formula(self) -> str:
        """R per layer as text, e.g. 'alpha*decay + beta*amp' ('-' for no regularizer)."""
        return " + ".join(f"{letter}*{p}" for p, letter in self.terms.items()) or "-"

    def bind(self, noise: str = DEFAULT_NOISE, noise_batch: int = 0,
             **metaparameters: float) -> "ConfiguredRule":
        """The rule at these metaparameter values; ``noise`` is the input-noise distribution
        and ``noise_batch`` the noise samples per step (both read only by rules whose
        regularizer draws noise; 0: as many as the layer's input batch). The rule's typed
        options (``options``) are given by name beside the coefficients and validated by
        their declarations."""
        check_noise(noise)
        check_noise_batch(noise_batch)
        unknown = set(metaparameters) - set(self.metaparameters)
        if unknown:
            valid = ", ".join(self.metaparameters) or "none"
            raise UsageError(f"rule {self.name!r} has no metaparameter "
                             f"{', '.join(sorted(unknown))}; valid: {valid}")
        values = dict(self.defaults)
        options = {o.name: o.parse(o.default) for o in self.options}
        for key, raw in metaparameters.items():
            option = self.option(key)
            if option is not None:
                options[key] = option.parse(raw)
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise UsageError(f"metaparameter {key}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0 or (key == NOISE_STD and value == 0):
                bound = "> 0" if key == NOISE_STD else ">= 0"
                raise UsageError(f"metaparameter {key}={raw!r} must be finite and {bound}")
            values[key] = value
        return ConfiguredRule(self, MappingProxyType(values), noise, int(noise_batch),
                              MappingProxyType(options))


@dataclass(frozen=True)
class ConfiguredRule:
    """A rule with its metaparameter values: what each converted layer carries."""

    rule: Rule
    values: Mapping[str, float]
    noise: str = DEFAULT_NOISE  # the input-noise distribution, at variance sigma^2
    noise_batch: int = 0  # noise samples per step and layer; 0: the layer input's batch
    options: Mapping[str, OptionValue] = field(default_factory=dict)  # the rule's typed options

    def __deepcopy__(self, memo: dict) -> "ConfiguredRule":
        """Immutable: a copied model (trainer.diagnostics' replicas) shares it; its read-only
        mappings could not be copied anyway."""
        return self

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def coefficients(self) -> dict[str, float]:
        """Primitive -> numeric weight, e.g. {'decay': 1e-3, 'amp': 1e-3}."""
        return {p: self.values[letter] for p, letter in self.rule.terms.items()}

    @functools.cached_property
    def active_coefficients(self) -> Mapping[str, float]:
        """``coefficients`` without the zero ones, computed once: a training step reads it
        for every layer."""
        return MappingProxyType({p: c for p, c in self.coefficients.items() if c})


RULES: Registry[Rule] = Registry("rule", discover=import_submodules("catalogue.rules"))


def register_rule(rule: Rule, aliases: tuple[str, ...] = ()) -> Rule:
    """Register a rule under its name and any older names (``aliases``) stored studies use."""
    RULES.register(rule.name, rule)
    for alias in aliases:
        RULES.alias(alias, rule.name)
    return rule


def list_rules() -> list[str]:
    return sorted(RULES.names())


def rule_declaration(name: str) -> Rule:
    return RULES.get(name)


def get_rule(name: str, noise: str = DEFAULT_NOISE, noise_batch: int = 0,
             **metaparameters: float) -> ConfiguredRule:
    """The named rule bound to its defaults overridden by ``metaparameters``."""
    return rule_declaration(name).bind(noise, noise_batch, **metaparameters)
