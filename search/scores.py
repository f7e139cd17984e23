"""The score a search maximizes: the task's (``catalogue.tasks.Task.score``), which every
epoch record carries as ``val_score`` (validation top-1 for classification, R^2 for
regression). Records stored before the task's score was recorded carry only ``val_top1``:
they read as that, so that old studies rank and report exactly as they did.

Torch- and Ray-free: queries and reports read stored records with it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from catalogue.tasks import TASKS, Task, get_task

SCORE = "val_score"  # an epoch record's score: record[task.score]
LEGACY_SCORE = "val_top1"  # what a record from before val_score was scored by
BY_ARCH = "val_score_by_arch"  # a trial over several architectures: each one's best score
LEGACY_BY_ARCH = "val_top1_by_arch"  # kept for classification studies (users query it)


def score_of(record: Mapping[str, Any]) -> float | None:
    """The epoch's score (``val_score``, else ``val_top1``); None when it has no finite one."""
    value = record.get(SCORE, record.get(LEGACY_SCORE))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def has_score(record: Mapping[str, Any]) -> bool:
    """Whether the record is an evaluated epoch (its score may be NaN: R^2 of a constant)."""
    return SCORE in record or LEGACY_SCORE in record


def best_score(records: Iterable[Mapping[str, Any]]) -> float | None:
    """The best finite score among the records; None when none has one."""
    values = [v for v in (score_of(r) for r in records) if v is not None]
    return max(values) if values else None


def task_of_record(record: Mapping[str, Any]) -> Task:
    """The task an epoch record was scored for: the one whose score field it holds."""
    for _, task in TASKS.items():
        if task.score in record:
            return task
    return get_task("classification")


def task_of_dataset(name: str | None) -> Task:
    """A dataset's task; one creditsweep does not know (or none) is a classification."""
    from trainer.datasets.base import DATASETS  # numpy only: no torch

    if isinstance(name, str) and name in DATASETS:
        return get_task(DATASETS.get(name).task)
    return get_task("classification")


def scores_by_arch(attrs: Mapping[str, Any]) -> dict[str, float]:
    """A trial's best score per architecture (a transfer-aware sweep's), under either name."""
    return dict(attrs.get(BY_ARCH) or attrs.get(LEGACY_BY_ARCH) or {})


def by_arch_attrs(scores: Mapping[str, float], task: Task) -> dict[str, Any]:
    """The attributes a trial keeps of its per-architecture scores: the neutral name, and for
    classification the old one too."""
    attrs: dict[str, Any] = {BY_ARCH: dict(scores)}
    if task.score == LEGACY_SCORE:
        attrs[LEGACY_BY_ARCH] = dict(scores)
    return attrs


def axis_label(task: Task) -> str:
    """The score named on a figure's axis: "validation top-1 (fraction)", "validation R^2"."""
    if task.score == LEGACY_SCORE:
        return "validation top-1 (fraction)"
    return task.score_label.replace("val ", "validation ", 1)
