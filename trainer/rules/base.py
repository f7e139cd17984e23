"""The Rule declaration, its registry, and a rule bound to metaparameter values.

A rule is data: which primitives it weights with which coefficient letters, its defaults, what
its regularizer reads (nothing, fresh noise, or the real layer input), and how B relates to W.
Adding a rule is one new module in this package that calls ``register_rule``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

import torch
from torch import Tensor

from trainer.primitives import PRIMITIVES

RegularizerInput = Literal["none", "noise", "activation"]
NOISE_STD = "sigma"


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    terms: Mapping[str, str] = field(default_factory=dict)  # primitive -> coefficient letter
    defaults: Mapping[str, float] = field(default_factory=dict)
    regularizer_input: RegularizerInput = "none"
    local: bool = True
    learns_feedback: bool = False  # B is a trained parameter
    receives_task_gradient: bool = False  # Kolen-Pollack: B also gets W's gradient
    tied: bool = False  # backprop: B is W, layers stay plain
    sign_feedback: bool = False  # sign symmetry: B = |B0| * sign(W)

    def __post_init__(self) -> None:
        unknown = set(self.terms) - set(PRIMITIVES)
        if unknown:
            raise ValueError(f"rule {self.name!r}: unknown primitives {sorted(unknown)}")
        needed = set(self.terms.values()) | ({NOISE_STD} if self.uses_noise else set())
        if needed != set(self.defaults):
            raise ValueError(f"rule {self.name!r}: defaults must cover exactly {sorted(needed)}")

    @property
    def uses_noise(self) -> bool:
        return self.regularizer_input == "noise"

    @property
    def needs_layer_input(self) -> bool:
        return self.regularizer_input != "none"

    @property
    def metaparameters(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def effective_feedback(self, weight: Tensor, feedback: Tensor) -> Tensor:
        if self.sign_feedback:
            return feedback.abs() * torch.sign(weight.detach())
        return feedback

    def bind(self, **metaparameters: float) -> "ConfiguredRule":
        unknown = set(metaparameters) - set(self.defaults)
        if unknown:
            valid = ", ".join(self.metaparameters) or "none"
            raise ValueError(f"rule {self.name!r} has no metaparameter "
                             f"{', '.join(sorted(unknown))}; valid: {valid}")
        values = dict(self.defaults)
        for key, raw in metaparameters.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"metaparameter {key}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0 or (key == NOISE_STD and value == 0):
                bound = "> 0" if key == NOISE_STD else ">= 0"
                raise ValueError(f"metaparameter {key}={raw!r} must be finite and {bound}")
            values[key] = value
        return ConfiguredRule(self, MappingProxyType(values))


@dataclass(frozen=True)
class ConfiguredRule:
    """A rule with its metaparameter values: what each converted layer carries."""

    rule: Rule
    values: Mapping[str, float]

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def coefficients(self) -> dict[str, float]:
        """Primitive -> numeric weight, e.g. {'decay': 1e-3, 'amp': 1e-3}."""
        return {p: self.values[letter] for p, letter in self.rule.terms.items()}


_RULES: dict[str, Rule] = {}


def register_rule(rule: Rule) -> Rule:
    if rule.name in _RULES:
        raise ValueError(f"rule {rule.name!r} is already registered")
    _RULES[rule.name] = rule
    return rule


def list_rules() -> list[str]:
    return sorted(_RULES)


def rule_declaration(name: str) -> Rule:
    try:
        return _RULES[name]
    except KeyError:
        raise ValueError(f"unknown rule {name!r}; valid rules: {', '.join(list_rules())}") from None


def get_rule(name: str, **metaparameters: float) -> ConfiguredRule:
    """The named rule bound to its defaults overridden by ``metaparameters``."""
    return rule_declaration(name).bind(**metaparameters)
