"""The Ray Tune function trainable: a sampled setting trained on its architecture, or on each of
several in turn (a transfer-aware sweep's trial), reported every epoch.

A trial of one architecture is the one-element case of a trial over several: the same loop,
checkpoints and reports, without the rows that mark one architecture finished and the
objective over them (``search.across_trial`` holds that bookkeeping)."""

from __future__ import annotations

import json
from typing import Any

from catalogue.errors import UsageError
from search.across_trial import (ArchCheckpointer, Progress, across_final, arch_row,
                                 objective_so_far)
from search.records import flat_metrics
from search.scores import best_score, score_of, task_of_dataset
from search.searchers import METRIC
from search.trial_io import (CONFIG_KEY, TuneCheckpointer, placement,
                             report_invalid, split_sampled, trial_device)


def run_trial(sampled: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
              threads: int, checkpoint_every: int = 0, restore_from: str | None = None,
              archs: list[str] | None = None, objective: str = "mean",
              arch_epochs: dict[str, int] | None = None) -> None:
    """Train ``base`` + fixed + sampled values on each of ``archs`` in turn (by default the
    one architecture of ``base``), those of ``arch_epochs`` only for the first epochs of the
    run; report each epoch, then the outcome.

    The reported value (``METRIC``) is the objective over the architectures of their best
    score so far (the task's: validation top-1, or R^2; ``search.scores``), a diverged one
    counting 0: what TPE and ASHA maximise. With one architecture it is that run's best
    score (0 until it has one), and its last epoch completes the trial; a
    diverged run reports once more with its reason instead of raising, so the trial ends
    normally and is recorded as FAIL with that reason. With several, each finished one sends
    a row that says so, and a last report carries the objective over all of them
    (``search.across_trial``). With ``checkpoint_every`` a retried trial goes on from its last
    checkpoint (a continued one, from ``restore_from``); its first report then carries the
    epochs it restored (``restored_json``), so that the study holds every epoch exactly once.
    """
    import ray
    import torch
    from ray import tune

    import trainer

    archs = list(archs or [base["arch"]])
    several = len(archs) > 1
    torch.set_num_threads(max(1, threads))
    meta, knobs = split_sampled(base["rule"], {**fixed, **sampled})
    device = trial_device(base.get("device", "auto"), ray.get_gpu_ids())
    where = placement(device)
    outer = TuneCheckpointer(checkpoint_every, restore_from)
    state = outer.restore() if checkpoint_every > 0 or restore_from else None
    progress = Progress.of(state)
    epochs = int(base["epochs"])
    task = task_of_dataset(base.get("dataset", trainer.TrainConfig.dataset))
    current_rows: list[dict[str, Any]] = []  # the current architecture's epochs
    unreported: list[dict[str, Any]] = []  # restored rows, sent once with the next report
    if state is not None and progress.index < len(archs):
        current_rows = [arch_row(flat_metrics(r), archs[progress.index], progress.index,
                                 epochs) for r in (state.get("history") or [])]
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

    result = None
    for index in range(progress.index, len(archs)):
        arch = archs[index]
        restored = state if index == progress.index else None
        best = best_score((restored or {}).get("history") or [])
        shortened = {"stop_after_epochs": arch_epochs[arch]} if arch in (arch_epochs or {}) else {}
        try:
            config = trainer.TrainConfig.from_dict(
                {**base, **knobs, **shortened, "arch": arch, "device": device,
                 "metaparameters": {**base.get("metaparameters", {}), **meta}})
        except UsageError as exc:
            report_invalid(exc, where, task.floor)
            return
        ran = json.dumps(config.to_dict(), default=str)  # what the study records it ran

        def report(record: dict[str, Any], arch: str = arch, index: int = index) -> None:
            nonlocal best
            score = score_of(record)
            if score is not None and (best is None or score > best):
                best = score
            row = arch_row(flat_metrics(record), arch, index, epochs)
            if not several and record["epoch"] == config.epochs_run():
                row["status"] = "completed"  # one architecture: its last epoch ends the trial
            current_rows.append(row)
            send({**row, METRIC: objective_so_far(objective, archs, progress, arch, best,
                                                  task.floor),
                  CONFIG_KEY: ran})

        try:
            result = trainer.train(config, callback=report,
                                   checkpointer=ArchCheckpointer(outer, progress, restored))
        except UsageError as exc:  # the data or this architecture refused the setting
            report_invalid(exc, where, task.floor)
            return
        reason = result.reason if result.status == "diverged" else None
        progress.finished[arch] = {"score": task.floor if reason or best is None else best,
                                   "reason": reason}
        wall += result.wall_time
        if not several:
            break
        done = {"status": "running", "arch": arch, "arch_index": index, "arch_done": True,
                "arch_count": len(archs),
                "arch_score": progress.finished[arch]["score"], "arch_reason": reason or "",
                "wall_time": result.wall_time}
        progress.rows += [*current_rows, done]
        current_rows = []
        progress.index = index + 1
        if checkpoint_every > 0 and progress.index < len(archs):
            outer.save(progress.as_state())  # between architectures: a finished one is kept
        send({**done, METRIC: objective_so_far(objective, archs, progress, arch, None,
                                               task.floor)})

    if not several:
        if result is not None and result.status == "diverged":
            send({METRIC: task.floor, "status": "diverged", "reason": result.reason,
                  "epoch": len(result.history) + 1, CONFIG_KEY: ran,
                  "wall_time": result.wall_time})
        return
    send(across_final(objective, archs, progress, wall, task))


def continue_trial(config: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
                   threads: int, checkpoint_every: int = 0, archs: list[str] | None = None,
                   objective: str = "mean", arch_epochs: dict[str, int] | None = None) -> None:
    """A trial of a dead driver, continued from its checkpoint (``search.continuing``)."""
    run = config["run"]
    run_trial(run["sampled"], base, fixed, threads, checkpoint_every, run["restore"], archs,
              objective, arch_epochs)
