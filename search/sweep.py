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
    configuration_of,
    differences,
    fingerprint,
    normalised,
)
from search.driver import Session, StudyPlan, run_kind
from search.execution import Execution
from search.lease import sweep_key
from search.provenance import provenance
from search.recording import Recorder, print_progress, reconcile
from search.scores import task_of_dataset
from search.searchers import METRIC, MODE, SEARCHERS, make_search_alg
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
    objective: str | None = None  # a transfer-aware sweep's; None: the best task score
    score_label: str = "val top-1"  # the task's score (val R^2 for a regression)
    completed: int = 0  # this sweep's completed trials, over all its runs
    failed: int = 0  # this sweep's failed trials (diverged, invalid, crashed)
    first_failure: str | None = None  # the reason of its first failed trial


def evaluated_points(study: optuna.Study, space: SearchSpace, floor: float = 0.0
                     ) -> list[tuple[dict, float]]:
    """Earlier trials inside the current space, with the reward TPE would have seen: a failed
    one the task's floor, as a diverged trial reports it live (R^2's -1, not 0, which would
    rank a diverged regression above every poor one that ran)."""
    points = []
    for t in study.get_trials(deepcopy=False):
        if not space.contains(t.params):
            continue
        if t.state == TrialState.COMPLETE:
            points.append((dict(t.params), float(t.value)))
        elif t.state == TrialState.FAIL:
            points.append((dict(t.params), floor))
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            points.append((dict(t.params), max(t.intermediate_values.values())))
    return points


class Sweep:
    """A sweep as a kind of study (``search.driver``): ``trials`` more trials into its study,
    or, with ``total``, as many as bring the study to ``total`` (a transfer's ``--retune``)."""

    def __init__(self, spec: SweepSpec, total: int | None = None) -> None:
        self.spec = spec.resolved()  # every check that needs neither the database nor Ray
        self.space = self.spec.resolved_space()
        self.total = total
        self.execution = self.spec.execution
        self.outcome: SweepOutcome | None = None

    def prepare(self, session: Session) -> None:
        self.spec = _forked_if_changed(self.spec, session.storage, session.progress)
        if self.total is not None:
            try:
                have = len(optuna.load_study(study_name=self.spec.study_name(),
                                             storage=session.storage).trials)
            except KeyError:
                have = 0
            self.spec = replace(self.spec, trials=max(0, self.total - have))
        name = self.spec.study_name()
        self.sweep_id = f"{experiment_folder(name)}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    def studies(self) -> list[StudyPlan]:
        if self.spec.trials <= 0:  # topped up already
            return []
        attrs, identity = sweep_identity(self.spec)
        name = self.spec.study_name()
        return [StudyPlan(name, attrs, identity, sweep_key(name, self.sweep_id),
                          f"sweep {self.sweep_id}", self.space.to_optuna(), ON_CHANGE_HINT)]

    def run(self, session: Session) -> None:
        if self.spec.trials <= 0:
            return
        study = session.study(self.spec.study_name())
        # One attribute per sweep: concurrent sweeps on one study never overwrite each other.
        study.set_user_attr(f"{SWEEP_ATTR}{self.sweep_id}", {"trials": self.spec.trials,
                                                             "started": time.time(),
                                                             "spec": self.spec.to_dict(),
                                                             "versions": provenance()})
        self.outcome = _run_trials(self.spec, self.space, session, study, self.sweep_id, 0)

    def summary(self, session: Session) -> SweepOutcome | None:
        return self.outcome


def run_sweep(spec: SweepSpec, progress: Callable[[str], None] = print_progress
              ) -> SweepOutcome:
    """Validate, open the study (continuing it if it exists), register the sweep, run it.

    Everything that can fail on input, the Ray connection and its resources included, is
    checked before the first write.
    """
    sweep = Sweep(spec)
    return run_kind(sweep, sweep.spec.storage, progress)


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
    sweep = Sweep(spec, total=total)
    return run_kind(sweep, sweep.spec.storage, progress)


