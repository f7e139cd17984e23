"""A TPE sweep on Ray Tune whose every trial lands in an Optuna RDB study.

The driver records each Ray trial as it ends (``OptunaRecorder``), then reconciles the whole
ResultGrid against the study, so a trial whose live write was missed (driver killed, database
away) is still recorded exactly once. ``resume`` restores the Ray experiment with
``Tuner.restore`` and reconciles the same way.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sys
from typing import Callable

import optuna
from optuna.trial import TrialState
from ray import tune

from search import storage as st
from search.cli_common import UsageError
from search.searchers import METRIC, MODE, make_search_alg
from search.trainable import run_trial, split_sampled
from spaces import SearchSpace, default_space

RAY_DIR_ENV = "CREDITSWEEP_RAY_DIR"
EXPERIMENT_ATTR = "ray_experiment:"  # study attribute prefix, one per Ray experiment


@dataclass
class SweepSpec:
    rule: str = "information_alignment"
    arch: str = "resnet8"
    dataset: str = "digits"
    trials: int = 20
    epochs: int = 5
    space: SearchSpace | None = None
    study: str | None = None
    storage: str | None = None
    seed: int = 0
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    scheduler: str = "fifo"
    searcher: str = "tpe"
    initial_points: int | None = None
    max_failures: int = 2
    ray_dir: str | None = None
    train: dict[str, Any] = field(default_factory=dict)  # further TrainConfig options

    def resolved_space(self) -> SearchSpace:
        return self.space or default_space(self.rule)

    def study_name(self) -> str:
        return self.study or st.study_name_for(self.rule, self.arch, self.dataset)

    def n_initial(self) -> int:
        """TPE's random start: hyperopt's 20, or a quarter of a small sweep (at least 3), so
        that TPE itself runs in sweeps shorter than 20 trials."""
        if self.initial_points is not None:
            return self.initial_points
        return min(20, max(3, self.trials // 4))

    def base_config(self) -> dict[str, Any]:
        return {**self.train, "rule": self.rule, "arch": self.arch, "dataset": self.dataset,
                "epochs": self.epochs, "seed": self.seed}

    def validate(self) -> None:
        """Every check that can fail on user input, before anything is written."""
        import trainer
        from trainer.datasets import check_dataset

        if self.trials < 1:
            raise UsageError(f"--trials must be at least 1, got {self.trials}")
        if self.max_concurrent < 1:
            raise UsageError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise UsageError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.scheduler not in ("fifo", "asha"):
            raise UsageError(f"--scheduler must be fifo or asha, got {self.scheduler!r}")
        if self.searcher not in ("tpe", "random"):
            raise UsageError(f"--searcher must be tpe or random, got {self.searcher!r}")
        space = self.resolved_space()
        if space.rule != self.rule:
            raise UsageError(f"the search space is for {space.rule!r}, not {self.rule!r}")
        if not space.params:
            raise UsageError(f"nothing to tune for {self.rule!r}: add --space lr=LOW:HIGH")
        fixed_meta, fixed_knobs = split_sampled(dict(space.fixed))
        trainer.TrainConfig.from_dict({**self.base_config(), **fixed_knobs,
                                       "metaparameters": fixed_meta})
        check_dataset(self.dataset, self.train.get("data_dir"))


def ray_dir(flag: str | None) -> str:
    path = flag or os.environ.get(RAY_DIR_ENV) or str(Path.home() / ".creditsweep" / "ray")
    return str(Path(path).expanduser().resolve())


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial that asks for more than the cluster has would wait forever: say so instead."""
    import ray

    have = ray.cluster_resources()
    for name, want in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial)):
        if want > have.get(name, 0.0):
            raise UsageError(f"each trial asks for {want:g} {name}(s) but the Ray cluster has "
                             f"{have.get(name, 0.0):g}")


def ensure_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    # Ray's own per-trial tables would drown the recorder's progress lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", log_to_driver=False,
                 logging_level="WARNING")


# --- recording -------------------------------------------------------------------------------

def _record_from_results(trial_id: str, described: tuple[dict[str, float], dict[str, Any]],
                         results: list[dict[str, Any]], error: str | None) -> st.TrialRecord:
    params, extra = described
    history = []
    for r in results:
        if r.get("status") in ("running", "completed") and "val_top1" in r:
            row = {k: v for k, v in r.items() if k in _HISTORY_KEYS}
            if r.get("diagnostics_json"):
                row["diagnostics"] = json.loads(r["diagnostics_json"])
            history.append(row)
    last = results[-1] if results else {}
    if error is not None:
        status, reason = "error", error
    elif last.get("status") == "diverged":
        status, reason = "diverged", last.get("reason")
    elif last.get("status") == "completed":
        status, reason = "completed", None
    else:
        status, reason = "stopped", "stopped early by the scheduler"
    return st.TrialRecord(ray_trial_id=trial_id, params=params, history=history, status=status,
                          reason=reason, wall_time=last.get("wall_time"),
                          node_ip=last.get("node_ip"), extra=extra)


