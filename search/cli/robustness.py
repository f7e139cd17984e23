"""``creditsweep robustness | robustness-summary``: accuracy under noisy feedback updates."""

from __future__ import annotations

import argparse
import sys

from catalogue.errors import UsageError
from search.cli.base import Command, add, comma_list
from search.cli.options import add_training_options, execution_from_args, training_values
from search.cli.measure_columns import measure_columns
from search.cli.output import Column, Listing, emit, number
from search.specs import BACKPROP_NOISE_HELP, RobustnessSpec

SPEC = RobustnessSpec(rules=[])  # the defaults, from the one source


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", required=True,
                   help="comma-separated rules with a learned B, backprop, and rules "
                        "whose B can take W's updates (activation relaxation: run with "
                        "backward=learned from B = W) (list: creditsweep rules)")
    add(p, "--noise", default=",".join(f"{v:g}" for v in SPEC.noise),
        help="comma-separated variances v of the update noise: after every step "
             f"B += lr*xi, xi ~ N(0, v); {BACKPROP_NOISE_HELP}")
    add(p, "--seeds", type=int, default=SPEC.seeds, help="seeds per rule and variance")
    add(p, "--name", default=None, shown_default="robustness.ARCH.DATASET",
        help="the robustness study")
    add_training_options(p, defaults={"arch": SPEC.arch, "dataset": SPEC.dataset,
                                      "epochs": SPEC.epochs},
                         omit=("rule", "seed", "update_noise"))


def _variances(text: str) -> list[float]:
    values = []
    for item in comma_list(text, "--noise"):
        try:
            values.append(float(item))
        except ValueError:
            raise UsageError(f"--noise: {item!r} is not a number") from None
    return values


def run(args: argparse.Namespace) -> int:
    from search.robustness import run_robustness

    spec = RobustnessSpec(
        rules=comma_list(args.rules, "--rules"), arch=args.arch, dataset=args.dataset,
        noise=_variances(args.noise), seeds=args.seeds, epochs=args.epochs, name=args.name,
        storage=args.storage, execution=execution_from_args(args),
        train=training_values(args, exclude=("arch", "dataset", "epochs")))
    summary = run_robustness(spec)
    emit(summary_listing(summary), args.format)
    print(study_next_steps("robustness", summary["study"], args.storage), file=sys.stderr)
    return 0


def study_next_steps(kind: str, study: str, storage: str | None) -> str:
    """The commands that read a finished transfer or robustness study."""
    import shlex

    from search.urls import redact

    flag = f" --storage {shlex.quote(redact(storage))}" if storage else ""
    name = shlex.quote(study)
    return (f"next: creditsweep {kind}-summary --study {name}{flag} --format csv\n"
            f"      creditsweep report --{kind} {name}{flag} --out report/")


def summary_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, metavar="STUDY",
                   help="a robustness study (list: creditsweep status); or --study")
    p.add_argument("--study", default=None, help="the robustness study, as every command names it")


def summary_study(args: argparse.Namespace) -> str:
    """The study a summary reads: named by --study, or as the first argument."""
    if args.name and args.study and args.name != args.study:
        raise UsageError(f"two studies named: {args.name!r} and --study {args.study!r}")
    name = args.study or args.name
    if not name:
        raise UsageError(f"{args.command} needs --study NAME (list: creditsweep status)")
    return name


def run_summary(args: argparse.Namespace) -> int:
    from search import storage as st
    from search.summaries import summarize_robustness as summarize

    study = st.load_study(st.open_storage(st.storage_url(args.storage), create=False),
                          summary_study(args))
    if study.user_attrs.get("kind") != "robustness":
        raise UsageError(f"study {study.study_name!r} is not a robustness study")
    emit(summary_listing(summarize(study)), args.format)
    return 0


def summary_listing(summary: dict) -> Listing:
    """The summary's table; with ``--curvature`` measured, the mean top eigenvalue and
    generalisation gap over seeds as well."""
    return Listing(
        f"robustness to noisy B updates: {summary['arch']} on {summary['dataset']} "
        f"({summary['seeds']} seeds, {summary['epochs']} epochs)",
        [Column("rule"), Column("noise", "noise variance", show=lambda v: f"{v:g}", right=True),
         Column("mean", "val top-1", show=number(), right=True),
         Column("spread", "±", right=True),
         Column("worst", "worst seed", show=number(), right=True),
         Column("drop", "vs no noise", show=number(signed=True), right=True),
         Column("diverged_fraction", "diverged", show=number(2), right=True),
         Column("runs", "runs", right=True),
         *measure_columns(summary["rows"])],
        [{**r, "spread": spread(r.get("std"), r.get("completed"))} for r in summary["rows"]],
        completeness_caption(summary), document=summary)


def spread(std: float | None, completed: int | None) -> str:
    """The ± of a mean over seeds; one seed has none to show (not ± 0)."""
    if completed == 1:
        return "n/a (1 seed)"
    return "-" if std is None else f"{std:.4f}"


def completeness_caption(summary: dict) -> str:
    """A partial study says so: how many planned runs are missing, and how to finish them."""
    missing = summary.get("missing_runs")
    if not missing:
        return ""
    return (f"PARTIAL: {missing} of {summary['planned_runs']} planned runs missing; run the "
            "same command again to finish them")



ROBUSTNESS = Command("robustness", "train rules under noisy B updates (Kunin et al.)",
                     arguments, run, shared=("storage", "execution", "format"), runs_ray=True,
                     description="Train each rule at each variance of the update noise, "
                                 "with several seeds, into one study. " + BACKPROP_NOISE_HELP
                                 + ".")
SUMMARY = Command("robustness-summary", "accuracy per rule and noise of a robustness study",
                  summary_arguments, run_summary, shared=("storage", "format"))
