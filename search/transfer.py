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
from dataclasses import replace
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from catalogue.architectures import ARCHITECTURES
from catalogue.errors import UsageError
from catalogue.rule import rule_declaration
from catalogue.training import TrainConfig
from search import storage as st
from search.beyond_accuracy import MEASURES
from search.beyond_accuracy import summary as beyond_accuracy
from search.identity import check_study_fits, create_or_load_study
from search.lease import Lease, study_leases
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
from search.specs import (
    DEFAULTS_SOURCE,
    SELECTIONS,
    SweepSpec,
    TransferSpec,
    resolve_training,
)
from search.sweep import top_up
from search.trainable import split_sampled

BACKPROP, TRANSFERRED = "backprop", "transferred"
DEFAULT_EPOCHS = 5

__all__ = ["DEFAULTS_SOURCE", "TransferSpec", "run_transfer", "summarize"]


def run_key(role: str, target: str, source_trial: int | None, seed: int) -> str:
    return f"{role}|{target}|{source_trial}|{seed}"


def depth_of(arch: str) -> int | None:
    return ARCHITECTURES.get(arch).depth if arch in ARCHITECTURES else None


def top_settings(source: optuna.Study, k: int) -> list[tuple[int, dict[str, float]]]:
    """(trial number, metaparameters incl. fixed ones) of the k best completed trials; the
    training options the sweep held fixed are the source's configuration (``source_training``),
    which every run of the transfer, the baseline included, trains under."""
    done = st.ranked_complete(source)
    if not done:
        raise UsageError(f"source study {source.study_name!r} has no completed trial")
    if k > len(done):
        raise UsageError(f"--top-k {k} but source study {source.study_name!r} has only "
                         f"{len(done)} completed trials")
    fixed = _fixed_metaparameters(source)
    return [(t.number, {**fixed, **t.params}) for t in done[:k]]


def _fixed_metaparameters(source: optuna.Study) -> dict[str, Any]:
    return split_sampled(source.user_attrs["rule"], _fixed(source))[0]


def _fixed(source: optuna.Study) -> dict[str, Any]:
    return source.user_attrs.get("space", {}).get("fixed", {})


def source_training(source: optuna.Study) -> dict[str, Any]:
    """The training options the source's trials ran under: its resolved options and the
    options its sweep held fixed (``--train-subset``, ``--lr`` …), with its epochs."""
    attrs = source.user_attrs
    options = split_sampled(attrs["rule"], _fixed(source))[1]
    return {**attrs.get("train", {}), **options, "epochs": int(attrs.get("epochs",
                                                                         DEFAULT_EPOCHS))}


def baseline_runs(spec: TransferSpec) -> list[PlannedRun]:
    """Backprop on every target and seed (the same whichever rule is transferred)."""
    return [PlannedRun(run_key(BACKPROP, target, None, seed),
                       {"rule": BACKPROP, "arch": target, "seed": seed}, {},
                       {"role": BACKPROP, "target_arch": target, "seed": seed,
                        "source_trial": None})
            for target in spec.targets for seed in range(spec.seeds)]


def plan_runs(spec: TransferSpec, settings: list[tuple[int | None, dict[str, float]]],
              baselines: bool = True, targets: list[str] | None = None) -> list[PlannedRun]:
    """Backprop (unless ``baselines`` is False: they run in a shared baseline study) and
    every setting on every target (default: the spec's) and seed."""
    targets = list(spec.targets if targets is None else targets)
    runs = baseline_runs(spec) if baselines else []
    for target in targets:
        for seed in range(spec.seeds):
            for number, params in settings:
                runs.append(PlannedRun(
                    run_key(TRANSFERRED, target, number, seed),
                    {"rule": spec.rule, "arch": target, "seed": seed}, params,
                    {"role": TRANSFERRED, "target_arch": target, "seed": seed,
                     "source_study": spec.source_name(), "source_trial": number,
                     "metaparameters": params}))
    return runs


