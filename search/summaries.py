"""Summaries of transfer and robustness studies, read from their stored trials alone.

They live apart from ``search.transfer`` and ``search.robustness`` (which run studies through
Ray Tune) so that what only reads a study, ``report``, ``transfer-summary`` and
``robustness-summary``, never imports Ray: importing it took seconds before any work began.
Nothing here may import Ray, torch or a module that does (``search.planned`` and
``search.recording`` do); ``tests/test_transfer_report.py`` checks it.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from catalogue.architectures import ARCHITECTURES, Family, family_of
from catalogue.errors import UsageError
from search import storage as st
from search.beyond_accuracy import MEASURES
from search.beyond_accuracy import summary as beyond_accuracy
from search.scores import task_of_dataset
from search.specs import BACKPROP, SELECTIONS

TRANSFERRED = "transferred"  # a transfer run's role; backprop baselines have BACKPROP

# --- studies of planned runs -----------------------------------------------------------------
# How a study of planned runs is read: search.planned, which runs them through Ray, writes
# them under these keys and reads them back with these same functions.

RUN_KEY = "run_key"  # trial attribute: the planned run a trial is
PLANNED = "planned_runs"  # study attribute: the keys of every run the study is to hold


def finished_keys(study: optuna.Study) -> set[str]:
    """Runs that need not run again: completed, or diverged."""
    keys = set()
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get(RUN_KEY)
        if key and (t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "diverged"):
            keys.add(key)
    return keys


def completeness(attrs: dict[str, Any], finished: set[str]) -> dict[str, Any]:
    """How many planned runs a summary covers: a partial study must never read as final."""
    planned = set(attrs.get(PLANNED, []))
    if not planned:  # a study from before plans were kept: nothing to compare against
        return {"planned_runs": None, "missing_runs": None}
    return {"planned_runs": len(planned), "missing_runs": len(planned - finished)}


def latest_by_key(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """Each run's latest trial: a re-run supersedes an errored one."""
    latest: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if RUN_KEY in t.user_attrs:
            latest[t.user_attrs[RUN_KEY]] = t
    return latest


# --- transfer studies ------------------------------------------------------------------------

def depth_of(arch: str) -> int | None:
    """The architecture's value on its family's transfer axis (``Architecture.scale``: its
    depth, or an RNN's hidden units); the name is kept for the depth families."""
    return ARCHITECTURES.get(arch).scale if arch in ARCHITECTURES else None


MIXED_AXES = Family("mixed", "scale", "each family's scale (depth or hidden units)")


def axis_of(archs: list[str]) -> Family:
    """The transfer axis the architectures share (depth for ResNets and MLPs, hidden units
    for RNNs); targets of families with different axes share none (``MIXED_AXES``)."""
    axes = {(f.axis, f.label): f for f in (family_of(ARCHITECTURES.get(a).family)
                                           for a in archs if a in ARCHITECTURES)}
    if not axes:
        return Family("unknown")  # none creditsweep knows: the depth axis
    return next(iter(axes.values())) if len(axes) == 1 else MIXED_AXES


def baseline_study_of(study: optuna.Study, storage: Any) -> optuna.Study | None:
    """The shared baseline study a transfer study names, if any."""
    name = study.user_attrs.get("baseline_study")
    return st.load_study(storage, name) if name else None


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(trials: list[FrozenTrial]) -> dict[str, Any]:
    """Mean and spread over seeds of one setting on one target."""
    values = [t.value for t in trials if t.state == TrialState.COMPLETE]
    diverged = sum(t.user_attrs.get("status") == "diverged" for t in trials)
    angles = [t.user_attrs.get("diagnostics", {}).get("weight_angle_mean")
              for t in trials if t.state == TrialState.COMPLETE]
    angles = [a for a in angles if a is not None and math.isfinite(a)]
    ratios = [t.user_attrs.get("stability_ratio_max") for t in trials]
    ratios = [r for r in ratios if r is not None and math.isfinite(r)]
    mean, std = _stats(values)
    # A diverged or failed seed counts as 0: what the setting is worth if that seed ran.
    worst = min([t.value if t.state == TrialState.COMPLETE else 0.0 for t in trials],
                default=None)
    return {"mean": mean, "std": std, "runs": len(trials), "completed": len(values),
            "worst": worst, "diverged_fraction": diverged / len(trials) if trials else None,
            "weight_angle_mean": statistics.fmean(angles) if angles else None,
            "stability_ratio_max": max(ratios) if ratios else None, **beyond_accuracy(trials)}


