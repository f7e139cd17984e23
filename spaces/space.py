"""Search-space declarations and their conversions to Ray Tune, hyperopt and Optuna.

A ``SearchSpace`` is the single source of truth for a sweep: the tuned parameters with bounds
and scale, and the fixed values. The three converters read only it, and the tests check that
they agree. Nothing here imports torch, so the CLI can validate a space before loading anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from catalogue.errors import UsageError


class SpaceError(UsageError):
    """A malformed space or override: the CLI prints it as one line and exits with code 2."""


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float
    log: bool = True
    integer: bool = False  # sampled as whole numbers (batch size, subset sizes)

    def __post_init__(self) -> None:
        for bound in (self.low, self.high):
            if not isinstance(bound, (int, float)) or not math.isfinite(bound):
                raise SpaceError(f"{self.name}: bounds must be finite numbers")
            if self.integer and bound != int(bound):
                raise SpaceError(f"{self.name}: an integer parameter needs whole-number "
                                 f"bounds, got {bound:g}")
        if self.low >= self.high:
            raise SpaceError(f"{self.name}: low {self.low:g} must be below high {self.high:g}")
        if self.log and self.low <= 0:
            raise SpaceError(f"{self.name}: a log scale needs positive bounds, got "
                             f"{self.low:g}:{self.high:g}")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high and (not self.integer or value == int(value))

    def describe(self) -> str:
        return (f"{self.low:g}:{self.high:g}:{'log' if self.log else 'linear'}"
                + (":int" if self.integer else ""))


@dataclass(frozen=True)
class Choice:
    """A categorical dimension: one of a few named values (the noise distribution)."""

    name: str
    choices: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise SpaceError(f"{self.name}: a choice needs at least two values, got "
                             f"{','.join(self.choices) or 'none'}")
        if len(set(self.choices)) != len(self.choices):
            raise SpaceError(f"{self.name}: a value is listed twice in {','.join(self.choices)}")

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def index(self, value: str) -> int:
        return self.choices.index(value)

    def describe(self) -> str:
        return "|".join(self.choices)


Dimension = Param | Choice
Fixed = float | str  # a held number, or a held choice


@dataclass(frozen=True)
class SearchSpace:
    """Tuned parameters and fixed values for one rule; ``known`` names what may be set."""

    rule: str
    params: Mapping[str, Dimension]
    fixed: Mapping[str, Fixed] = field(default_factory=dict)
    known: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        overlap = set(self.params) & set(self.fixed)
        if overlap:
            raise SpaceError(f"{', '.join(sorted(overlap))} cannot be both tuned and fixed")
        unknown = (set(self.params) | set(self.fixed)) - set(self.known)
        if unknown:
            raise SpaceError(f"unknown parameter(s) {', '.join(sorted(unknown))} for rule "
                             f"{self.rule!r}; valid: {', '.join(self.known)}")

    # --- overriding ------------------------------------------------------------------------

    def with_param(self, param: Dimension) -> "SearchSpace":
        fixed = {k: v for k, v in self.fixed.items() if k != param.name}
        return replace(self, params={**self.params, param.name: param}, fixed=fixed)

    def with_fixed(self, name: str, value: Fixed) -> "SearchSpace":
        if not isinstance(value, str) and not math.isfinite(value):
            raise SpaceError(f"--fix {name}: value must be finite")
        params = {k: v for k, v in self.params.items() if k != name}
        return replace(self, params=params, fixed={**self.fixed, name: value})

    def contains(self, point: Mapping[str, float]) -> bool:
        return set(point) == set(self.params) and all(
            self.params[k].contains(v) for k, v in point.items())

    # --- conversions -------------------------------------------------------------------------

    def to_ray(self) -> dict[str, Any]:
        from ray import tune

        def domain(p: Dimension) -> Any:
            if isinstance(p, Choice):
                return tune.choice(list(p.choices))
            if p.integer:  # Ray's integer upper bounds are exclusive
                return (tune.lograndint if p.log else tune.randint)(int(p.low), int(p.high) + 1)
            return (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
        return {name: domain(p) for name, p in self.params.items()}

    def to_hyperopt(self) -> dict[str, Any]:
        from hyperopt import hp

        def domain(p: Dimension) -> Any:
            if isinstance(p, Choice):  # hyperopt's own trials hold the index, not the value
                return hp.choice(p.name, list(p.choices))
            if p.integer:  # rounded to whole numbers (hyperopt returns them as floats)
                return (hp.qloguniform(p.name, math.log(p.low), math.log(p.high), 1) if p.log
                        else hp.quniform(p.name, p.low, p.high, 1))
            return (hp.loguniform(p.name, math.log(p.low), math.log(p.high)) if p.log
                    else hp.uniform(p.name, p.low, p.high))
        return {name: domain(p) for name, p in self.params.items()}

    def to_optuna(self) -> dict[str, Any]:
        from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                          IntDistribution)

        def distribution(p: Dimension) -> Any:
            if isinstance(p, Choice):
                return CategoricalDistribution(list(p.choices))
            if p.integer:
                return IntDistribution(int(p.low), int(p.high), log=p.log)
            return FloatDistribution(p.low, p.high, log=p.log)
        return {name: distribution(p) for name, p in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        def entry(p: Dimension) -> dict[str, Any]:
            if isinstance(p, Choice):
                return {"choices": list(p.choices)}
            return {"low": p.low, "high": p.high, "log": p.log,
                    **({"integer": True} if p.integer else {})}
        return {"rule": self.rule, "params": {n: entry(p) for n, p in self.params.items()},
                "fixed": dict(self.fixed)}

    def describe(self) -> str:
        tuned = [f"{n}={p.describe()}" for n, p in self.params.items()]
        fixed = [f"{n}={v if isinstance(v, str) else format(v, 'g')} (fixed)"
                 for n, v in self.fixed.items()]
        return ", ".join(tuned + fixed) or "(nothing to tune)"
