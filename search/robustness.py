"""Robustness studies: each rule trained under noisy feedback-weight updates.

After every optimizer step B += lr * xi, xi ~ N(0, v), for each variance v and seed (Kunin et
al.'s experiment: the non-local rules are expected to keep their accuracy). All runs land in
one study; a re-run reuses finished ones.

Backprop has no B of its own, so for a fair comparison the noise perturbs what carries its
error backward: a transported copy of W. The copy starts equal to W, takes W's every update
(Kolen-Pollack's mechanism with its decay equal to W's weight decay, so without noise it is
W exactly and the run is backprop), and receives the same noise as every other rule's B; its
forward weights are untouched, as for every rule, and nothing pulls the copy back to W.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from search import storage as st
from search.beyond_accuracy import summary as beyond_accuracy
from search.identity import check_study_fits, create_or_load_study
from search.lease import study_leases
from search.planned import (
    PlannedRun,
    completeness,
    finished_keys,
    latest_by_key,
    note_planned,
    run_planned,
)
from search.provenance import provenance
from search.recording import print_progress
from search.specs import BACKPROP, RobustnessSpec


def plan_runs(spec: RobustnessSpec) -> list[PlannedRun]:
    runs = []
    for rule in spec.rules:
        for noise in spec.noise:
            for seed in range(spec.seeds):
                config = spec.config_of(rule, noise, seed)
                meta = config.pop("metaparameters", {})
                runs.append(PlannedRun(
                    f"{rule}|{noise!r}|{seed}", config, meta,
                    {"rule": rule, "noise": float(noise), "seed": seed,
                     "mechanism": "transported copy of W" if rule == BACKPROP else "B"}))
    return runs


def run_robustness(spec: RobustnessSpec, progress: Callable[[str], None] = print_progress
                   ) -> dict[str, Any]:
    """Run (or complete) the robustness study; returns its summary."""
    started = time.perf_counter()
    spec = spec.resolved()
    url = st.storage_url(spec.storage)
    storage = st.open_storage(url)
    name = spec.study_name()
    try:
        earlier = optuna.load_study(study_name=name, storage=storage).user_attrs
    except KeyError:
        earlier = {}
    # A re-run may add rules and variances: the study keeps the union.
    rules = list(earlier.get("rules", [])) + [r for r in spec.rules
                                              if r not in earlier.get("rules", [])]
    noise = sorted(set(earlier.get("noise", [])) | set(spec.noise))
    attrs = {"kind": "robustness", "rule": ",".join(rules), "arch": spec.arch,
             "dataset": spec.dataset, "rules": rules, "noise": noise,
             "seeds": max(spec.seeds, earlier.get("seeds", 0)), "epochs": spec.epochs,
             "train": spec.train, "versions": provenance()}
    identity = ("arch", "dataset", "epochs", "train")
    check_study_fits(storage, name, attrs, identity)
    spec.execution.connect()  # after every check that needs no Ray: they answer at once
    with study_leases(storage.engine, [name], "robustness") as leases:
        study = create_or_load_study(storage, name, attrs, identity)
        planned = plan_runs(spec)
        note_planned(study, [r.key for r in planned])
        done = finished_keys(study)
        runs = [r for r in planned if r.key not in done]
        progress(f"robustness {name}: {len(runs)} runs to do, {len(done)} reused")
        if runs:
            base = {**spec.train, "arch": spec.arch, "dataset": spec.dataset,
                    "epochs": spec.epochs}
            run_planned(spec.execution, url, name, runs, base, progress, leases)
    summary = summarize(study)
    summary["wall_time"] = time.perf_counter() - started
    return summary


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Per rule and noise variance: val top-1 over seeds (a diverged seed is 0 in ``worst``,
    and left out of the mean), the fraction that diverged, and the drop from no noise."""
    attrs = study.user_attrs
    groups: dict[tuple[str, float], list[optuna.trial.FrozenTrial]] = {}
    for t in latest_by_key(study).values():
        groups.setdefault((t.user_attrs["rule"], float(t.user_attrs["noise"])), []).append(t)
    rows = []
    for rule in attrs.get("rules") or sorted({k[0] for k in groups}):
        clean = None
        for noise in sorted({k[1] for k in groups if k[0] == rule}):
            trials = groups[(rule, noise)]
            values = [t.value for t in trials if t.state == TrialState.COMPLETE]
            mean = statistics.fmean(values) if values else None
            if noise == 0:
                clean = mean
            rows.append({
                "rule": rule, "noise": noise, "mean": mean,
                "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
                "worst": min([t.value if t.state == TrialState.COMPLETE else 0.0
                              for t in trials], default=None),
                "runs": len(trials), "completed": len(values),
                "diverged_fraction": sum(t.user_attrs.get("status") == "diverged"
                                         for t in trials) / len(trials),
                "drop": (mean - clean) if mean is not None and clean is not None else None,
                **beyond_accuracy(trials)})
    return {"study": study.study_name, "arch": attrs.get("arch"),
            "dataset": attrs.get("dataset"), "seeds": attrs.get("seeds"),
            "epochs": attrs.get("epochs"), **completeness(attrs, finished_keys(study)),
            "rows": rows}