def robust_choice(cells: dict[Any, dict[str, Any]]) -> Any:
    """The setting with the best worst-seed accuracy; ties go to the larger stability margin
    of B (the smaller peak lr_B x curvature / limit)."""
    return max(cells, key=lambda n: (cells[n]["worst"] if cells[n]["worst"] is not None
                                     else -1.0, -(cells[n]["stability_ratio_max"] or 0.0)),
               default=None)


def summarize_transfer(study: optuna.Study, select: str | None = None,
                       baselines: optuna.Study | None = None) -> dict[str, Any]:
    """Per target: backprop and the transferred setting over seeds, and the gap.

    ``select`` (default: the study's own): ``best`` reports, per target, the setting with the
    best mean there; ``robust`` reports one setting everywhere, chosen on the source
    architecture by ``robust_choice``. ``baselines``: the shared study holding the backprop
    runs, when the transfer study names one (``baseline_study_of``).
    """
    attrs = study.user_attrs
    select = select or attrs.get("select", "best")
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    groups: dict[tuple[str, str, Any], list[FrozenTrial]] = {}
    for source in (study, baselines) if baselines is not None else (study,):
        for t in latest_by_key(source).values():
            a = t.user_attrs
            groups.setdefault((a["target_arch"], a["role"], a["source_trial"]), []).append(t)
    settings_on = {target: {k[2]: _cell(ts) for k, ts in groups.items()
                            if k[0] == target and k[1] == TRANSFERRED}
                   for target in {k[0] for k in groups}}
    source_arch = attrs.get("arch")
    chosen = robust_choice(settings_on.get(source_arch, {})) if select == "robust" else None
    rows = []
    targets = attrs.get("targets") or sorted({k[0] for k in groups})
    for target in targets:
        baseline = _cell(groups.get((target, BACKPROP, None), []))
        settings = settings_on.get(target, {})
        if select == "robust":
            best_trial = chosen if chosen in settings else None
        else:
            best_trial = max(settings, key=lambda n: settings[n]["mean"]
                             if settings[n]["mean"] is not None else -1.0, default=None)
        best = settings.get(best_trial, {})
        all_runs = [t for k, ts in groups.items() if k[0] == target and k[1] == TRANSFERRED
                    for t in ts]
        diverged = sum(t.user_attrs.get("status") == "diverged" for t in all_runs)
        gap = (best["mean"] - baseline["mean"]
               if best.get("mean") is not None and baseline["mean"] is not None else None)
        retuned = attrs.get("retuned", {}).get(target, {}).get("value")
        rows.append({"rule": attrs.get("rule"), "target": target, "depth": depth_of(target),
                     "mean": best.get("mean"), "std": best.get("std"),
                     "worst": best.get("worst"), "best_source_trial": best_trial,
                     "completed": best.get("completed"),
                     "backprop_completed": baseline["completed"],
                     "backprop_mean": baseline["mean"], "backprop_std": baseline["std"],
                     "gap_to_backprop": gap,
                     "diverged_fraction": diverged / len(all_runs) if all_runs else None,
                     "retuned": retuned, "weight_angle_mean": best.get("weight_angle_mean"),
                     "settings": {str(k): v for k, v in settings.items()},
                     **{f"{prefix}{key}{suffix}": cell.get(f"{key}{suffix}")
                        for prefix, cell in (("", best), ("backprop_", baseline))
                        for key in MEASURES for suffix in ("", "_std")}})
    values = {str(t.user_attrs["source_trial"]): t.user_attrs.get("metaparameters") or {}
              for ts in groups.values() for t in ts if t.user_attrs["role"] == TRANSFERRED}
    finished = finished_keys(study) | (finished_keys(baselines) if baselines is not None
                                       else set())
    axis = axis_of(list(targets))
    return {"study": study.study_name, "rule": attrs.get("rule"),
            "source_study": attrs.get("source_study"), "axis": axis.axis,
            "axis_label": axis.label,
            "score_label": task_of_dataset(attrs.get("dataset")).score_label,
            "seeds": attrs.get("seeds"),
            "epochs": attrs.get("epochs"), "select": select, "selected_trial": chosen,
            **completeness(attrs, finished), "transferred_values": values, "rows": rows}


# --- robustness studies ----------------------------------------------------------------------

def summarize_robustness(study: optuna.Study) -> dict[str, Any]:
    """Per rule and noise variance: val top-1 over seeds (a diverged seed is 0 in ``worst``,
    and left out of the mean), the fraction that diverged, and the drop from no noise."""
    attrs = study.user_attrs
    groups: dict[tuple[str, float], list[FrozenTrial]] = {}
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
