"""The bookkeeping of a trial over several architectures (a transfer-aware sweep's): the loop
itself is ``search.trainable.run_trial``, whose one-architecture trial is the case of one.

Every architecture gets the trial's Ray resources in turn, and its epochs are reported as they
come (each row names its architecture and its position ``epoch_overall`` among all the trial's
epochs). When an architecture ends, one row says so (its best score, the task's: top-1 or R^2,
or why it diverged), and
the last report carries the objective over all of them: what the searcher maximises. A diverged
architecture counts the task's floor (0 for top-1, -1 for R^2); the trial fails only when every
architecture diverged.

Checkpoints carry, besides the current architecture's training state, which architectures are
done and their rows, so that a retried or continued trial goes on from the architecture and
epoch it was at; one more is written between architectures, so a finished one never reruns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from catalogue.tasks import Task
from search.objectives import score
from search.scores import by_arch_attrs
from search.searchers import METRIC
from search.trial_io import ACROSS, TuneCheckpointer


@dataclass
class Progress:
    """How far a trial is: the index of its current architecture, what the finished ones
    scored (``score``, ``reason`` when diverged) and the rows they reported (the current
    architecture's epochs are in its own training state)."""

    index: int = 0
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> "Progress":
        across = (state or {}).get(ACROSS)
        if not across:
            return cls()
        finished = {a: {"score": r.get("score", r.get("top1")), "reason": r.get("reason")}
                    for a, r in across["finished"].items()}  # "top1": saved before scores
        return cls(int(across["index"]), finished, list(across["rows"]))

    def as_state(self) -> dict[str, Any]:
        return {ACROSS: {"index": self.index, "finished": self.finished, "rows": self.rows}}


class ArchCheckpointer:
    """The trial's checkpointer as one architecture's run sees it: it saves that run's state
    with the trial's progress, and restores only a state saved during this architecture."""

    def __init__(self, outer: TuneCheckpointer, progress: Progress,
                 restored: dict[str, Any] | None) -> None:
        self.outer, self.progress, self.restored_state = outer, progress, restored
        self.every = outer.every

    def restore(self) -> dict[str, Any] | None:
        state, self.restored_state = self.restored_state, None
        return state if state is not None and "model" in state else None

    def save(self, state: dict[str, Any]) -> None:
        self.outer.save({**state, **self.progress.as_state()})


def objective_so_far(objective: str, archs: list[str], progress: Progress, arch: str,
                     best: float | None, floor: float = 0.0) -> float:
    """The objective with the architectures not yet trained at the task's ``floor`` (0 for
    top-1): a lower bound for mean (``guard`` stays at the floor until every architecture
    has ended). No score below the floor is told."""
    values = {a: max(r["score"], floor) for a, r in progress.finished.items()}
    values[arch] = max(values.get(arch, floor), floor if best is None else best)
    return score(objective, [values.get(a, floor) for a in archs], floor)


def across_summary(objective: str, archs: list[str], finished: dict[str, dict[str, Any]],
                   task: Task) -> dict[str, Any]:
    """What the trial records: the objective, each architecture's best score (under the
    name ``search.scores`` gives it), the diverged ones."""
    scores = {a: float(finished[a]["score"]) for a in archs}
    diverged = {a: finished[a]["reason"] for a in archs if finished[a].get("reason")}
    return {"objective": objective, "archs": archs,
            "value": score(objective, list(scores.values()), task.floor),
            **by_arch_attrs(scores, task),
            "diverged_archs": diverged}


def across_final(objective: str, archs: list[str], progress: Progress, wall: float,
                 task: Task) -> dict[str, Any]:
    """The trial's last report: the objective over its architectures (0 and diverged when
    every one diverged), and the summary the study keeps."""
    summary = across_summary(objective, archs, progress.finished, task)
    every_one_diverged = len(summary["diverged_archs"]) == len(archs)
    final = {METRIC: task.floor if every_one_diverged else max(summary["value"], task.floor),
             "status": "diverged" if every_one_diverged else "completed",
             "across_json": json.dumps(summary), "wall_time": wall}
    if every_one_diverged:
        final["reason"] = "every architecture diverged: " + "; ".join(
            f"{a}: {r}" for a, r in summary["diverged_archs"].items())
    return final


def arch_row(metrics: dict[str, Any], arch: str | None, index: int, epochs: int) -> dict[str, Any]:
    """An epoch's report as the trial sends it: which architecture, and where overall."""
    return {**metrics, "status": "running", "arch": arch, "arch_index": index,
            "epoch_overall": index * epochs + int(metrics["epoch"])}