def run_transfer(spec: TransferSpec, progress: Callable[[str], None] = print_progress
                 ) -> dict[str, Any]:
    """Run (or complete) the transfer study; returns its summary."""
    started = time.perf_counter()
    spec.validate()
    url = st.storage_url(spec.storage)
    storage = st.open_storage(url)
    if spec.defaults:
        settings = [(None, dict(rule_declaration(spec.rule).defaults))]
        source_options: dict[str, Any] = {}
    else:
        source = _load_source(storage, spec)
        spec = _with_source_dataset(spec, source)
        settings = top_settings(source, spec.top_k)
        source_options = source_training(source)
    base = transfer_base(spec, source_options)
    if not spec.defaults:
        progress(f"every run trains under source study {spec.source_name()}'s configuration: "
                 f"{describe_training(base, spec.train)}")
    studies = _study_attrs(spec, base)
    for study_name, (attrs, identity) in studies.items():
        check_study_fits(storage, study_name, attrs, identity)
    spec.execution.connect()  # after every check that needs no Ray: they answer at once
    with study_leases(storage.engine, list(studies), "transfer") as leases:
        study, baselines = _run_held(spec, storage, url, settings, base, studies, progress,
                                     leases)
    summary = summarize(study, baselines=baselines)
    summary["wall_time"] = time.perf_counter() - started
    return summary


def _load_source(storage: Any, spec: TransferSpec) -> optuna.Study:
    """The source sweep study, or one line that says which flags name it."""
    try:
        source = optuna.load_study(study_name=spec.source_name(), storage=storage)
    except KeyError:
        candidates = [n for n in st.study_names(storage)
                      if n.startswith(f"{spec.rule}.{spec.source}.")]
        hint = (f"; sweeps of {spec.rule} on {spec.source}: {', '.join(candidates[:5])} "
                "(name one with --source-study, or give its --dataset)" if candidates else
                f"; no sweep of {spec.rule} on {spec.source} here (run it first, or name "
                "the source with --source-study, or its --dataset)")
        raise UsageError(f"no source study {spec.source_name()!r}{hint}") from None
    if source.user_attrs.get("kind", "sweep") != "sweep" or "rule" not in source.user_attrs:
        raise UsageError(f"source study {source.study_name!r} is not a creditsweep sweep")
    if source.user_attrs["rule"] != spec.rule:
        raise UsageError(f"source study {source.study_name!r} is a sweep of "
                         f"{source.user_attrs['rule']!r}, not {spec.rule!r}")
    return source


def _with_source_dataset(spec: TransferSpec, source: optuna.Study) -> TransferSpec:
    """The transfer trains on the source's dataset; a different ``--dataset`` is refused."""
    dataset = source.user_attrs.get("dataset", spec.dataset_name())
    if spec.dataset is not None and spec.dataset != dataset:
        raise UsageError(f"--dataset {spec.dataset}: source study {source.study_name!r} was "
                         f"swept on {dataset}; its settings transfer on the same data")
    return replace(spec, dataset=dataset)


def transfer_base(spec: TransferSpec, source_options: dict[str, Any]) -> dict[str, Any]:
    """The training options of every run of the transfer, transferred and baseline alike:
    the source's configuration, then this command's own options, resolved and checked
    against the data before anything is written."""
    merged = {**source_options, **spec.train}
    epochs = spec.epochs or int(merged.pop("epochs", DEFAULT_EPOCHS))
    merged.pop("epochs", None)
    for key in ("rule", "arch", "dataset", "seed", "metaparameters"):
        merged.pop(key, None)
    TrainConfig.from_dict({**merged, "rule": spec.rule, "arch": spec.targets[0],
                           "dataset": spec.dataset_name(), "epochs": epochs})
    train = resolve_training(spec.dataset_name(), merged, spec.trained_archs())
    return {**train, "dataset": spec.dataset_name(), "epochs": epochs}


def describe_training(base: dict[str, Any], given: dict[str, Any]) -> str:
    """The options that decide what a run means, and where each came from (the source, or
    this command's flags)."""
    shown = ("dataset", "epochs", "train_subset", "val_subset", "lr", "batch_size",
             "feedback_lr_multiplier", "data_dir")
    parts = []
    for key in shown:
        if base.get(key) is None:
            continue
        origin = " (given here)" if key in given else ""
        parts.append(f"{key} {base[key]}{origin}")
    return ", ".join(parts)


