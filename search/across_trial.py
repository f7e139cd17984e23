"""One trial of a transfer-aware sweep: the sampled setting trained on each architecture in turn.

Every architecture gets the trial's Ray resources in turn, and its epochs are reported as they
come (each row names its architecture and its position ``epoch_overall`` among all the trial's
epochs). When an architecture ends, one row says so (its best top-1, or why it diverged), and
the last report carries the objective over all of them: what the searcher maximises. A diverged
architecture counts 0; the trial fails only when every architecture diverged.

Checkpoints carry, besides the current architecture's training state, which architectures are
done and their rows, so that a retried or continued trial goes on from the architecture and
epoch it was at; one more is written between architectures, so a finished one never reruns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from catalogue.errors import UsageError
from search.objectives import score
from search.searchers import METRIC
from search.trainable import (CONFIG_KEY, TuneCheckpointer, flat_metrics, placement,
                              report_invalid, split_sampled, trial_device)

ACROSS = "across"  # the checkpoint key of the trial's progress over its architectures


@dataclass
class Progress:
    """How far a trial is: the index of its current architecture, what the finished ones
    scored (``top1``, ``reason`` when diverged) and the rows they reported (the current
    architecture's epochs are in its own training state)."""

    index: int = 0
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> "Progress":
        across = (state or {}).get(ACROSS)
        if not across:
            return cls()
        return cls(int(across["index"]), dict(across["finished"]), list(across["rows"]))

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
                     best: float) -> float:
    """The objective with the architectures not yet trained at 0: a lower bound for mean."""
    values = {a: r["top1"] for a, r in progress.finished.items()}
    values[arch] = max(values.get(arch, 0.0), best)
    return score(objective, [values.get(a, 0.0) for a in archs])


def across_summary(objective: str, archs: list[str], finished: dict[str, dict[str, Any]]
                   ) -> dict[str, Any]:
    """What the trial records: the objective, each architecture's top-1, the diverged ones."""
    top1 = {a: float(finished[a]["top1"]) for a in archs}
    diverged = {a: finished[a]["reason"] for a in archs if finished[a].get("reason")}
    return {"objective": objective, "archs": archs, "value": score(objective, list(top1.values())),
            "val_top1_by_arch": top1, "diverged_archs": diverged}


def run_across(sampled: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
               threads: int, archs: list[str], objective: str, checkpoint_every: int = 0,
               restore_from: str | None = None) -> None:
    """Train ``base`` + fixed + sampled on each of ``archs``; report as the module says."""
    import ray
    import torch
    from ray import tune

    import trainer

    torch.set_num_threads(max(1, threads))
    meta, knobs = split_sampled(base["rule"], {**fixed, **sampled})
    device = trial_device(base.get("device", "auto"), ray.get_gpu_ids())
    where = placement(device)
    outer = TuneCheckpointer(checkpoint_every, restore_from)
    state = outer.restore() if checkpoint_every > 0 or restore_from else None
    progress = Progress.of(state)
    epochs = int(base["epochs"])
    current_rows: list[dict[str, Any]] = []  # the current architecture's epochs
    unreported: list[dict[str, Any]] = []  # restored rows, sent once with the next report
    if state is not None and progress.index < len(archs):
        current_rows = [_row(flat_metrics(r), archs[progress.index], progress.index, epochs)
                        for r in (state.get("history") or [])]
        unreported = progress.rows + current_rows
    wall = sum(r.get("wall_time", 0.0) for r in progress.rows if r.get("arch_done"))

    def send(row: dict[str, Any]) -> None:
        nonlocal unreported
        extra = outer.notice()  # once: why a checkpoint was passed over
        if unreported:
            extra.update(restored_from_epoch=len(unreported),
                         restored_json=json.dumps(unreported))
            unreported = []
        tune.report({**row, **where, **extra}, checkpoint=outer.take())
        outer.reported()

    for index in range(progress.index, len(archs)):
        arch = archs[index]
        restored = state if index == progress.index else None
        best = max([0.0, *(r["val_top1"] for r in ((restored or {}).get("history") or []))])
        try:
            config = trainer.TrainConfig.from_dict(
                {**base, **knobs, "arch": arch, "device": device,
                 "metaparameters": {**base.get("metaparameters", {}), **meta}})
        except UsageError as exc:
            report_invalid(exc, where)
            return

        def report(record: dict[str, Any], arch: str = arch, index: int = index) -> None:
            nonlocal best
            best = max(best, record["val_top1"])
            row = _row(flat_metrics(record), arch, index, epochs)
            current_rows.append(row)
            send({**row, METRIC: objective_so_far(objective, archs, progress, arch, best),
                  CONFIG_KEY: json.dumps(config.to_dict(), default=str)})

        try:
            result = trainer.train(config, callback=report,
                                   checkpointer=ArchCheckpointer(outer, progress, restored))
        except UsageError as exc:  # the data or this architecture refused the setting
            report_invalid(exc, where)
            return
        reason = result.reason if result.status == "diverged" else None
        progress.finished[arch] = {"top1": 0.0 if reason else best, "reason": reason}
        wall += result.wall_time
        done = {"status": "running", "arch": arch, "arch_index": index, "arch_done": True,
                "arch_count": len(archs),
                "arch_top1": progress.finished[arch]["top1"], "arch_reason": reason or "",
                "wall_time": result.wall_time}
        progress.rows += [*current_rows, done]
        current_rows = []
        progress.index = index + 1
        if checkpoint_every > 0 and progress.index < len(archs):
            outer.save(progress.as_state())  # between architectures: a finished one is kept
        send({**done, METRIC: objective_so_far(objective, archs, progress, arch, 0.0)})

    summary = across_summary(objective, archs, progress.finished)
    every_one_diverged = len(summary["diverged_archs"]) == len(archs)
    final = {METRIC: 0.0 if every_one_diverged else summary["value"],
             "status": "diverged" if every_one_diverged else "completed",
             "across_json": json.dumps(summary), "wall_time": wall}
    if every_one_diverged:
        final["reason"] = "every architecture diverged: " + "; ".join(
            f"{a}: {r}" for a, r in summary["diverged_archs"].items())
    send(final)


def _row(metrics: dict[str, Any], arch: str | None, index: int, epochs: int) -> dict[str, Any]:
    """An epoch's report as the trial sends it: which architecture, and where overall."""
    return {**metrics, "status": "running", "arch": arch, "arch_index": index,
            "epoch_overall": index * epochs + int(metrics["epoch"])}
