"""A TPE sweep on Ray Tune whose every trial lands in an Optuna RDB study.

The driver records each Ray trial as it ends (``search.recording``), then reconciles the whole
ResultGrid against the study. Each trial carries its sweep's id, so the study counts what a
sweep has done: ``resume`` runs exactly the missing trials, however the driver stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from catalogue.errors import UsageError
from search import storage as st
from search.continuing import CONTINUED, Unfinished, unfinished_trials
from search.identity import (
    CONFIGURATION,
    check_fits,
    check_study_fits,
    configuration_of,
    create_or_load_study,
    differences,
    fingerprint,
    normalised,
)
from search.lease import Lease, sweep_key
from search.provenance import provenance
from search.recording import OptunaRecorder, Recorder, print_progress, reconcile
from search.searchers import METRIC, MODE, make_search_alg
from search.specs import SweepSpec, check_study_name, experiment_folder
from search.trainable import continue_trial, run_trial
from spaces import SearchSpace

SWEEP_ATTR = "sweep:"  # study attribute prefix, one per sweep: its trial count and spec
SWEEP_TAG = "sweep"  # user attribute of every trial: the sweep it belongs to
ON_CHANGE_HINT = ("choose another --study, or --on-change new to sweep into a study of its "
                  "own for this configuration")


@dataclass
class SweepOutcome:
    study: str
    storage: str
    sweep: str
    added: int
    experiment_path: str
    best_value: float | None
    best_params: dict[str, float] | None
    wall_time: float
    objective: str | None = None  # a transfer-aware sweep's; None: the best val top-1
    completed: int = 0  # this sweep's completed trials, over all its runs
    failed: int = 0  # this sweep's failed trials (diverged, invalid, crashed)
    first_failure: str | None = None  # the reason of its first failed trial


def _evaluated_points(study: optuna.Study, space: SearchSpace) -> list[tuple[dict, float]]:
    """Earlier trials inside the current space, with the reward TPE would have seen."""
    points = []
    for t in study.get_trials(deepcopy=False):
        if not space.contains(t.params):
            continue
        if t.state == TrialState.COMPLETE:
            points.append((dict(t.params), float(t.value)))
        elif t.state == TrialState.FAIL:
            points.append((dict(t.params), 0.0))
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            points.append((dict(t.params), max(t.intermediate_values.values())))
    return points


def run_sweep(spec: SweepSpec, progress: Callable[[str], None] = print_progress
              ) -> SweepOutcome:
    """Validate, open the study (continuing it if it exists), register the sweep, run it.

    Everything that can fail on input, the Ray connection and its resources included, is
    checked before the first write.
    """
    started = time.perf_counter()
    spec = spec.resolved()
    space = spec.resolved_space()
    url = st.storage_url(spec.storage)
    storage = st.open_storage(url)
    spec = _forked_if_changed(spec, storage, progress)
    name = spec.study_name()
    attrs, identity = sweep_identity(spec)
    check_study_fits(storage, name, attrs, identity, space.to_optuna(), ON_CHANGE_HINT)
    spec.execution.connect()  # after every check that needs no Ray: they answer at once
    sweep_id = f"{experiment_folder(name)}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with Lease(storage.engine, sweep_key(name, sweep_id), f"sweep {sweep_id}") as lease:
        study = create_or_load_study(storage, name, attrs, identity, space.to_optuna())
        # One attribute per sweep: concurrent sweeps on one study never overwrite each other.
        study.set_user_attr(f"{SWEEP_ATTR}{sweep_id}", {"trials": spec.trials,
                                                        "started": time.time(),
                                                        "spec": spec.to_dict(),
                                                        "versions": provenance()})
        return _run_trials(spec, space, url, study, sweep_id, 0, progress, started, lease)


def sweep_identity(spec: SweepSpec) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A sweep study's attributes, and those of them a continuation must match: the rule,
    architecture(s), dataset and the configuration its trials run under (epochs, resolved
    training options, fixed values); a transfer-aware study also keeps its objective."""
    space = spec.resolved_space()
    attrs = {"kind": "sweep", "rule": spec.rule, "arch": spec.arch_label(),
             "dataset": spec.dataset, "epochs": spec.epochs, "seed": spec.seed,
             "space": space.to_dict(), "searcher": spec.searcher, "train": spec.train,
             CONFIGURATION: spec.configuration(), "versions": provenance()}
    identity: tuple[str, ...] = ("rule", "arch", "dataset", CONFIGURATION)
    if spec.transfer_aware():  # the value means the objective: a study keeps one
        attrs.update(archs=spec.architectures(), objective=spec.objective)
        identity += ("objective",)
    return attrs, identity