def _study_attrs(spec: TransferSpec, base: dict[str, Any]
                 ) -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    """The attributes and identity of the transfer study and of its baseline study: the
    baseline trains under exactly the transferred runs' options (``base``)."""
    identity = ("dataset", "epochs", "train")
    epochs = base["epochs"]
    studies = {spec.study_name(): ({
        "kind": "transfer", "rule": spec.rule, "arch": spec.source or DEFAULTS_SOURCE,
        "dataset": spec.dataset_name(), "source_study": spec.source_name(),
        "targets": spec.targets, "epochs": epochs, "seeds": spec.seeds, "top_k": spec.top_k,
        "select": spec.select, "train": base, "baseline_study": spec.baseline_study,
        "versions": provenance()},
        ("rule", "arch", *identity))}
    if spec.baseline_study:
        studies[spec.baseline_study] = ({"kind": "baseline", "dataset": spec.dataset_name(),
                                         "epochs": epochs, "train": base}, identity)
    return studies


def _run_held(spec: TransferSpec, storage: Any, url: str,
              settings: list[tuple[int | None, dict[str, float]]], base: dict[str, Any],
              studies: dict[str, tuple[dict[str, Any], tuple[str, ...]]],
              progress: Callable[[str], None], leases: list[Lease]
              ) -> tuple[optuna.Study, optuna.Study | None]:
    """The transfer study's runs, under its leases: (the study, its baseline study)."""
    baselines = None
    if spec.baseline_study:
        baselines = create_or_load_study(storage, spec.baseline_study,
                                         *studies[spec.baseline_study])
    study = create_or_load_study(storage, spec.study_name(), *studies[spec.study_name()])

    def run(target_study: optuna.Study, planned: list[PlannedRun]) -> None:
        # Kept before the runs start, so that a summary of an interrupted study can say
        # how many are missing.
        note_planned(study, [r.key for r in planned])
        done = finished_keys(target_study)
        runs = [r for r in planned if r.key not in done]
        progress(f"{target_study.study_name}: {len(runs)} runs to do, {len(done)} reused")
        if runs:
            run_planned(spec.execution, url, target_study.study_name, runs, base, progress,
                        leases)

    if spec.select == "robust" and len(settings) > 1:
        # Every setting on the source first; only the one chosen there goes further.
        run(study, plan_runs(spec, settings, baselines=False, targets=[spec.source]))
        chosen = summarize(study, "robust")["selected_trial"]
        study.set_user_attr("selected_trial", chosen)
        settings = [s for s in settings if s[0] == chosen]
    run(study, plan_runs(spec, settings, baselines is None))
    if baselines is not None:
        run(baselines, baseline_runs(spec))
    if spec.retune:
        _retune(spec, base, url, study, progress)
    return study, baselines


def baseline_study_of(study: optuna.Study, storage: Any) -> optuna.Study | None:
    """The shared baseline study a transfer study names, if any."""
    name = study.user_attrs.get("baseline_study")
    return st.load_study(storage, name) if name else None


def _retune(spec: TransferSpec, base: dict[str, Any], url: str, study: optuna.Study,
            progress: Callable[[str], None]) -> None:
    """An N-trial TPE sweep per target (continued, not repeated, on a re-run), under the
    same training options as the transferred runs."""
    retuned = dict(study.user_attrs.get("retuned", {}))
    train = {k: v for k, v in base.items() if k not in ("dataset", "epochs")}
    for target in spec.targets:
        sweep = SweepSpec(rule=spec.rule, arch=target, dataset=spec.dataset_name(),
                          epochs=base["epochs"], storage=url, execution=spec.execution,
                          train=train)
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


def _cell(trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
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


def summarize(study: optuna.Study, select: str | None = None,
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
    groups: dict[tuple[str, str, Any], list[optuna.trial.FrozenTrial]] = {}
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
    return {"study": study.study_name, "rule": attrs.get("rule"),
            "source_study": attrs.get("source_study"), "seeds": attrs.get("seeds"),
            "epochs": attrs.get("epochs"), "select": select, "selected_trial": chosen,
            **completeness(attrs, finished), "transferred_values": values, "rows": rows}
