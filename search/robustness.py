"""Robustness studies: each rule trained under noisy feedback-weight updates.

After every optimizer step B += lr * xi, xi ~ N(0, v), for each variance v and seed (Kunin et
al.'s experiment: the non-local rules are expected to keep their accuracy). All runs land in
one study; a re-run reuses finished ones.

Backprop has no B of its own: the noise perturbs a transported copy of W that carries its
error backward (``catalogue.noisy_backprop``), so without noise the run is backprop exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from search.driver import Session, StudyPlan, run_kind
from search.lease import study_key
from search.planned import PlannedRun, note_planned, run_planned
from search.provenance import provenance
from search.recording import print_progress
from search.specs import BACKPROP, RobustnessSpec
from search.summaries import finished_keys
from search.summaries import summarize_robustness as summarize


def plan_runs(spec: RobustnessSpec) -> list[PlannedRun]:
    runs = []
    for rule in spec.rules:
        for noise in spec.noise:
            for seed in range(spec.seeds):
                config = spec.config_of(rule, noise, seed)
                transported = rule == BACKPROP or config.get("copy_weights", False)
                meta = config.pop("metaparameters", {})
                runs.append(PlannedRun(
                    f"{rule}|{noise!r}|{seed}", config, meta,
                    {"rule": rule, "noise": float(noise), "seed": seed,
                     "mechanism": "transported copy of W" if transported else "B"}))
    return runs


class Robustness:
    """A robustness study as a kind of study (``search.driver``): a re-run may add rules and
    variances, and the study keeps the union."""

    def __init__(self, spec: RobustnessSpec) -> None:
        self.spec = spec.resolved()
        self.execution = self.spec.execution

    def prepare(self, session: Session) -> None:
        spec = self.spec
        try:
            earlier = optuna.load_study(study_name=spec.study_name(),
                                        storage=session.storage).user_attrs
        except KeyError:
            earlier = {}
        rules = list(earlier.get("rules", [])) + [r for r in spec.rules
                                                  if r not in earlier.get("rules", [])]
        noise = sorted(set(earlier.get("noise", [])) | set(spec.noise))
        self.attrs = {"kind": "robustness", "rule": ",".join(rules), "arch": spec.arch,
                      "dataset": spec.dataset, "rules": rules, "noise": noise,
                      "seeds": max(spec.seeds, earlier.get("seeds", 0)),
                      "epochs": spec.epochs, "train": spec.train, "versions": provenance()}

    def studies(self) -> list[StudyPlan]:
        name = self.spec.study_name()
        return [StudyPlan(name, self.attrs, ("arch", "dataset", "epochs", "train"),
                          study_key(name), f"robustness study {name}")]

    def run(self, session: Session) -> None:
        spec, name = self.spec, self.spec.study_name()
        study = session.study(name)
        planned = plan_runs(spec)
        note_planned(study, [r.key for r in planned])
        done = finished_keys(study)
        runs = [r for r in planned if r.key not in done]
        session.progress(f"robustness {name}: {len(runs)} runs to do, {len(done)} reused")
        if runs:
            base = {**spec.train, "arch": spec.arch, "dataset": spec.dataset,
                    "epochs": spec.epochs}
            run_planned(session.execution, session.url, name, runs, base, session.progress,
                        session.leases)

    def summary(self, session: Session) -> dict[str, Any]:
        summary = summarize(session.study(self.spec.study_name()))
        summary["wall_time"] = session.elapsed()
        return summary


def run_robustness(spec: RobustnessSpec, progress: Callable[[str], None] = print_progress
                   ) -> dict[str, Any]:
    """Run (or complete) the robustness study; returns its summary."""
    robustness = Robustness(spec)
    return run_kind(robustness, robustness.spec.storage, progress)