def _run_trials(spec: SweepSpec, space: SearchSpace, session: Session, study: optuna.Study,
                sweep_id: str, done: int) -> SweepOutcome:
    """One Ray experiment that brings the sweep from ``done`` to ``spec.trials`` trials; the
    session holds the sweep's lease, and losing it stops the experiment."""
    url, progress = session.url, session.progress
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.stopping import StopSignals
    from search.tune_recorder import OptunaRecorder

    floor = task_of_dataset(spec.dataset).floor
    evaluated = (evaluated_points(study, space, floor) if SEARCHERS.get(spec.searcher).warm_starts
                 else [])
    experiment = sweep_id if done == 0 else f"{sweep_id}-resumed-{time.strftime('%H%M%S')}"
    recorder = Recorder(url, study.study_name, space, experiment,
                        tags={SWEEP_TAG: sweep_id, "searcher": spec.searcher},
                        fence=session.fence())
    # Offset by the history, so that a continued or resumed sweep does not redraw the random
    # start of the earlier one.
    search_alg = make_search_alg(spec.searcher, space, seed=spec.seed + len(evaluated) + done,
                                 max_concurrent=spec.execution.max_concurrent,
                                 initial_points=spec.n_initial(), evaluated=evaluated,
                                 options=spec.searcher_options)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs,
                               grace_period=1, reduction_factor=3)
                 if spec.scheduler == "asha" else FIFOScheduler())
    if evaluated:
        searcher = SEARCHERS.get(spec.searcher).label
        progress(f"continuing study {study.study_name}: {searcher} starts from "
                 f"{len(evaluated)} earlier trials")
    stop = StopSignals()
    session.watch(stop.request_stop)
    trainable = spec.execution.trainable(run_trial, base=spec.base_config(),
                                         fixed=dict(space.fixed),
                                         threads=spec.execution.threads, **_across(spec))
    tuner = spec.execution.tuner(
        trainable, name=experiment, search_alg=search_alg, scheduler=scheduler,
        num_samples=spec.trials - done, metric=METRIC, mode=MODE,
        param_space=SEARCHERS.get(spec.searcher).param_space(space),
        callbacks=[OptunaRecorder(recorder, spec.trials, done, progress,
                                  **_tally(recorder.study, sweep_id)), stop])
    grid = stop.fit(tuner)
    reconcile(grid, recorder, resume_hint=f"; once it is back, `creditsweep resume --study "
                                          f"{study.study_name}` runs the unrecorded trials")
    stop.raise_if_stopped(lambda: _stopped(recorder.study, url, sweep_id, spec.trials))
    now_done = sweep_counts(recorder.study).get(sweep_id, 0)
    path = f"{spec.execution.resolved_ray_dir()}/{experiment}"
    return _outcome(recorder.study, url, sweep_id, now_done - done, path, session.started)


def _across(spec: SweepSpec) -> dict[str, Any]:
    """The trainable's arguments of a transfer-aware sweep (none for one architecture)."""
    if not spec.transfer_aware():
        return {}
    return {"archs": spec.architectures(), "objective": spec.objective,
            "arch_epochs": spec.shortened()}


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
                        score_label=task_of_dataset(study.user_attrs.get("dataset")).score_label,
                        completed=sum(t.state == TrialState.COMPLETE for t in mine),
                        failed=len(failed),
                        first_failure=failed[0].user_attrs.get("fail_reason") if failed else None)


