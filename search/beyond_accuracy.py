"""What ``--curvature`` recorded, summarised over a group of runs (a rule's seeds on one
depth, at one noise level): the true loss's top Hessian eigenvalue and the generalisation gap,
mean and spread over the completed runs that measured them."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

from optuna.trial import FrozenTrial, TrialState

from search.records import over_seeds

# The measures a group of runs is summarised by (``search.records``: those ``over_seeds``).
MEASURES = tuple(m.name for m in over_seeds())
LABELS = {m.name: m.label for m in over_seeds()}
HEADERS = {m.name: m.header for m in over_seeds()}


def measured(trials: Iterable[FrozenTrial], key: str) -> list[float]:
    """``key`` of every completed run that measured it (a diverged run measured nothing)."""
    values = [t.user_attrs.get(key) for t in trials if t.state == TrialState.COMPLETE]
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def summary(trials: list[FrozenTrial]) -> dict[str, Any]:
    """{measure: mean, measure_std: spread, measure_runs: how many measured} per measure;
    mean and spread are None where no run measured it."""
    out: dict[str, Any] = {}
    for key in MEASURES:
        values = measured(trials, key)
        out[key] = statistics.fmean(values) if values else None
        out[f"{key}_std"] = (statistics.stdev(values) if len(values) > 1 else 0.0) \
            if values else None
        out[f"{key}_runs"] = len(values)
    return out


def any_measured(rows: Iterable[dict[str, Any]], prefixes: tuple[str, ...] = ("",)) -> bool:
    return any(row.get(f"{p}{key}") is not None for row in rows for p in prefixes
               for key in MEASURES)



def significant(value: Any) -> str:
    """A measurement for a table: 3 significant digits, '-' when there is none."""
    return "-" if value is None else f"{value:.3g}"
