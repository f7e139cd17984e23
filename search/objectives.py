"""How a transfer-aware sweep scores one setting trained on several architectures.

Each architecture contributes its best validation top-1 (the task's floor, 0 for top-1, for one
that diverged: a setting that blows up on a depth is no setting for that depth). The objective
turns those numbers, in the sweep's architecture order, into the one value the searcher
maximises; each says in its help what it rewards.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from catalogue.registry import Registry


@dataclass(frozen=True)
class Objective:
    name: str
    help: str
    score: Callable[[Sequence[float], float], float]  # (values in --arch order, the floor)


OBJECTIVES: Registry[Objective] = Registry("objective")


def _register(name: str, help: str, score: Callable[[Sequence[float], float], float]) -> None:
    OBJECTIVES.register(name, Objective(name, help, score))


def _guard(values: Sequence[float], floor: float) -> float:
    return floor if any(v <= floor for v in values[1:]) else values[0]


_register("mean", "the mean top-1 over the architectures", lambda v, _: statistics.fmean(v))
_register("min", "the worst architecture's top-1: a setting is as good as its weakest depth",
          lambda v, _: min(v))
_register("gap", "the mean minus the spread (best minus worst top-1): rewards settings that "
                 "do equally well on every depth",
          lambda v, _: statistics.fmean(v) - (max(v) - min(v)))
_register("guard", "the first architecture's top-1, or the floor (0) where any other diverged: the "
                   "others (a deep net's short probe, --arch-epochs) only veto", _guard)

DEFAULT_OBJECTIVE = "mean"


def score(objective: str, top1: Sequence[float], floor: float = 0.0) -> float:
    """The objective of per-architecture top-1 values in --arch order (diverged ones already
    at the task's ``floor``)."""
    if not top1:
        raise ValueError("an objective needs at least one architecture's top-1")
    return float(OBJECTIVES.get(objective).score(list(top1), floor))


def objectives_help() -> str:
    return "; ".join(f"{o.name}: {o.help}" for _, o in OBJECTIVES.items())


def multi_arch_name(archs: Sequence[str]) -> str:
    """The architecture set as a study names it: resnet8+resnet20."""
    return "+".join(archs)
