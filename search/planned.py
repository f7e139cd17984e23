"""Studies of planned runs: a fixed list of training runs, each identified by a key, run
through Ray Tune into one Optuna study (transfer and robustness studies are such lists).

A run's key makes a re-run of the command reuse what is finished: completed runs, and
diverged ones (a divergence is a result, not an accident); errored runs run again. The runs
go through the same execution spec, resources, cluster and retry handling as a sweep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna

from search.execution import Execution
from search.lease import Lease, fence_of
from search.recording import Recorder, reconcile
from search.summaries import PLANNED, RUN_KEY
from search.specs import experiment_folder
from search.trainable import run_trial
from spaces import SearchSpace



@dataclass(frozen=True)
class PlannedRun:
    key: str
    config: dict[str, Any]  # TrainConfig values of this run (rule, arch, seed, ...)
    metaparameters: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)  # what the study records with it


def note_planned(study: optuna.Study, keys: list[str]) -> None:
    """Add ``keys`` to the runs the study is to hold (a re-run may add more)."""
    planned = sorted(set(study.user_attrs.get(PLANNED, [])) | set(keys))
    if planned != study.user_attrs.get(PLANNED):
        study.set_user_attr(PLANNED, planned)


class _PlannedRecorder(Recorder):
    def describe(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        run = config["run"]
        return {}, {**run["attrs"], RUN_KEY: run["key"]}


def _planned_entry(config: dict[str, Any], base: dict[str, Any], threads: int,
                   checkpoint_every: int = 0) -> None:
    run = config["run"]
    run_trial(run["metaparameters"], {**base, **run["config"]}, {}, threads, checkpoint_every)


def run_planned(execution: Execution, url: str, study_name: str, runs: list[PlannedRun],
                base: dict[str, Any], progress: Callable[[str], None],
                leases: Sequence[Lease] = ()) -> None:
    """Run ``runs`` (on ``base`` training options) as one Ray experiment into the study; the
    caller holds ``leases``, and losing one stops the experiment."""
    from ray import tune

    from search.stopping import StopSignals
    from search.tune_recorder import OptunaRecorder

    experiment = f"{experiment_folder(study_name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    recorder = _PlannedRecorder(url, study_name, SearchSpace("backprop", {}), experiment,
                                fence=fence_of(leases))
    configs = [{"key": r.key, "config": r.config, "metaparameters": r.metaparameters,
                "attrs": r.attrs} for r in runs]
    already = len(recorder.study.get_trials(deepcopy=False))
    stop = StopSignals()
    for lease in leases:
        lease.on_lost = stop.request_stop
    trainable = execution.trainable(_planned_entry, base=base, threads=execution.threads)
    tuner = execution.tuner(
        trainable, name=experiment, param_space={"run": tune.grid_search(configs)},
        callbacks=[OptunaRecorder(recorder, already + len(runs), already, progress), stop])
    reconcile(stop.fit(tuner), recorder)
    stop.raise_if_stopped(lambda: (
        f"{len(recorder.study.get_trials(deepcopy=False)) - already} of {len(runs)} runs "
        f"recorded in study {study_name}; run the same command again to finish them "
        "(finished runs are reused)"))
