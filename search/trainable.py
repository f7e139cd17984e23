"""The Ray Tune function trainable: one ``trainer.train`` run, reported every epoch."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

from catalogue.rule import rule_declaration
from catalogue.training import coerce_option
from search.searchers import METRIC


def split_sampled(rule: str, sampled: dict[str, Any]) -> tuple[dict[str, float],
                                                               dict[str, Any]]:
    """(rule metaparameters, training options) of one sampled config; a categorical option
    (the noise distribution) stays the name it is."""
    names = rule_declaration(rule).defaults
    meta = {k: float(v) for k, v in sampled.items() if k in names}
    return meta, {k: v if isinstance(v, str) else coerce_option(k, float(v))
                  for k, v in sampled.items() if k not in names}


def trial_device(requested: str, gpu_ids: list) -> str:
    """The device a trial trains on: the GPU Ray assigned it, else the CPU.

    Ray narrows CUDA_VISIBLE_DEVICES to the trial's GPU, so "cuda" is that GPU (a fraction of a
    GPU is still one device). A trial that reserved no GPU stays on the CPU even on a GPU node,
    so trials never use a GPU they did not reserve. An explicit device is kept.
    """
    if requested != "auto":
        return requested
    return "cuda" if gpu_ids else "cpu"


class TuneCheckpointer:
    """Checkpoints through Ray Tune's checkpoint API, so that they live in the run's storage
    path (a shared folder or a bucket on a cluster) and Tune hands the last one to a retried
    trial. ``save`` writes the state to a scratch folder; the next report carries it."""

    def __init__(self, every: int, restore_from: str | None = None) -> None:
        self.every, self.restore_from = every, restore_from
        self.pending: str | None = None
        self.restored: list[dict[str, Any]] = []  # the history a restore brought back

    def restore(self) -> dict[str, Any] | None:
        from ray import tune

        from trainer.checkpoint import read

        # Tune's own (this trial was retried) before the one a continuation started from.
        found = tune.get_checkpoint()
        if found is None and self.restore_from:
            found = tune.Checkpoint(self.restore_from)  # a folder or a bucket URI
        if found is None:
            return None
        with found.as_directory() as folder:
            state = read(folder)
        if state is not None:  # the one between architectures has no history of its own
            self.restored = list(state.get("history") or [])
        return state

    def save(self, state: dict[str, Any]) -> None:
        from trainer.checkpoint import write

        self.pending = tempfile.mkdtemp(prefix="creditsweep-checkpoint-")
        write(state, self.pending)

    def take(self) -> Any:
        """The pending checkpoint for this report (None when none is due)."""
        from ray.tune import Checkpoint

        return None if self.pending is None else Checkpoint.from_directory(self.pending)

    def reported(self) -> None:
        if self.pending is not None:  # Tune copied it into the storage path during report
            shutil.rmtree(self.pending, ignore_errors=True)
            self.pending = None


NESTED = ("diagnostics", "feedback_plan", "curvature")  # Tune's metrics are flat: these go as JSON


def flat_metrics(record: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in record.items() if k not in NESTED}
    for key in NESTED:
        if key in record:
            metrics[f"{key}_json"] = json.dumps(record[key])
    return metrics


def run_trial(sampled: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
              threads: int, checkpoint_every: int = 0, restore_from: str | None = None,
              archs: list[str] | None = None, objective: str = "mean") -> None:
    """Train with ``base`` + fixed + sampled values; report each epoch, then the outcome.

    ``objective`` is the best validation top-1 so far (0.0 once diverged): what TPE and ASHA
    maximise. A diverged run reports once more with its reason instead of raising, so the
    trial ends normally and is recorded as FAIL with that reason. With ``checkpoint_every`` a
    retried trial goes on from its last checkpoint (a continued one, from ``restore_from``);
    its first report then carries the epochs it restored (``restored_json``), so that the
    study holds every epoch exactly once. With several ``archs``, the trial trains on each in
    turn and reports ``objective`` over them (``search.across_trial``).
    """
    if archs and len(archs) > 1:
        from search.across_trial import run_across

        run_across(sampled, base, fixed, threads, archs, objective, checkpoint_every,
                   restore_from)
        return
    import ray
    import torch
    from ray import tune

    import trainer

    torch.set_num_threads(max(1, threads))
    meta, knobs = split_sampled(base["rule"], {**fixed, **sampled})
    device = trial_device(base.get("device", "auto"), ray.get_gpu_ids())
    config = trainer.TrainConfig.from_dict({**base, **knobs, "device": device,
                                            "metaparameters": {**base.get("metaparameters", {}),
                                                               **meta}})
    # Where the trial ran, kept with it: the node, and the device and GPUs Ray gave it (how
    # fractional trials were packed can be read back from the study).
    where = {"node_ip": ray.util.get_node_ip_address(),
             "node_id": ray.get_runtime_context().get_node_id(), "device": device,
             "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}
    checkpointer = (TuneCheckpointer(checkpoint_every, restore_from)
                    if checkpoint_every > 0 or restore_from else None)
    best = 0.0

    def restored_epochs() -> dict[str, Any]:
        """Once, in the first report after a restore: the epochs the checkpoint held."""
        nonlocal best
        if checkpointer is None or not checkpointer.restored:
            return {}
        earlier, checkpointer.restored = checkpointer.restored, []
        best = max([best, *(r["val_top1"] for r in earlier)])
        return {"restored_from_epoch": len(earlier), "restored_json": json.dumps(
            [{**flat_metrics(r), "status": "running"} for r in earlier])}

    def report(record: dict[str, Any]) -> None:
        nonlocal best
        extra = restored_epochs()
        best = max(best, record["val_top1"])
        status = "completed" if record["epoch"] == config.epochs else "running"
        tune.report({**flat_metrics(record), METRIC: best, "status": status, **where, **extra},
                    checkpoint=checkpointer.take() if checkpointer else None)
        if checkpointer is not None:
            checkpointer.reported()

    result = trainer.train(config, callback=report, checkpointer=checkpointer)
    if result.status == "diverged":
        tune.report({METRIC: 0.0, "status": "diverged", "reason": result.reason,
                     "epoch": len(result.history) + 1, **where, **restored_epochs(),
                     "wall_time": result.wall_time})


def continue_trial(config: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
                   threads: int, checkpoint_every: int = 0, archs: list[str] | None = None,
                   objective: str = "mean") -> None:
    """A trial of a dead driver, continued from its checkpoint (``search.continuing``)."""
    run = config["run"]
    run_trial(run["sampled"], base, fixed, threads, checkpoint_every, run["restore"], archs,
              objective)
