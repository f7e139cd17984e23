"""``creditsweep transfer | transfer-summary``: settings re-run across depths."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from catalogue.errors import UsageError
from catalogue.training import option_notes, training_options
from search.cli.base import Command, add, comma_list
from search.cli.options import (ASSIGNED, add_training_options, execution_from_args,
                                training_values)
from search.cli.measure_columns import measure_columns
from search.cli.output import Column, Listing, emit, number
from search.cli.robustness import (completeness_caption, spread, study_next_steps,
                                   summary_study)
from search.specs import SELECTIONS, TransferSpec

SPEC_DEFAULTS = {f.name: f.default for f in fields(TransferSpec) if f.default is not MISSING}
SELECT_HELP = ("which transferred setting is reported: best = per target, the top-k setting "
               "with the best mean there (optimistic: it uses the target's own results); "
               "robust = one setting for every target, chosen on the source architecture "
               "alone: the best worst-seed val top-1, ties to B's larger stability margin")


def arguments(p: argparse.ArgumentParser) -> None:
    add(p, "--source", default=None, help="source architecture (or A,B,… for a transfer-aware "
                                          "sweep's study): its sweep study's best settings "
                                          "are transferred")
    p.add_argument("--defaults", action="store_true",
                   help="transfer the rule's official defaults instead of a study's best")
    p.add_argument("--targets", required=True,
                   help="comma-separated architectures (list: creditsweep models)")
    add(p, "--source-study", default=None, shown_default="RULE.SOURCE.DATASET",
        help="the source sweep study")
    add(p, "--name", default=None, shown_default="transfer.RULE.SOURCE.DATASET",
        help="the transfer study")
    add(p, "--top-k", type=int, default=SPEC_DEFAULTS["top_k"],
        help="how many of the source's best settings to transfer")
    add(p, "--seeds", type=int, default=SPEC_DEFAULTS["seeds"], help="seeds per run")
    add(p, "--retune", type=int, default=SPEC_DEFAULTS["retune"], metavar="N",
        help="also run an N-trial TPE sweep on each target")
    add(p, "--select", choices=SELECTIONS, default=SPEC_DEFAULTS["select"], help=SELECT_HELP)
    add(p, "--baseline-study", default=None, shown_default="the transfer study itself",
        help="a study that keeps the backprop baselines, shared by every transfer with the "
             "same dataset, epochs and training options (each runs once)")
    add_training_options(p, required=("rule",), omit=("arch", "seed"),
                         shown={"epochs": "the source study's",
                                "dataset": "the source study's (digits with --defaults)",
                                **{f.name: "the source study's" for f in training_options()
                                   if f.name not in ("rule", "dataset", "epochs")},
                                **{name: "the source study's" for name in ASSIGNED}})


def _source(text: str | None) -> str | None:
    """An architecture, or a list of them named as a transfer-aware sweep names its study."""
    from search.objectives import multi_arch_name

    return multi_arch_name(comma_list(text, "--source")) if text is not None else None


def run(args: argparse.Namespace) -> int:
    from search.transfer import run_transfer

    spec = TransferSpec(
        rule=args.rule, source=_source(args.source), targets=comma_list(args.targets, "--targets"),
        dataset=args.dataset, top_k=args.top_k, seeds=args.seeds, epochs=args.epochs,
        retune=args.retune, storage=args.storage, source_study=args.source_study,
        name=args.name, defaults=args.defaults, select=args.select,
        baseline_study=args.baseline_study,
        execution=execution_from_args(args),
        train=training_values(args, exclude=("rule", "dataset", "epochs")))
    spec.validate()  # bad input is one line, before any note (run_transfer checks again)
    for note in option_notes(spec.rule, spec.train, tuple(spec.targets)):
        print(f"creditsweep: note: {note}", file=sys.stderr, flush=True)
    summary = run_transfer(spec)
    emit(summary_listing(summary), args.format)
    print(study_next_steps("transfer", summary["study"], args.storage), file=sys.stderr)
    return 0


def summary_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, metavar="STUDY",
                   help="a transfer study (list: creditsweep status); or --study")
    p.add_argument("--study", default=None, help="the transfer study, as every command names it")
    add(p, "--select", choices=SELECTIONS, default=None, shown_default="the study's own",
        help=SELECT_HELP)


def run_summary(args: argparse.Namespace) -> int:
    from search import storage as st
    from search.summaries import baseline_study_of
    from search.summaries import summarize_transfer as summarize

    storage = st.open_storage(st.storage_url(args.storage), create=False)
    study = st.load_study(storage, summary_study(args))
    if study.user_attrs.get("kind") != "transfer":
        raise UsageError(f"study {study.study_name!r} is not a transfer study")
    emit(summary_listing(summarize(study, args.select, baseline_study_of(study, storage))),
         args.format)
    return 0


def _pm(row: dict, mean: str, std: str, completed: str) -> str:
    if row.get(mean) is None:
        return "-"
    return f"{row[mean]:.4f} ± {spread(row.get(std), row.get(completed))}"


def _setting(summary: dict, row: dict) -> str:
    """The metaparameters a row reports, as ``alpha=0.0012 sigma=1``."""
    values = (summary.get("transferred_values") or {}).get(
        str(row.get("best_source_trial"))) or {}
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items()) or "-"


def summary_listing(summary: dict) -> Listing:
    """The summary's table; with ``--curvature`` measured, the mean top eigenvalue and
    generalisation gap over seeds as well."""
    rows = [{**r, "rule": summary["rule"], "val": _pm(r, "mean", "std", "completed"),
             "backprop": _pm(r, "backprop_mean", "backprop_std", "backprop_completed"),
             "spread": spread(r.get("std"), r.get("completed")),
             "backprop_spread": spread(r.get("backprop_std"), r.get("backprop_completed")),
             "setting": _setting(summary, r)}
            for r in summary["rows"]]
    chosen = (f", robust choice: trial {summary['selected_trial']}"
              if summary.get("select") == "robust" else "")
    return Listing(
        f"{summary['rule']}: transfer from {summary['source_study']} ({summary['seeds']} "
        f"seeds, {summary['epochs']} epochs, --select {summary.get('select', 'best')}"
        f"{chosen})",
        [Column("rule"), Column("target", right=True),
         Column("depth", summary.get("axis", "depth"), right=True),  # the family's axis
         Column("mean", summary.get("score_label", "val top-1"),
                show=lambda v: "-" if v is None else f"{v:.4f}",
                right=True),
         Column("spread", "±", right=True),
         Column("backprop_mean", "backprop", show=number(), right=True),
         Column("backprop_spread", "±", right=True),
         Column("gap_to_backprop", "gap", show=number(signed=True), right=True),
         Column("diverged_fraction", "diverged", show=number(2), right=True),
         Column("retuned", "re-tuned", show=number(), right=True),
         Column("best_source_trial", "source trial", right=True),
         Column("setting", "transferred values"),
         *measure_columns(rows, ("", "backprop_"))],
        rows, completeness_caption(summary), document=summary)


TRANSFER = Command("transfer", "re-run a study's best settings on other depths", arguments,
                   run, shared=("storage", "execution", "format"), runs_ray=True,
                   description="Train the source study's top-k settings and a backprop "
                               "baseline on every target architecture and seed.")
SUMMARY = Command("transfer-summary", "accuracy per depth of a transfer study",
                  summary_arguments, run_summary, shared=("storage", "format"))
