"""A TPE sweep on Ray Tune whose every trial lands in an Optuna RDB study.

The driver records each Ray trial as it ends (``search.recording``), then reconciles the whole
ResultGrid against the study. Each trial carries its sweep's id, so the study counts what a
sweep has done: ``resume`` runs exactly the missing trials, however the driver stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray import tune

from search import storage as st
from search.cli_common import UsageError
from search.recording import OptunaRecorder, Recorder, print_progress, reconcile
from search.searchers import METRIC, MODE, make_search_alg
from search.trainable import run_trial, split_sampled
from spaces import SearchSpace, default_space

RAY_DIR_ENV = "CREDITSWEEP_RAY_DIR"
SWEEP_ATTR = "sweep:"  # study attribute prefix, one per sweep: its trial count and spec
SWEEP_TAG = "sweep"  # user attribute of every trial: the sweep it belongs to


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
        validate_trial_resources(self.cpus_per_trial, self.gpus_per_trial)
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
    """Where Ray keeps experiment folders: a local path (made absolute) or a URI (s3://…)."""
    path = flag or os.environ.get(RAY_DIR_ENV) or str(Path.home() / ".creditsweep" / "ray")
    if "://" in path:
        return path.rstrip("/")
    return str(Path(path).expanduser().resolve())


def validate_trial_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial trains on one device: a fraction of a GPU packs trials onto it, while more
    than one GPU would be reserved and left idle."""
    if cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {cpus_per_trial:g}")
    if not 0 <= gpus_per_trial <= 1:
        raise UsageError(f"--gpus-per-trial must be between 0 and 1 (a trial trains on one "
                         f"device; 0.5 packs two trials per GPU), got {gpus_per_trial:g}")


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


# --- running ---------------------------------------------------------------------------------

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
    """Validate, open the study (continuing it if it exists), register the sweep, run it."""
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
    sweep_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # One attribute per sweep: concurrent sweeps on one study never overwrite each other.
    study.set_user_attr(f"{SWEEP_ATTR}{sweep_id}", {"trials": spec.trials, "started": time.time(),
                                                    "spec": _spec_dict(spec)})
    return _run_trials(spec, space, url, study, sweep_id, 0, progress, started)


def _run_trials(spec: SweepSpec, space: SearchSpace, url: str, study: optuna.Study,
                sweep_id: str, done: int, progress: Callable[[str], None],
                started: float) -> SweepOutcome:
    """One Ray experiment that brings the sweep from ``done`` to ``spec.trials`` trials."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    evaluated = _evaluated_points(study, space) if spec.searcher == "tpe" else []
    experiment = sweep_id if done == 0 else f"{sweep_id}-resumed-{time.strftime('%H%M%S')}"
    recorder = Recorder(url, study.study_name, space, experiment, tags={SWEEP_TAG: sweep_id})
    # Offset by the history, so that a continued or resumed sweep does not redraw the random
    # start of the earlier one.
    search_alg = make_search_alg(spec.searcher, space, seed=spec.seed + len(evaluated) + done,
                                 max_concurrent=spec.max_concurrent,
                                 initial_points=spec.n_initial(), evaluated=evaluated)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs,
                               grace_period=1, reduction_factor=3)
                 if spec.scheduler == "asha" else FIFOScheduler())
    if evaluated:
        progress(f"continuing study {study.study_name}: TPE starts from {len(evaluated)} "
                 "earlier trials")
    storage_path = ray_dir(spec.ray_dir)
    experiment_path = f"{storage_path}/{experiment}"
    tuner = tune.Tuner(
        _resourced_trainable(spec, space),
        param_space=space.to_ray() if spec.searcher == "random" else {},
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=spec.trials - done,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=experiment, storage_path=storage_path, verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[OptunaRecorder(recorder, spec.trials, done, progress)]),
    )
    grid = tuner.fit()
    reconcile(grid, recorder, resume_hint=f"; once it is back, `creditsweep resume --study "
                                          f"{study.study_name}` runs the unrecorded trials")
    now_done = sweep_counts(recorder.study).get(sweep_id, 0)
    return _outcome(recorder.study, url, sweep_id, now_done - done, experiment_path, started)


def sweep_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials each sweep of the study has recorded: the ledger ``resume`` reads."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        sweep = t.user_attrs.get(SWEEP_TAG)
        if sweep is not None:
            counts[sweep] = counts.get(sweep, 0) + 1
    return counts


def _spec_dict(spec: SweepSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["space"] = spec.resolved_space().to_dict()
    data.pop("storage", None)  # never keep a URL (it may hold a password) in the study
    return data


def _outcome(study: optuna.Study, url: str, sweep_id: str, added: int, path: str,
             started: float) -> SweepOutcome:
    try:
        best = study.best_trial
        best_value, best_params = best.value, best.params
    except ValueError:
        best_value = best_params = None
    return SweepOutcome(study=study.study_name, storage=st.redact(url), sweep=sweep_id,
                        added=added, experiment_path=path, best_value=best_value,
                        best_params=best_params, wall_time=time.perf_counter() - started)


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
    study = st.load_study(st.open_storage(url), study_name)
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
    spec = _spec_from_dict(sweeps[chosen]["spec"], storage_flag, address)
    spec.validate()
    done = counts.get(chosen, 0)
    space = spec.resolved_space()
    if done >= spec.trials:
        progress(f"sweep {chosen} has all its {spec.trials} trials: nothing to resume")
        return _outcome(study, url, chosen, 0, "", started)
    ensure_ray(spec.address)
    check_resources(spec.cpus_per_trial, spec.gpus_per_trial)
    progress(f"resuming sweep {chosen}: {done} of {spec.trials} trials recorded, "
             f"{spec.trials - done} to run")
    return _run_trials(spec, space, url, study, chosen, done, progress, started)


def _spec_from_dict(data: dict[str, Any], storage: str | None, address: str | None
                    ) -> SweepSpec:
    data = dict(data)
    space = _space_from_dict(data.pop("space"))
    fields = {k: v for k, v in data.items() if k in SweepSpec.__dataclass_fields__}
    spec = SweepSpec(**{**fields, "space": space, "storage": storage})
    if address:
        spec.address = address
    return spec


def _space_from_dict(data: dict[str, Any]) -> SearchSpace:
    from spaces import Param

    base = default_space(data["rule"])
    params = {n: Param(n, p["low"], p["high"], p["log"]) for n, p in data["params"].items()}
    return SearchSpace(data["rule"], params, data["fixed"],
                       known=base.known)