def _forked_if_changed(spec: SweepSpec, storage: Any, progress: Callable[[str], None]
                       ) -> SweepSpec:
    """With ``--on-change new``, a study that exists under another configuration is left
    alone and the sweep goes to ``NAME~FINGERPRINT``, the same fork for the same
    configuration every time."""
    if spec.on_change != "new":
        return spec
    try:
        existing = configuration_of(optuna.load_study(study_name=spec.study_name(),
                                                      storage=storage))
    except KeyError:
        return spec
    wanted = spec.configuration()
    if existing is None or not differences(normalised(existing), normalised(wanted)):
        return spec
    forked = f"{spec.study_name()}~{fingerprint(wanted)}"
    check_study_name(forked)
    progress(f"study {spec.study_name()} holds trials of another configuration; this sweep "
             f"goes to study {forked}")
    return replace(spec, study=forked)


def top_up(spec: SweepSpec, total: int, progress: Callable[[str], None] = print_progress
           ) -> SweepOutcome | None:
    """Bring the spec's study to ``total`` trials (None when it has them already)."""
    url = st.storage_url(spec.storage)
    try:
        have = len(optuna.load_study(study_name=spec.study_name(),
                                     storage=st.open_storage(url)).trials)
    except KeyError:
        have = 0
    if have >= total:
        return None
    return run_sweep(replace(spec, trials=total - have), progress)


def _run_trials(spec: SweepSpec, space: SearchSpace, url: str, study: optuna.Study,
                sweep_id: str, done: int, progress: Callable[[str], None],
                started: float, lease: Lease) -> SweepOutcome:
    """One Ray experiment that brings the sweep from ``done`` to ``spec.trials`` trials; the
    caller holds the sweep's lease, and losing it stops the experiment."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.stopping import StopSignals

    evaluated = _evaluated_points(study, space) if spec.searcher != "random" else []
    experiment = sweep_id if done == 0 else f"{sweep_id}-resumed-{time.strftime('%H%M%S')}"
    recorder = Recorder(url, study.study_name, space, experiment,
                        tags={SWEEP_TAG: sweep_id, "searcher": spec.searcher}, fence=lease.check)
    # Offset by the history, so that a continued or resumed sweep does not redraw the random
    # start of the earlier one.
    search_alg = make_search_alg(spec.searcher, space, seed=spec.seed + len(evaluated) + done,
                                 max_concurrent=spec.execution.max_concurrent,
                                 initial_points=spec.n_initial(), evaluated=evaluated)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs,
                               grace_period=1, reduction_factor=3)
                 if spec.scheduler == "asha" else FIFOScheduler())
    if evaluated:
        searcher = {"tpe": "TPE", "optuna": "Optuna's TPE"}[spec.searcher]
        progress(f"continuing study {study.study_name}: {searcher} starts from "
                 f"{len(evaluated)} earlier trials")
    stop = StopSignals()
    lease.on_lost = stop.request_stop
    trainable = spec.execution.trainable(run_trial, base=spec.base_config(),
                                         fixed=dict(space.fixed),
                                         threads=spec.execution.threads, **_across(spec))
    tuner = spec.execution.tuner(
        trainable, name=experiment, search_alg=search_alg, scheduler=scheduler,
        num_samples=spec.trials - done, metric=METRIC, mode=MODE,
        param_space=space.to_ray() if spec.searcher == "random" else {},
        callbacks=[OptunaRecorder(recorder, spec.trials, done, progress,
                                  **_tally(recorder.study, sweep_id)), stop])
    grid = stop.fit(tuner)
    reconcile(grid, recorder, resume_hint=f"; once it is back, `creditsweep resume --study "
                                          f"{study.study_name}` runs the unrecorded trials")
    stop.raise_if_stopped(lambda: _stopped(recorder.study, url, sweep_id, spec.trials))
    now_done = sweep_counts(recorder.study).get(sweep_id, 0)
    path = f"{spec.execution.resolved_ray_dir()}/{experiment}"
    return _outcome(recorder.study, url, sweep_id, now_done - done, path, started)


def _across(spec: SweepSpec) -> dict[str, Any]:
    """The trainable's arguments of a transfer-aware sweep (none for one architecture)."""
    if not spec.transfer_aware():
        return {}
    return {"archs": spec.architectures(), "objective": spec.objective}