_HISTORY_KEYS = ("epoch", "train_loss", "train_top1", "alignment_loss", "lr", "val_loss",
                 "val_top1", "val_top5", "epoch_time", "wall_time")


def _error_text(trial: Any) -> str:
    """The last line of the worker's traceback, which Ray writes beside the trial."""
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:500]
    return "the trial's worker failed (see the Ray experiment folder)"


class _Recorder:
    """Shared by the Tune callback (live) and the reconciliation (after fit/restore)."""

    def __init__(self, storage_url: str, study_name: str, space: SearchSpace,
                 experiment: str) -> None:
        self.storage_url, self.study_name, self.space = storage_url, study_name, space
        self.experiment = experiment  # Ray trial ids are unique only within one experiment
        self._study: optuna.Study | None = None
        self._known: set[str] = set()

    def describe(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """(Optuna params, extra user attributes) of a Ray trial, from its config."""
        return {k: float(config[k]) for k in self.space.params if k in config}, {}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = st.load_study(st.open_storage(self.storage_url), self.study_name)
        return self._study

    def record(self, records: list[st.TrialRecord]) -> int:
        for record in records:
            if "/" not in record.ray_trial_id:
                record.ray_trial_id = f"{self.experiment}/{record.ray_trial_id}"
        return st.record_trials(self.study, records, self.space.to_optuna(), known=self._known)

    def __getstate__(self) -> dict[str, Any]:  # the Tuner pickles callbacks: no engine inside
        return {**self.__dict__, "_study": None, "_known": set()}


def print_progress(line: str) -> None:
    """Default progress sink: one line per finished trial on stderr (picklable for Ray)."""
    print(line, file=sys.stderr, flush=True)


class OptunaRecorder(tune.Callback):
    """Writes each Ray trial to the Optuna study when it ends and reports live progress.

    Module-level and free of open connections, because the Tuner pickles its callbacks into
    the experiment state that ``Tuner.restore`` brings back.
    """

    def __init__(self, recorder: _Recorder, total: int, already: int,
                 progress: Callable[[str], None] = print_progress) -> None:
        self.recorder, self.total, self.already, self.progress = recorder, total, already, progress
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.done = self.failed = 0
        self.best: float | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append(dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trials, trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trials, trial, _error_text(trial))

    def _finish(self, trials, trial, error: str | None) -> None:
        record = _record_from_results(trial.trial_id, self.recorder.describe(trial.config),
                                      self.results.pop(trial.trial_id, []), error)
        try:
            self.recorder.record([record])
        except Exception as exc:  # reconciliation after the run retries this trial
            self.progress(f"could not record trial {trial.trial_id} yet: {exc}")
        self.done += 1
        values = [r["val_top1"] for r in record.history]
        if record.status in ("error", "diverged"):
            self.failed += 1
        elif record.status == "completed" and values:
            self.best = max(self.best or 0.0, max(values))
        running = sum(t.status == "RUNNING" for t in trials)
        params = ", ".join(f"{k}={v:.3g}" for k, v in record.params.items()) \
            or ", ".join(f"{k}={v}" for k, v in (record.extra or {}).items()
                         if k in ("role", "target_arch", "seed"))
        outcome = (f"val top-1 {max(values):.4f}" if record.status == "completed" and values
                   else f"{record.status}: {record.reason}")
        best = f"{self.best:.4f}" if self.best is not None else "-"
        self.progress(f"[{self.already + self.done}/{self.total}] {outcome} ({params}) · "
                      f"running {running} · failed {self.failed} · best {best}")


def reconcile(result_grid: Any, recorder: _Recorder) -> int:
    """Record every finished trial of a ResultGrid that the study does not hold yet."""
    records = []
    for result in result_grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None:
            continue
        df = result.metrics_dataframe
        rows = [] if df is None else [
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in df.to_dict("records")]
        rows = rows or [result.metrics]
        error = None if result.error is None else str(result.error).strip().splitlines()[-1]
        records.append(_record_from_results(trial_id, recorder.describe(result.config),
                                            rows, error))
    return recorder.record(records)


# --- running ---------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    study: str
    storage: str
    added: int
    experiment_path: str
    best_value: float | None
    best_params: dict[str, float] | None
    wall_time: float


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


def _resourced_trainable(spec: SweepSpec, space: SearchSpace):
    threads = max(1, int(spec.cpus_per_trial))
    trainable = tune.with_parameters(_trainable_entry, base=spec.base_config(),
                                     fixed=dict(space.fixed), threads=threads)
    return tune.with_resources(trainable, {"cpu": spec.cpus_per_trial,
                                           "gpu": spec.gpus_per_trial})


def _trainable_entry(config: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
                     threads: int) -> None:
    run_trial(config, base, fixed, threads)


def run_sweep(spec: SweepSpec, progress: Callable[[str], None] = print_progress
              ) -> SweepOutcome:
    """Validate, open the study (continuing it if it exists), run, record, reconcile."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    started = time.perf_counter()
    spec.validate()
    space = spec.resolved_space()
    url = st.storage_url(spec.storage)
    storage = st.open_storage(url)
    ensure_ray(spec.address)
    check_resources(spec.cpus_per_trial, spec.gpus_per_trial)
    name = spec.study_name()
    attrs = {"kind": "sweep", "rule": spec.rule, "arch": spec.arch, "dataset": spec.dataset,
             "epochs": spec.epochs, "seed": spec.seed, "space": space.to_dict(),
             "searcher": spec.searcher, "train": spec.train}
    study = st.create_or_load_study(storage, name, attrs)
    evaluated = _evaluated_points(study, space) if spec.searcher == "tpe" else []
    already = len(study.get_trials(deepcopy=False))
    experiment = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    storage_path = ray_dir(spec.ray_dir)
    # One attribute per experiment: concurrent sweeps on one study never overwrite each other.
    experiment_path = str(Path(storage_path) / experiment)
    study.set_user_attr(f"{EXPERIMENT_ATTR}{experiment}",
                        {"path": experiment_path, "trials": spec.trials, "started": time.time(),
                         "spec": _spec_dict(spec)})

    recorder = _Recorder(url, name, space, experiment)
    search_alg = make_search_alg(spec.searcher, space, seed=spec.seed,
                                 max_concurrent=spec.max_concurrent,
                                 initial_points=spec.n_initial(), evaluated=evaluated)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs,
                               grace_period=1, reduction_factor=3)
                 if spec.scheduler == "asha" else FIFOScheduler())
    if evaluated:
        progress(f"continuing study {name}: TPE starts from {len(evaluated)} earlier trials")
    tuner = tune.Tuner(
        _resourced_trainable(spec, space),
        param_space=space.to_ray() if spec.searcher == "random" else {},
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=spec.trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=experiment, storage_path=storage_path, verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[OptunaRecorder(recorder, already + spec.trials, already, progress)]),
    )
    grid = tuner.fit()
    reconcile(grid, recorder)
    return _outcome(recorder, url, len(study.get_trials(deepcopy=False)) - already,
                    experiment_path, started)


def _spec_dict(spec: SweepSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["space"] = spec.resolved_space().to_dict()
    data.pop("storage", None)  # never keep a URL (it may hold a password) in the study
    return data


def _outcome(recorder: _Recorder, url: str, added: int, path: str,
             started: float) -> SweepOutcome:
    study = recorder.study
    try:
        best = study.best_trial
        best_value, best_params = best.value, best.params
    except ValueError:
        best_value = best_params = None
    return SweepOutcome(study=study.study_name, storage=st.redact(url), added=added,
                        experiment_path=path, best_value=best_value, best_params=best_params,
                        wall_time=time.perf_counter() - started)


def resume_sweep(study_name: str, storage_flag: str | None, address: str | None = None,
                 progress: Callable[[str], None] = print_progress) -> SweepOutcome:
    """Finish the study's last Ray experiment where it stopped, recording each trial once."""
    started = time.perf_counter()
    url = st.storage_url(storage_flag)
    study = st.load_study(st.open_storage(url), study_name)
    experiments = sorted((v for k, v in study.user_attrs.items()
                          if k.startswith(EXPERIMENT_ATTR)), key=lambda e: e["started"])
    if not experiments:
        raise UsageError(f"study {study_name!r} has no Ray experiment to resume")
    last = experiments[-1]
    path = last["path"]
    if not tune.Tuner.can_restore(path):
        raise UsageError(f"the Ray experiment of study {study_name!r} at {path} cannot be "
                         "restored (it never saved its state)")
    spec_data = dict(last["spec"])
    space_data = spec_data.pop("space")
    spec = SweepSpec(**{k: v for k, v in spec_data.items() if k in SweepSpec.__dataclass_fields__})
    space = _space_from_dict(space_data)
    before = len(study.get_trials(deepcopy=False))
    ensure_ray(address or spec.address)
    recorder = _Recorder(url, study_name, space, Path(path).name)
    tuner = tune.Tuner.restore(path, trainable=_resourced_trainable(spec, space),
                               resume_unfinished=True, resume_errored=True)
    grid = tuner.fit()
    reconcile(grid, recorder)
    progress(f"resumed {study_name}: {len(grid)} trials in the experiment")
    return _outcome(recorder, url, len(recorder.study.get_trials(deepcopy=False)) - before,
                    path, started)


def _space_from_dict(data: dict[str, Any]) -> SearchSpace:
    from spaces import Param

    base = default_space(data["rule"])
    params = {n: Param(n, p["low"], p["high"], p["log"]) for n, p in data["params"].items()}
    return SearchSpace(data["rule"], params, data["fixed"],
                       known=base.known)
