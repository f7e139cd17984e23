"""Transfer studies: a source study's top-k settings re-run on other architectures.

For every target architecture and seed, each transferred setting and a backprop baseline (same
schedule) run as Ray Tune trials and land in one Optuna study, each trial carrying its role,
source study and trial, target architecture and seed. A run's key makes re-running the command
reuse finished runs. ``--retune N`` also runs an N-trial TPE sweep on every target, so
transferred settings can be compared against settings tuned where they are used.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from catalogue.architectures import ARCHITECTURES
from catalogue.errors import UsageError
from catalogue.rule import rule_declaration
from search import storage as st
from search.recording import OptunaRecorder, Recorder, print_progress, reconcile
from search.specs import DEFAULTS_SOURCE, SweepSpec, TransferSpec, experiment_folder
from search.sweep import top_up
from search.trainable import run_trial
from spaces import SearchSpace

BACKPROP = "backprop"
DEFAULT_EPOCHS = 5

__all__ = ["DEFAULTS_SOURCE", "TransferSpec", "run_transfer", "summarize"]


@dataclass(frozen=True)
class Run:
    """One training run of a transfer study, identified by ``key`` across re-runs."""

    role: str  # transferred | backprop
    target: str
    seed: int
    source_trial: int | None
    metaparameters: dict[str, float]

    @property
    def key(self) -> str:
        return f"{self.role}|{self.target}|{self.source_trial}|{self.seed}"

    def attrs(self, source_study: str) -> dict[str, Any]:
        return {"role": self.role, "target_arch": self.target, "seed": self.seed,
                "source_study": source_study, "source_trial": self.source_trial,
                "metaparameters": self.metaparameters, "run_key": self.key}


def depth_of(arch: str) -> int | None:
    return ARCHITECTURES.get(arch).depth if arch in ARCHITECTURES else None


def top_settings(source: optuna.Study, k: int) -> list[tuple[int, dict[str, float]]]:
    """(trial number, metaparameters incl. fixed values) of the k best completed trials."""
    done = st.ranked_complete(source)
    if not done:
        raise UsageError(f"source study {source.study_name!r} has no completed trial")
    if k > len(done):
        raise UsageError(f"--top-k {k} but source study {source.study_name!r} has only "
                         f"{len(done)} completed trials")
    fixed = source.user_attrs.get("space", {}).get("fixed", {})
    return [(t.number, {**fixed, **t.params}) for t in done[:k]]


def plan_runs(spec: TransferSpec, settings: list[tuple[int, dict[str, float]]]) -> list[Run]:
    runs = []
    for target in spec.targets:
        for seed in range(spec.seeds):
            runs.append(Run(BACKPROP, target, seed, None, {}))
            for number, params in settings:
                runs.append(Run("transferred", target, seed, number, params))
    return runs


def finished_keys(study: optuna.Study) -> set[str]:
    """Runs that need not run again: completed, or diverged (a result, not an accident)."""
    keys = set()
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("run_key")
        if key and (t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "diverged"):
            keys.add(key)
    return keys


class _TransferRecorder(Recorder):
    def __init__(self, *args: Any, source_study: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source_study = source_study

    def describe(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        run = config["run"]
        return {}, Run(run["role"], run["target"], run["seed"], run["source_trial"],
                       run["metaparameters"]).attrs(self.source_study)


def _transfer_entry(config: dict[str, Any], base: dict[str, Any], rule: str,
                    threads: int) -> None:
    run = config["run"]
    role_rule = BACKPROP if run["role"] == BACKPROP else rule
    run_trial(run["metaparameters"], {**base, "rule": role_rule, "arch": run["target"],
                                      "seed": run["seed"]}, {}, threads)


def run_transfer(spec: TransferSpec, progress: Callable[[str], None] = print_progress
                 ) -> dict[str, Any]:
    """Run (or complete) the transfer study; returns its summary."""
    started = time.perf_counter()
    spec.validate()
    url = st.storage_url(spec.storage)
    storage = st.open_storage(url)
    if spec.defaults:
        settings = [(None, dict(rule_declaration(spec.rule).defaults))]
        source_attrs: dict[str, Any] = {}
    else:
        source = st.load_study(storage, spec.source_name())
        if source.user_attrs.get("rule", spec.rule) != spec.rule:
            raise UsageError(f"source study {source.study_name!r} is a sweep of "
                             f"{source.user_attrs['rule']!r}, not {spec.rule!r}")
        settings = top_settings(source, spec.top_k)
        source_attrs = source.user_attrs
    epochs = spec.epochs or int(source_attrs.get("epochs", DEFAULT_EPOCHS))
    base = {**source_attrs.get("train", {}), **spec.train, "dataset": spec.dataset,
            "epochs": epochs}
    spec.execution.connect()
    name = spec.study_name()
    study = st.create_or_load_study(storage, name, {
        "kind": "transfer", "rule": spec.rule, "arch": spec.source or DEFAULTS_SOURCE,
        "dataset": spec.dataset, "source_study": spec.source_name(), "targets": spec.targets,
        "epochs": epochs,
        "seeds": spec.seeds, "top_k": spec.top_k})
    done = finished_keys(study)
    runs = [r for r in plan_runs(spec, settings) if r.key not in done]
    progress(f"transfer {name}: {len(runs)} runs to do, {len(done)} reused")
    if runs:
        _run_all(spec, runs, base, url, name, spec.source_name(), progress)
    if spec.retune:
        _retune(spec, epochs, url, study, progress)
    summary = summarize(study)
    summary["wall_time"] = time.perf_counter() - started
    return summary


def _run_all(spec: TransferSpec, runs: list[Run], base: dict[str, Any], url: str, name: str,
             source_study: str, progress: Callable[[str], None]) -> None:
    from ray import tune

    experiment = f"{experiment_folder(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    recorder = _TransferRecorder(url, name, SearchSpace(spec.rule, {}), experiment,
                                 source_study=source_study)
    configs = [{"role": r.role, "target": r.target, "seed": r.seed,
                "source_trial": r.source_trial, "metaparameters": r.metaparameters}
               for r in runs]
    already = len(recorder.study.get_trials(deepcopy=False))
    trainable = spec.execution.trainable(_transfer_entry, base=base, rule=spec.rule,
                                         threads=spec.execution.threads)
    tuner = spec.execution.tuner(
        trainable, name=experiment, param_space={"run": tune.grid_search(configs)},
        callbacks=[OptunaRecorder(recorder, already + len(runs), already, progress)])
    reconcile(tuner.fit(), recorder)


def _retune(spec: TransferSpec, epochs: int, url: str, study: optuna.Study,
            progress: Callable[[str], None]) -> None:
    """An N-trial TPE sweep per target (continued, not repeated, on a re-run)."""
    retuned = dict(study.user_attrs.get("retuned", {}))
    for target in spec.targets:
        sweep = SweepSpec(rule=spec.rule, arch=target, dataset=spec.dataset, epochs=epochs,
                          storage=url, execution=spec.execution, train=spec.train)
        top_up(sweep, spec.retune, progress)
        target_study = st.load_study(st.open_storage(url), sweep.study_name())
        ranked = st.ranked_complete(target_study)
        retuned[target] = {"study": sweep.study_name(),
                           "value": ranked[0].value if ranked else None,
                           "trials": len(target_study.trials)}
    study.set_user_attr("retuned", retuned)


# --- summary ---------------------------------------------------------------------------------

def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Per target: backprop and each transferred setting over seeds; the best setting's gap."""
    attrs = study.user_attrs
    latest: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if "run_key" in t.user_attrs:
            latest[t.user_attrs["run_key"]] = t  # a re-run supersedes an errored run
    groups: dict[tuple[str, str, Any], list[optuna.trial.FrozenTrial]] = {}
    for t in latest.values():
        a = t.user_attrs
        groups.setdefault((a["target_arch"], a["role"], a["source_trial"]), []).append(t)
    rows = []
    targets = attrs.get("targets") or sorted({k[0] for k in groups})
    for target in targets:
        def cell(role: str, source_trial: Any) -> dict[str, Any]:
            trials = groups.get((target, role, source_trial), [])
            values = [t.value for t in trials if t.state == TrialState.COMPLETE]
            diverged = sum(t.user_attrs.get("status") == "diverged" for t in trials)
            angles = [t.user_attrs.get("diagnostics", {}).get("weight_angle_mean")
                      for t in trials if t.state == TrialState.COMPLETE]
            angles = [a for a in angles if a is not None and math.isfinite(a)]
            mean, std = _stats(values)
            return {"mean": mean, "std": std, "runs": len(trials), "completed": len(values),
                    "diverged_fraction": diverged / len(trials) if trials else None,
                    "weight_angle_mean": statistics.fmean(angles) if angles else None}

        baseline = cell(BACKPROP, None)
        settings = {k[2]: cell("transferred", k[2]) for k in groups
                    if k[0] == target and k[1] == "transferred"}
        best_trial = max(settings, key=lambda n: settings[n]["mean"]
                         if settings[n]["mean"] is not None else -1.0, default=None)
        best = settings.get(best_trial, {})
        all_runs = [t for k, ts in groups.items() if k[0] == target and k[1] == "transferred"
                    for t in ts]
        diverged = sum(t.user_attrs.get("status") == "diverged" for t in all_runs)
        gap = (best["mean"] - baseline["mean"]
               if best.get("mean") is not None and baseline["mean"] is not None else None)
        retuned = attrs.get("retuned", {}).get(target, {}).get("value")
        rows.append({"rule": attrs.get("rule"), "target": target, "depth": depth_of(target),
                     "mean": best.get("mean"), "std": best.get("std"),
                     "best_source_trial": best_trial,
                     "backprop_mean": baseline["mean"], "backprop_std": baseline["std"],
                     "gap_to_backprop": gap,
                     "diverged_fraction": diverged / len(all_runs) if all_runs else None,
                     "retuned": retuned, "weight_angle_mean": best.get("weight_angle_mean"),
                     "settings": {str(k): v for k, v in settings.items()}})
    return {"study": study.study_name, "rule": attrs.get("rule"),
            "source_study": attrs.get("source_study"), "seeds": attrs.get("seeds"),
            "epochs": attrs.get("epochs"), "rows": rows}