def sweep_trials(study: optuna.Study, sweep_id: str) -> list[optuna.trial.FrozenTrial]:
    """The trials one sweep of the study has recorded."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(SWEEP_TAG) == sweep_id]


def _tally(study: optuna.Study, sweep_id: str) -> dict[str, Any]:
    """The best value and the failures a sweep has recorded so far: a resumed sweep's
    progress goes on from them instead of from zero."""
    mine = sweep_trials(study, sweep_id)
    values = [t.value for t in mine if t.state == TrialState.COMPLETE and t.value is not None]
    return {"best": max(values, default=None),
            "failed": sum(t.state == TrialState.FAIL for t in mine)}


def sweep_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials each sweep of the study has recorded: the ledger ``resume`` reads."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        sweep = t.user_attrs.get(SWEEP_TAG)
        if sweep is not None:
            counts[sweep] = counts.get(sweep, 0) + 1
    return counts


def _outcome(study: optuna.Study, url: str, sweep_id: str, added: int, path: str,
             started: float) -> SweepOutcome:
    ranked = st.ranked_complete(study)
    best_value, best_params = (ranked[0].value, ranked[0].params) if ranked else (None, None)
    mine = sweep_trials(study, sweep_id)
    failed = [t for t in mine if t.state == TrialState.FAIL]
    return SweepOutcome(study=study.study_name, storage=st.redact(url), sweep=sweep_id,
                        added=added, experiment_path=path, best_value=best_value,
                        best_params=best_params, wall_time=time.perf_counter() - started,
                        objective=study.user_attrs.get("objective"),
                        completed=sum(t.state == TrialState.COMPLETE for t in mine),
                        failed=len(failed),
                        first_failure=failed[0].user_attrs.get("fail_reason") if failed else None)


def resume_sweep(study_name: str, storage_flag: str | None, address: str | None = None,
                 sweep: str | None = None,
                 progress: Callable[[str], None] = print_progress) -> SweepOutcome:
    """Bring an interrupted sweep to exactly its trial count.

    The study is the ledger: each trial carries its sweep's id, so whatever was recorded before
    the driver stopped (Ctrl-C, SIGKILL, a lost machine) counts, and only the missing trials
    run, in a fresh Ray experiment whose TPE starts from every recorded trial. Ray's own
    experiment snapshot is not used: it is written every 10 s and synced to ``--ray-dir``
    every 5 minutes, so after a hard kill it can miss trials the study already holds, and
    restoring it would run them again under new ids.
    """
    started = time.perf_counter()
    url = st.storage_url(storage_flag)
    storage = st.open_storage(url)
    study = st.load_study(storage, study_name)
    sweeps = {k[len(SWEEP_ATTR):]: v for k, v in study.user_attrs.items()
              if k.startswith(SWEEP_ATTR)}
    if not sweeps:
        raise UsageError(f"study {study_name!r} has no sweep to resume")
    counts = sweep_counts(study)
    if sweep is not None:
        if sweep not in sweeps:
            raise UsageError(f"study {study_name!r} has no sweep {sweep!r}; its sweeps: "
                             f"{', '.join(sorted(sweeps))}")
        chosen = sweep
    else:
        unfinished = [s for s, v in sweeps.items() if counts.get(s, 0) < v["trials"]]
        if not unfinished:
            progress(f"every sweep of study {study_name!r} has all its trials: nothing to resume")
            return _outcome(study, url, "", 0, "", started)
        chosen = max(unfinished, key=lambda s: sweeps[s]["started"])
    spec = SweepSpec.from_dict(sweeps[chosen]["spec"], storage_flag, address).resolved()
    # Resolved again here (a data folder may have moved since): it must still be the
    # configuration the study's trials ran under.
    check_fits(study, *sweep_identity(spec), spec.resolved_space().to_optuna(),
               "the sweep cannot resume under it (was its data folder moved?)")
    if counts.get(chosen, 0) >= spec.trials:
        progress(f"sweep {chosen} has all its {spec.trials} trials: nothing to resume")
        return _outcome(study, url, chosen, 0, "", started)
    spec.execution.connect()
    with Lease(storage.engine, sweep_key(study_name, chosen), f"sweep {chosen}") as lease:
        # Counted again under the lease: a driver that just finished may have added trials.
        done = sweep_counts(study).get(chosen, 0)
        if done >= spec.trials:
            progress(f"sweep {chosen} has all its {spec.trials} trials: nothing to resume")
            return _outcome(study, url, chosen, 0, "", started)
        progress(f"resuming sweep {chosen}: {done} of {spec.trials} trials recorded, "
                 f"{spec.trials - done} to run")
        space = spec.resolved_space()
        before = done
        unfinished = unfinished_trials(spec.execution.resolved_ray_dir(), chosen,
                                       st.recorded_ray_ids(study))[:spec.trials - done]
        if unfinished:
            _continue_unfinished(spec, space, url, study, chosen, unfinished, done, progress,
                                 lease)
            done = sweep_counts(study).get(chosen, 0)
            if done >= spec.trials:
                return _outcome(study, url, chosen, done - before, "", started)
        outcome = _run_trials(spec, space, url, study, chosen, done, progress, started, lease)
        # Every trial this resume added, the continued ones included.
        outcome.added = sweep_counts(study).get(chosen, 0) - before
        return outcome


class _ContinuedRecorder(Recorder):
    def describe(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        run = config["run"]
        params, _ = super().describe(run["sampled"])
        return params, {"continued_from": run["origin"]}


def _continue_unfinished(spec: SweepSpec, space: SearchSpace, url: str, study: optuna.Study,
                         sweep_id: str, unfinished: list[Unfinished], done: int,
                         progress: Callable[[str], None], lease: Lease) -> None:
    """The trials a dead driver left running, each from its last checkpoint, as one Ray
    experiment recorded into the sweep."""
    from ray import tune

    from search.stopping import StopSignals

    progress(f"continuing {len(unfinished)} trial(s) the stopped driver left running, each "
             "from its last checkpoint")
    experiment = f"{sweep_id}-{CONTINUED}-{time.strftime('%H%M%S')}"
    recorder = _ContinuedRecorder(url, study.study_name, space, experiment,
                                  tags={SWEEP_TAG: sweep_id, "searcher": spec.searcher},
                                  fence=lease.check)
    stop = StopSignals()
    lease.on_lost = stop.request_stop
    trainable = spec.execution.trainable(continue_trial, base=spec.base_config(),
                                         fixed=dict(space.fixed),
                                         threads=spec.execution.threads, **_across(spec))
    runs = [{"sampled": u.params, "restore": u.checkpoint, "origin": u.ray_id}
            for u in unfinished]
    tuner = spec.execution.tuner(trainable, name=experiment,
                                 param_space={"run": tune.grid_search(runs)},
                                 callbacks=[OptunaRecorder(recorder, spec.trials, done,
                                                           progress=progress,
                                                           **_tally(study, sweep_id)), stop])
    reconcile(stop.fit(tuner), recorder)
    stop.raise_if_stopped(lambda: _stopped(study, url, sweep_id, spec.trials))


def _stopped(study: optuna.Study, url: str, sweep_id: str, trials: int) -> str:
    """What an interrupted sweep recorded, and the command that goes on."""
    now_done = sweep_counts(study).get(sweep_id, 0)
    storage_flag = "" if url == st.DEFAULT_STORAGE else f" --storage {st.redact(url)}"
    return (f"{now_done} of {trials} trials of sweep {sweep_id} recorded in study "
            f"{study.study_name}; continue with: creditsweep resume --study "
            f"{study.study_name}{storage_flag}")
