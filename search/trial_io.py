"""What every trial shares, whatever it trains: splitting a sampled config into metaparameters
and options, the device, checkpoints through Tune, flattening a record for Tune, where it ran,
and reporting a refused configuration.

Both trainables (``search.trainable`` for one architecture, ``search.across_trial`` for a
trial over several) build on this module and on nothing of each other's, so the imports read
one way.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from catalogue.errors import UsageError
from catalogue.rule import rule_declaration
from catalogue.training import coerce_option
from search.searchers import METRIC

ACROSS = "across"  # the checkpoint key of a trial's progress over its architectures


def split_sampled(rule: str, sampled: dict[str, Any]) -> tuple[dict[str, float],
                                                               dict[str, Any]]:
    """(rule metaparameters, training options) of one sampled config; a categorical option
    (the noise distribution) stays the name it is, and a rule's typed option takes its kind."""
    declared = rule_declaration(rule)
    names = declared.metaparameters
    meta = {k: declared.coerce(k, v) for k, v in sampled.items() if k in names}
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


CONFIG_KEY = "config_json"  # every report: the TrainConfig the trial ran, as JSON
INVALID = "invalid"  # a trial whose configuration training refused: recorded FAIL, never retried


def placement(device: str) -> dict[str, Any]:
    """Where the trial ran, kept with it: the node, and the device and GPUs Ray gave it (how
    fractional trials were packed can be read back from the study)."""
    import ray

    return {"node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(), "device": device,
            "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}


def report_invalid(exc: UsageError, where: dict[str, Any], floor: float = 0.0) -> None:
    """A deterministic refusal (bad data, an option out of range) ends the trial normally
    with its reason, told to the searcher as the task's ``floor``: raising would make Tune
    retry what fails the same way every time."""
    from ray import tune

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    tune.report({METRIC: floor, "status": INVALID, "reason": f"invalid configuration: {first}",
                 "epoch": 0, "wall_time": 0.0, **where})
