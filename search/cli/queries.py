"""``creditsweep status | best | trials``: read-only, instant (no torch, no Ray).

They never create a database or Optuna's tables, and they read any single-objective study
the way it was written (maximize or minimize); a study they cannot use is one line, exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from catalogue.errors import UsageError
from search.cli.base import Command
from search.cli.output import Column, Listing, emit, general, number


def _storage(args: argparse.Namespace):
    from search import storage as st

    url = st.storage_url(args.storage)
    return url, st.open_storage(url, create=False)


def run_status(args: argparse.Namespace) -> int:
    from search import storage as st

    url, storage = _storage(args)
    rows = st.study_summaries(storage)
    emit(Listing(f"studies in {st.redact(url)}", [
        Column("study"), Column("kind"), Column("rule"), Column("arch"), Column("dataset"),
        Column("direction"), Column("complete", right=True), Column("failed", right=True),
        Column("pruned", right=True), Column("running", right=True),
        Column("best", show=number(), right=True)], rows), args.format)
    return 0


def _study_arguments(p: argparse.ArgumentParser, by_parts: bool) -> None:
    p.add_argument("--study", default=None, help="study name (list: creditsweep status)"
                   + ("; or name it by --rule, --arch and --dataset" if by_parts else ""))
    if by_parts:
        p.add_argument("--rule", help="with --arch and --dataset: the study RULE.ARCH.DATASET")
        p.add_argument("--arch", help="architecture of the study")
        p.add_argument("--dataset", help="dataset of the study")


def _study(args: argparse.Namespace):
    from search import storage as st
    from search.specs import study_name_for

    name = args.study
    parts = [getattr(args, k, None) for k in ("rule", "arch", "dataset")]
    if name and any(parts):
        raise UsageError("give either --study or --rule/--arch/--dataset, not both")
    if not name:
        if not all(parts):
            raise UsageError(f"{args.command} needs --study NAME (list: creditsweep status)"
                             + (", or all of --rule, --arch, --dataset"
                                if hasattr(args, "rule") else ""))
        name = study_name_for(*parts)
    _, storage = _storage(args)
    return st.load_study(storage, name)


def run_best(args: argparse.Namespace) -> int:
    from search import storage as st

    study = _study(args)
    best = st.best_trial(study)
    fixed = (study.user_attrs.get("space") or {}).get("fixed", {})
    rows = [{"parameter": k, "value": v, "fixed": False} for k, v in best.params.items()]
    rows += [{"parameter": k, "value": v, "fixed": True} for k, v in fixed.items()]
    document = {"study": study.study_name, "number": best.number, "value": best.value,
                "params": best.params, "fixed": fixed,
                "diagnostics": best.user_attrs.get("diagnostics", {}),
                "curvature": best.user_attrs.get("curvature")}
    curvature = best.user_attrs.get("curvature") or {}
    measured = "".join(f", {label} {curvature[key]:.4g}" for key, label in (
        ("top_eigenvalue", "top Hessian eigenvalue"), ("generalization_gap", "gap"))
        if isinstance(curvature.get(key), (int, float)))
    by_arch = best.user_attrs.get("val_top1_by_arch") or {}
    if by_arch:  # a transfer-aware sweep: the value is an objective over architectures
        document["val_top1_by_arch"] = by_arch
        document["diverged_archs"] = best.user_attrs.get("diverged_archs") or {}
        measured += (f" ({study.user_attrs.get('objective')} over "
                     + ", ".join(f"{a} {v:.4f}" for a, v in by_arch.items()) + ")")
    emit(Listing(f"best of {study.study_name}: trial {best.number}, value {best.value:.4f}"
                 f"{measured}",
                 [Column("parameter"), Column("value", show=_value, right=True),
                  Column("fixed")], rows, document=document), args.format)
    return 0


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else general(value)


def run_trials(args: argparse.Namespace) -> int:
    from search import storage as st

    study = _study(args)
    rows = st.trial_rows(study)
    keys = list(rows[0]) if rows else ["number", "state", "value"]
    columns = [Column(k, k.removeprefix("param_"), right=k in ("number", "value", "epochs"))
               for k in keys]
    emit(Listing(f"trials of {study.study_name}", columns, rows), args.format)
    return 0


STATUS = Command("status", "every study: rule, arch, dataset, counts, best",
                 lambda p: None, run_status, shared=("storage", "format"))
BEST = Command("best", "the best setting of a study",
               lambda p: _study_arguments(p, by_parts=True), run_best,
               shared=("storage", "format"))
TRIALS = Command("trials", "every trial of a study",
                 lambda p: _study_arguments(p, by_parts=False), run_trials,
                 shared=("storage", "format"))
