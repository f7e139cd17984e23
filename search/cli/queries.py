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
from search.records import best_line, default_columns, trial_measures
from search.scores import BY_ARCH, LEGACY_BY_ARCH, scores_by_arch



def _probe(study: Any, arch: str) -> str:
    """' (first N epochs)' for an architecture the sweep shortened (--arch-epochs)."""
    from search.reproduce import probe_epochs

    epochs = probe_epochs(study, arch)
    return f" (first {epochs} epoch{'' if epochs == 1 else 's'})" if epochs else ""

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
    from search.provenance import describe
    from search.reproduce import reproduce_command

    study = _study(args)
    best = st.best_trial(study)
    fixed = (study.user_attrs.get("space") or {}).get("fixed", {})
    rows = [{"parameter": k, "value": v, "fixed": False} for k, v in best.params.items()]
    rows += [{"parameter": k, "value": v, "fixed": True} for k, v in fixed.items()]
    document = {"study": study.study_name, "number": best.number, "value": best.value,
                "params": best.params, "fixed": fixed,
                "diagnostics": best.user_attrs.get("diagnostics", {}),
                "curvature": best.user_attrs.get("curvature")}
    measured = best_line(best.user_attrs)
    document["measures"] = {k: v for k, v in trial_measures(best.user_attrs).items()
                            if v is not None}
    by_arch = scores_by_arch(best.user_attrs)
    if by_arch:  # a transfer-aware sweep: the value is an objective over architectures
        document.update({k: best.user_attrs[k] for k in (BY_ARCH, LEGACY_BY_ARCH)
                         if k in best.user_attrs})
        document["diverged_archs"] = best.user_attrs.get("diverged_archs") or {}
        measured += (f" ({study.user_attrs.get('objective')} over "
                     + ", ".join(f"{a} {v:.4f}" + _probe(study, a) for a, v in by_arch.items())
                     + ")")
    command = reproduce_command(study, best, st.storage_url(args.storage))
    versions = study.user_attrs.get("versions")
    document.update(reproduce=command, versions=versions)
    emit(Listing(f"best of {study.study_name}: trial {best.number}, value {best.value:.4f}"
                 f"{measured}",
                 [Column("parameter"), Column("value", show=_value, right=True),
                  Column("fixed")], rows,
                 f"re-run it: {command}\nrecorded with {describe(versions)}",
                 document=document),
         args.format)
    return 0


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else general(value)


STATES = ("complete", "fail", "pruned", "running", "waiting")
# What the table shows unless --columns says otherwise (csv and json keep every column): the
# parameters and these, so that a study's trials fit a terminal.
def table_columns() -> tuple[str, ...]:
    return ("number", "state", "value", "epochs", *default_columns(), "fail_reason")


def trials_arguments(p: argparse.ArgumentParser) -> None:
    _study_arguments(p, by_parts=True)
    p.add_argument("--columns", default=None, metavar="A,B,…",
                   help="these columns, in this order (default: for a table, the parameters "
                        "and a compact set, empty ones dropped; for csv and json, all)")
    p.add_argument("--sort", default=None, metavar="COLUMN[:desc]",
                   help="sort by a column, ascending or with :desc descending, e.g. "
                        "--sort value:desc (default: trial number)")
    p.add_argument("--state", default=None, metavar="|".join(STATES),
                   help="only trials in these states, comma-separated (default: all)")
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="only the first N after sorting (default: all)")


def select_rows(rows: list[dict[str, Any]], *, state: str | None = None,
                sort: str | None = None, top: int | None = None) -> list[dict[str, Any]]:
    """The trials a query asks for: filtered by state, sorted (missing values last), cut."""
    if state is not None:
        wanted = {s.strip().lower() for s in state.split(",")}
        unknown = wanted - set(STATES)
        if unknown:
            raise UsageError(f"--state {state}: unknown state(s) {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(STATES)}")
        rows = [r for r in rows if r["state"].lower() in wanted]
    if sort is not None:
        key, _, order = sort.partition(":")
        if order not in ("", "asc", "desc"):
            raise UsageError(f"--sort {sort}: the order is asc or desc")
        if rows and key not in rows[0]:
            raise UsageError(f"--sort {sort}: no column {key!r}; columns: "
                             f"{', '.join(rows[0])}")
        present = [r for r in rows if r.get(key) is not None]
        missing = [r for r in rows if r.get(key) is None]
        rows = sorted(present, key=lambda r: _sortable(r[key]),
                      reverse=order == "desc") + missing
    if top is not None:
        if top < 1:
            raise UsageError(f"--top must be at least 1, got {top}")
        rows = rows[:top]
    return rows


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def trial_columns(rows: list[dict[str, Any]], fmt: str, wanted: str | None) -> list[str]:
    """The columns to print: the ones asked for, else every column for programs, and for a
    table the parameters and ``table_columns()`` that hold a value in some row."""
    from search.storage import PARAMS

    every = list(rows[0]) if rows else ["number", "state", "value"]
    if wanted is not None:
        keys = [k.strip() for k in wanted.split(",") if k.strip()]
        unknown = [k for k in keys if k not in every]
        if unknown or not keys:
            raise UsageError(f"--columns: no column {', '.join(map(repr, unknown)) or 'given'}"
                             f"; columns: {', '.join(every)}")
        return keys
    if fmt != "table":
        return every
    shown = [k for k in every if k in table_columns() or k.startswith((PARAMS, "top1_"))]
    return [k for k in shown if k in ("number", "state")
            or any(r.get(k) not in (None, "") for r in rows)]


def run_trials(args: argparse.Namespace) -> int:
    from search import storage as st

    study = _study(args)
    everything = st.trial_rows(study)
    rows = select_rows(everything, state=args.state, sort=args.sort, top=args.top)
    keys = trial_columns(everything, args.format, args.columns)
    table = args.format == "table"
    columns = [Column(k, _header(k) if table else k, squeeze=table and k == "fail_reason",
                      show=_short if table and k.startswith(st.PARAMS) else None,
                      right=k in ("number", "value", "epochs")) for k in keys]
    caption = (f"{len(rows)} of {len(everything)} trials" if len(rows) != len(everything)
               else "")
    emit(Listing(f"trials of {study.study_name}", columns, rows, caption), args.format)
    return 0


HEADERS = {"number": "#", "epochs": "ep", "fail_reason": "reason"}


def _header(key: str) -> str:
    """A table's header: a parameter's name, a measure's short header, or the key."""
    from search.records import MEASURES
    from search.storage import PARAMS

    if key.startswith(PARAMS):
        return key.removeprefix(PARAMS)
    if key in MEASURES:
        return MEASURES.get(key).header
    return HEADERS.get(key, key)


def _short(value: Any) -> str:
    """A parameter in a table: three significant digits are what a reader compares."""
    return f"{value:.3g}" if isinstance(value, float) else general(value)


STATUS = Command("status", "every study: rule, arch, dataset, counts, best",
                 lambda p: None, run_status, shared=("storage", "format"))
BEST = Command("best", "the best setting of a study",
               lambda p: _study_arguments(p, by_parts=True), run_best,
               shared=("storage", "format"))
TRIALS = Command("trials", "the trials of a study: filter, sort, choose columns",
                 trials_arguments, run_trials,
                 shared=("storage", "format"))
