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
    def uses_noise(self) -> bool:
        return self.regularizer_input == "noise"

    @property
    def needs_layer_input(self) -> bool:
        return self.regularizer_input != "none"

    @property
    def metaparameters(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    # --- what the spaces and reports ask -------------------------------------------------------

    def describe_parameter(self, name: str) -> str:
        """What a metaparameter does, for axis labels and help: 'weight of decay'."""
        if name == NOISE_STD and self.uses_noise:
            return "input-noise std"
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
        regularizer draws noise; 0: as many as the layer's input batch)."""
        check_noise(noise)
        check_noise_batch(noise_batch)
        unknown = set(metaparameters) - set(self.defaults)
        if unknown:
            valid = ", ".join(self.metaparameters) or "none"
            raise UsageError(f"rule {self.name!r} has no metaparameter "
                             f"{', '.join(sorted(unknown))}; valid: {valid}")
        values = dict(self.defaults)
        for key, raw in metaparameters.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise UsageError(f"metaparameter {key}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0 or (key == NOISE_STD and value == 0):
                bound = "> 0" if key == NOISE_STD else ">= 0"
                raise UsageError(f"metaparameter {key}={raw!r} must be finite and {bound}")
            values[key] = value
        return ConfiguredRule(self, MappingProxyType(values), noise, int(noise_batch))


@dataclass(frozen=True)
class ConfiguredRule:
    """A rule with its metaparameter values: what each converted layer carries."""

    rule: Rule
    values: Mapping[str, float]
    noise: str = DEFAULT_NOISE  # the input-noise distribution, at variance sigma^2
    noise_batch: int = 0  # noise samples per step and layer; 0: the layer input's batch

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
