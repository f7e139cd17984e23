"""The Ray Tune function trainable: one ``trainer.train`` run, reported every epoch."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

from catalogue.errors import UsageError
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
    trial. ``save`` writes the state to a scratch folder; the next report carries it.

    A checkpoint that cannot be read does not end the trial: it goes on from the earlier one a
    continuation started from, if any, else from scratch, and says so twice: a line on the
    worker's stderr, and ``checkpoint_discarded`` in its next report (``notice``), which the
    study keeps. Tune keeps one checkpoint per trial, so a retried trial restarts."""

    def __init__(self, every: int, restore_from: str | None = None) -> None:
        self.every, self.restore_from = every, restore_from
        self.pending: str | None = None
        self.restored: list[dict[str, Any]] = []  # the history a restore brought back
        self.discarded: str | None = None  # why checkpoints were passed over, until reported

    def restore(self) -> dict[str, Any] | None:
        from ray import tune

        # Tune's own (this trial was retried) before the one a continuation started from.
        found = [tune.get_checkpoint()]
        if self.restore_from:
            found.append(tune.Checkpoint(self.restore_from))  # a folder or a bucket URI
        problems: list[str] = []
        for checkpoint in (c for c in found if c is not None):
            state, problem = self._load(checkpoint)
            if problem is None:
                self._discard(problems, f"going on from {checkpoint.path}")
                # the one between architectures has no history of its own
                self.restored = list(state.get("history") or [])
                return state
            problems.append(f"{checkpoint.path} ({problem})")
        self._discard(problems, "restarting the trial from scratch")
        return None

    @classmethod
    def _load(cls, checkpoint: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(the checkpoint's state, None), or (None, why it cannot be used)."""
        from trainer.checkpoint import CheckpointUnreadable, read

        with checkpoint.as_directory() as folder:
            try:
                state = read(folder, check=cls._trial_state_problem)
            except CheckpointUnreadable as exc:
                return None, exc.problem
        return (None, "it holds no state") if state is None else (state, None)

    @staticmethod
    def _trial_state_problem(state: dict[str, Any]) -> str | None:
        """A run's state, or (between architectures) a trial's progress and nothing else."""
        from search.across_trial import ACROSS
        from trainer.checkpoint import state_problem

        return None if ACROSS in state and "model" not in state else state_problem(state)

    def _discard(self, problems: list[str], then: str) -> None:
        """Say which checkpoints were passed over and what the trial does instead: on stderr
        now, in the next report through ``notice``."""
        if not problems:
            return
        import sys

        self.discarded = f"checkpoint {', '.join(problems)} cannot be read; {then}"
        print(f"creditsweep: {self.discarded}", file=sys.stderr, flush=True)

    def notice(self) -> dict[str, Any]:
        """Once, for the next report: why a checkpoint was discarded ({} when none was)."""
        if self.discarded is None:
            return {}
        note, self.discarded = self.discarded, None
        return {"checkpoint_discarded": note}

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


CONFIG_KEY = "config_json"  # every report: the TrainConfig the trial ran, as JSON
INVALID = "invalid"  # a trial whose configuration training refused: recorded FAIL, never retried


def placement(device: str) -> dict[str, Any]:
    """Where the trial ran, kept with it: the node, and the device and GPUs Ray gave it (how
    fractional trials were packed can be read back from the study)."""
    import ray

    return {"node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(), "device": device,
            "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}


def report_invalid(exc: UsageError, where: dict[str, Any]) -> None:
    """A deterministic refusal (bad data, an option out of range) ends the trial normally
    with its reason: raising would make Tune retry what fails the same way every time."""
    from ray import tune

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    tune.report({METRIC: 0.0, "status": INVALID, "reason": f"invalid configuration: {first}",
                 "epoch": 0, "wall_time": 0.0, **where})


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
    where = placement(device)
    try:
        config = trainer.TrainConfig.from_dict(
            {**base, **knobs, "device": device,
             "metaparameters": {**base.get("metaparameters", {}), **meta}})
    except UsageError as exc:
        report_invalid(exc, where)
        return
    ran = json.dumps(config.to_dict(), default=str)  # what the study records the trial ran
    checkpointer = (TuneCheckpointer(checkpoint_every, restore_from)
                    if checkpoint_every > 0 or restore_from else None)
    best = 0.0

    def restored_epochs() -> dict[str, Any]:
        """Once, in the first report after a restore: the epochs the checkpoint held."""
        nonlocal best
        if checkpointer is None:
            return {}
        notice = checkpointer.notice()  # once: why a checkpoint was passed over
        if not checkpointer.restored:
            return notice
        earlier, checkpointer.restored = checkpointer.restored, []
        best = max([best, *(r["val_top1"] for r in earlier)])
        return {**notice, "restored_from_epoch": len(earlier), "restored_json": json.dumps(
            [{**flat_metrics(r), "status": "running"} for r in earlier])}

    def report(record: dict[str, Any]) -> None:
        nonlocal best
        extra = restored_epochs()
        best = max(best, record["val_top1"])
        status = "completed" if record["epoch"] == config.epochs else "running"
        tune.report({**flat_metrics(record), METRIC: best, "status": status, **where, **extra,
                     CONFIG_KEY: ran},
                    checkpoint=checkpointer.take() if checkpointer else None)
        if checkpointer is not None:
            checkpointer.reported()

    try:
        result = trainer.train(config, callback=report, checkpointer=checkpointer)
    except UsageError as exc:  # the data or the model refused this configuration
        report_invalid(exc, where)
        return
    if result.status == "diverged":
        tune.report({METRIC: 0.0, "status": "diverged", "reason": result.reason,
                     "epoch": len(result.history) + 1, **where, **restored_epochs(),
                     CONFIG_KEY: ran,
                     "wall_time": result.wall_time})


def continue_trial(config: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
                   threads: int, checkpoint_every: int = 0, archs: list[str] | None = None,
                   objective: str = "mean") -> None:
    """A trial of a dead driver, continued from its checkpoint (``search.continuing``)."""
    run = config["run"]
    run_trial(run["sampled"], base, fixed, threads, checkpoint_every, run["restore"], archs,
              objective)
