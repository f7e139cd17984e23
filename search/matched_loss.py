"""The generalisation gap and the loss curvature at matched training loss, not only at matched
epoch: rules that learn at different speeds are compared where they fit the training set
equally well (Liu et al., NeurIPS 2022, compare rules along training).

A run's history is its epoch records (``trainer.train``'s, with ``--curvature`` nested under
``curvature``, or a study's ``history`` rows, where the per-epoch measures are flat). Each
epoch that measured gives a point (training loss, gap, λ_max, ...); a run's value at a loss
level L is the linear interpolation between the two measured epochs where its training loss
first came down through L. A run that never reached L, or was already below it at its first
measurement, has no value there. Torch-free: it reads records only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

History = Sequence[Mapping[str, Any]]
LOSS_KEY = "train_loss_eval"  # the loss on the fixed training subset, eval mode
KEYS = ("generalization_gap", "loss_gap", "top_eigenvalue", "top_eigenvalue_recurrent")


def _value(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value is None and isinstance(record.get("curvature"), Mapping):
        value = record["curvature"].get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def points(history: History, key: str, loss_key: str = LOSS_KEY) -> list[tuple[float, float]]:
    """(training loss, ``key``) at every epoch that measured both, in training order."""
    out = []
    for record in history:
        loss, value = _value(record, loss_key), _value(record, key)
        if loss is not None and value is not None:
            out.append((loss, value))
    return out


def at_loss(curve: Sequence[tuple[float, float]], level: float) -> float | None:
    """The value where the training loss first came down through ``level``, linearly
    interpolated in the loss between the two measurements around it; None when it never did
    (or the first measurement is already below it)."""
    for (l0, v0), (l1, v1) in zip(curve, curve[1:]):
        if l0 >= level >= l1:
            return v0 if l0 == l1 else v0 + (level - l0) / (l1 - l0) * (v1 - v0)
    if curve and curve[0][0] == level:
        return curve[0][1]
    return None


def common_level(histories: Mapping[str, History], loss_key: str = LOSS_KEY) -> float | None:
    """The lowest training loss every run reached: the largest of the runs' lowest measured
    losses (None when a run measured nothing)."""
    lows = []
    for history in histories.values():
        losses = [v for r in history if (v := _value(r, loss_key)) is not None]
        if not losses:
            return None
        lows.append(min(losses))
    return max(lows) if lows else None


def covering_level(histories: Mapping[str, History], loss_key: str = LOSS_KEY
                   ) -> float | None:
    """Of the measured training losses, the one the most runs came down through (the lowest
    among equals): where runs that barely learned, or learned before their first
    measurement, leave no level common to all (None when nothing was measured)."""
    curves = [points(history, loss_key, loss_key) for history in histories.values()]
    candidates = sorted({loss for curve in curves for loss, _ in curve})
    best: tuple[int, float] | None = None
    for level in candidates:
        covered = sum(at_loss(curve, level) is not None for curve in curves)
        if best is None or covered > best[0]:
            best = (covered, level)
    return None if best is None else best[1]


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the ranks."""
    return pearson(ranks(x), ranks(y)) if len(x) == len(y) else None


@dataclass(frozen=True)
class Matched:
    """Every run's values at one training-loss level: ``values[run][key]`` (None where the
    run has none there)."""

    level: float
    values: dict[str, dict[str, float | None]]

    def pairs(self, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
        """The runs that have both values, as two aligned lists."""
        both = [(v[x_key], v[y_key]) for v in self.values.values()
                if v.get(x_key) is not None and v.get(y_key) is not None]
        return [a for a, _ in both], [b for _, b in both]  # type: ignore[misc]

    def correlation(self, x_key: str, y_key: str) -> dict[str, float | int | None]:
        """Pearson and Spearman correlation of two values across the runs, and how many
        runs had both."""
        x, y = self.pairs(x_key, y_key)
        return {"pearson": pearson(x, y), "spearman": spearman(x, y), "runs": len(x)}


def matched(histories: Mapping[str, History], level: float | None = None, *,
            keys: Sequence[str] = KEYS, loss_key: str = LOSS_KEY) -> Matched | None:
    """Every run's ``keys`` at the training loss ``level`` (default: ``common_level``, the
    lowest loss all runs reached); None when there is no common level."""
    if level is None:
        level = common_level(histories, loss_key)
        if level is None:
            return None
    return Matched(level, {run: {key: at_loss(points(history, key, loss_key), level)
                                 for key in keys}
                           for run, history in histories.items()})


def matched_levels(histories: Mapping[str, History], levels: Sequence[float], *,
                   keys: Sequence[str] = KEYS, loss_key: str = LOSS_KEY) -> list[Matched]:
    """``matched`` at each of ``levels``."""
    return [m for level in levels
            if (m := matched(histories, level, keys=keys, loss_key=loss_key)) is not None]