class ResumedSweep:
    """An interrupted sweep brought to exactly its trial count, as a kind of study.

    The study is the ledger: each trial carries its sweep's id, so whatever was recorded before
    the driver stopped (Ctrl-C, SIGKILL, a lost machine) counts, and only the missing trials
    run, in a fresh Ray experiment whose TPE starts from every recorded trial. Ray's own
    experiment snapshot is not used: it is written every 10 s and synced to ``--ray-dir``
    every 5 minutes, so after a hard kill it can miss trials the study already holds, and
    restoring it would run them again under new ids.
    """

    def __init__(self, study_name: str, storage_flag: str | None, address: str | None = None,
                 sweep: str | None = None) -> None:
        self.study_name, self.storage_flag = study_name, storage_flag
        self.address, self.sweep = address, sweep
        self.chosen = ""
        self.spec: SweepSpec | None = None
        self.execution = Execution()  # the resumed sweep's own, once ``prepare`` read it
        self.outcome: SweepOutcome | None = None

    def prepare(self, session: Session) -> None:
        study = st.load_study(session.storage, self.study_name)
        sweeps = {k[len(SWEEP_ATTR):]: v for k, v in study.user_attrs.items()
                  if k.startswith(SWEEP_ATTR)}
        if not sweeps:
            raise UsageError(f"study {self.study_name!r} has no sweep to resume")
        counts = sweep_counts(study)
        if self.sweep is not None:
            if self.sweep not in sweeps:
                raise UsageError(f"study {self.study_name!r} has no sweep {self.sweep!r}; its "
                                 f"sweeps: {', '.join(sorted(sweeps))}")
            chosen = self.sweep
        else:
            unfinished = [s for s, v in sweeps.items() if counts.get(s, 0) < v["trials"]]
            if not unfinished:
                session.progress(f"every sweep of study {self.study_name!r} has all its "
                                 "trials: nothing to resume")
                return
            chosen = max(unfinished, key=lambda s: sweeps[s]["started"])
        spec = SweepSpec.from_dict(sweeps[chosen]["spec"], self.storage_flag,
                                   self.address).resolved()
        # Resolved again here (a data folder may have moved since): it must still be the
        # configuration the study's trials ran under.
        check_fits(study, *sweep_identity(spec), spec.resolved_space().to_optuna(),
                   "the sweep cannot resume under it (was its data folder moved?)")
        self.chosen = chosen
        if counts.get(chosen, 0) >= spec.trials:
            session.progress(f"sweep {chosen} has all its {spec.trials} trials: nothing to "
                             "resume")
            return
        self.spec, self.execution = spec, spec.execution

    def studies(self) -> list[StudyPlan]:
        if self.spec is None:
            return []
        attrs, identity = sweep_identity(self.spec)
        return [StudyPlan(self.study_name, attrs, identity,
                          sweep_key(self.study_name, self.chosen), f"sweep {self.chosen}",
                          self.spec.resolved_space().to_optuna())]

    def run(self, session: Session) -> None:
        spec, chosen = self.spec, self.chosen
        assert spec is not None
        study = session.study(self.study_name)
        # Counted again under the lease: a driver that just finished may have added trials.
        done = sweep_counts(study).get(chosen, 0)
        if done >= spec.trials:
            session.progress(f"sweep {chosen} has all its {spec.trials} trials: nothing to "
                             "resume")
            return
        session.progress(f"resuming sweep {chosen}: {done} of {spec.trials} trials recorded, "
                         f"{spec.trials - done} to run")
        space = spec.resolved_space()
        before = done
        unfinished = unfinished_trials(spec.execution.resolved_ray_dir(), chosen,
                                       st.recorded_ray_ids(study))[:spec.trials - done]
        if unfinished:
            _continue_unfinished(spec, space, session, study, chosen, unfinished, done)
            done = sweep_counts(study).get(chosen, 0)
            if done >= spec.trials:
                self.outcome = _outcome(study, session.url, chosen, done - before, "",
                                        session.started)
                return
        self.outcome = _run_trials(spec, space, session, study, chosen, done)
        # Every trial this resume added, the continued ones included.
        self.outcome.added = sweep_counts(study).get(chosen, 0) - before

    def summary(self, session: Session) -> SweepOutcome:
        if self.outcome is None:  # nothing was left to run
            study = st.load_study(session.storage, self.study_name)
            return _outcome(study, session.url, self.chosen, 0, "", session.started)
        return self.outcome


def resume_sweep(study_name: str, storage_flag: str | None, address: str | None = None,
                 sweep: str | None = None,
                 progress: Callable[[str], None] = print_progress) -> SweepOutcome:
    """Bring an interrupted sweep to exactly its trial count (``ResumedSweep``)."""
    return run_kind(ResumedSweep(study_name, storage_flag, address, sweep), storage_flag,
                    progress)


class _ContinuedRecorder(Recorder):
    def describe(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        run = config["run"]
        params, _ = super().describe(run["sampled"])
        return params, {"continued_from": run["origin"]}


def _continue_unfinished(spec: SweepSpec, space: SearchSpace, session: Session,
                         study: optuna.Study, sweep_id: str, unfinished: list[Unfinished],
                         done: int) -> None:
    """The trials a dead driver left running, each from its last checkpoint, as one Ray
    experiment recorded into the sweep."""
    from ray import tune

    from search.stopping import StopSignals
    from search.tune_recorder import OptunaRecorder

    url, progress = session.url, session.progress
    progress(f"continuing {len(unfinished)} trial(s) the stopped driver left running, each "
             "from its last checkpoint")
    experiment = f"{sweep_id}-{CONTINUED}-{time.strftime('%H%M%S')}"
    recorder = _ContinuedRecorder(url, study.study_name, space, experiment,
                                  tags={SWEEP_TAG: sweep_id, "searcher": spec.searcher},
                                  fence=session.fence())
    stop = StopSignals()
    session.watch(stop.request_stop)
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
