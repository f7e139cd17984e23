"""``creditsweep train``: one run of a rule on a model and dataset, with live progress."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from catalogue.errors import UsageError
from catalogue.training import TrainConfig, option_notes
from search.cli.base import Command, add, parse_assignments
from search.cli.options import add_training_options, train_config, training_values
from search.cli.output import Column, Listing, emit, number


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="a rule metaparameter, e.g. --set alpha=1e-3 --set sigma=0.5 "
                        "(default: the rule's, see `creditsweep rules`)")
    p.add_argument("--from-study", default=None, metavar="STUDY",
                   help="re-run a recorded trial of this study exactly (its training "
                        "configuration, data folder and seed); flags given here override "
                        "(default: none)")
    add(p, "--trial", type=int, default=None, shown_default="the study's best",
        help="with --from-study: the trial's number, as Optuna numbers it")
    add_training_options(p)


def _values(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The run's TrainConfig values, and the recorded trial it repeats (None for a new run)."""
    given = training_values(args)
    sets = parse_assignments(args.sets, "--set")
    if args.from_study is None:
        if args.trial is not None:
            raise UsageError("--trial needs --from-study")
        return {**given, "metaparameters": sets}, None
    from search import storage as st
    from search.reproduce import pick_trial, probe_epochs, trial_config

    url = st.storage_url(args.storage)
    study = st.load_study(st.open_storage(url, create=False), args.from_study)
    trial = pick_trial(study, args.trial)
    recorded = trial_config(study, trial)
    if recorded.get("arch") is None and "arch" not in given:
        raise UsageError(f"trial {trial.number} trained on {study.user_attrs.get('arch')}: "
                         "give --arch to re-run one of them")
    if recorded.get("arch") is None and "stop_after_epochs" not in given:
        recorded["stop_after_epochs"] = probe_epochs(study, given["arch"]) or recorded.get(
            "stop_after_epochs")  # as the trial trained that architecture
    recorded = {k: v for k, v in recorded.items() if v is not None or k in given}
    meta = {**recorded.pop("metaparameters", {}), **sets}
    return {**recorded, **given, "metaparameters": meta}, trial


def run(args: argparse.Namespace) -> int:
    values, repeated = _values(args)
    # A study's record is data, not flags: an option it names that this version lacks is
    # one line, not a bug.
    config = train_config(values) if repeated is None else TrainConfig.from_dict(values)
    if repeated is not None:
        shown = "no value" if repeated.value is None else f"value {repeated.value:.4f}"
        print(f"re-running trial {repeated.number} of {args.from_study} ({shown}, "
              f"{repeated.state.name})", file=sys.stderr, flush=True)
    # The dataset's options and fit, from declarations, before any note: bad input is one
    # line (the run checks them again before it loads anything).
    from trainer.datasets.base import check_model_fits

    check_model_fits(config.dataset, (config.arch,), config.image_size,
                     config.dataset_options)
    for note in option_notes(config.rule, config.to_dict(), (config.arch,)):
        print(f"creditsweep: note: {note}", file=sys.stderr, flush=True)
    import trainer
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    from rich.text import Text

    from search.scores import score_of, task_of_dataset

    task = task_of_dataset(config.dataset)
    label = task.score_label  # "val top-1", "val R^2"
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 140)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=console,
                  transient=False, disable=not console.is_terminal) as progress:
        epochs = progress.add_task(f"{config.rule} on {config.arch}", total=config.epochs_run(),
                                   metrics="")
        steps = progress.add_task("  steps", total=None, metrics="")

        def on_epoch(record: dict[str, Any]) -> None:
            score = score_of(record)
            shown = "nan" if score is None else f"{score:.4f}"
            progress.update(epochs, advance=1, metrics=(
                f"{label} {shown[:5]}  loss {record['train_loss']:.3f}"))
            if not console.is_terminal:
                console.print(f"epoch {record['epoch']}/{config.epochs_run()}: "
                              f"train loss {record['train_loss']:.4f}, "
                              f"{label} {shown}", markup=False)

        def on_step(epoch: int, step: int, total: int) -> None:
            progress.update(steps, completed=step, total=total)

        def on_plan(plan: Any) -> None:
            console.print(plan_table(plan))
            if plan.schedule():
                console.print(Text(f"B's schedule under auto: {plan.schedule()}"))
            if plan.advice():
                console.print(Text(f"creditsweep: {plan.advice()}"))

        result = trainer.train(config, callback=on_epoch, on_step=on_step, on_plan=on_plan)
    emit(_listing(result, task), args.format)
    if repeated is not None and repeated.value is not None and result.best_val_top1 is not None:
        print(f"trial {repeated.number} recorded {repeated.value:.4f}; this run "
              f"{result.best_val_top1:.4f}", file=sys.stderr)
    return 0 if result.status == "completed" else 1


def plan_table(plan: Any) -> Any:
    """B's plan per layer, as ``train`` prints it before the first step."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"feedback-weight plan (stability limit of lr_B x curvature: "
                             f"{plan.limit:.3g}{', auto' if plan.auto else ''})"))
    for header in ("layer", "curvature λ", "lr_B/lr", "peak lr_B·λ/limit", "relaxations",
                   "verdict"):
        table.add_column(Text(header), justify="left" if header == "layer" else "right")
    for name, p in plan.layers.items():
        table.add_row(*[Text(v) for v in (name, f"{p.curvature:.3g}", f"{p.multiplier:.3g}",
                                          f"{p.stability_ratio:.3g}", f"{p.relaxations:.3g}",
                                          p.verdict)])
    if plan.error:
        table.caption = Text(f"not computed: {plan.error}")
    return table


def _listing(result: Any, task: Any) -> Listing:
    """The run's epochs; the score column is the task's (val_top1, or val_r2), and top-5 is
    shown where the task measures it."""
    label = task.score_label
    top5 = ("val_top5",) if any("val_top5" in r for r in result.history) else ()
    rows = []
    for r in result.history:
        s = r.get("diagnostics", {}).get("summary", {})
        rows.append({**{k: r.get(k) for k in ("epoch", "train_loss", "val_loss", task.score,
                                               *top5, "wall_time")},
                     "weight_angle_mean": s.get("weight_angle_mean"),
                     "norm_ratio_mean": s.get("norm_ratio_mean"),
                     "gradient_angle_mean": s.get("gradient_angle_mean")})
    caption = [f"best {label} {result.best_val_top1:.4f}" if result.best_val_top1 is not None
               else "no completed epoch",
               f"{result.converted_layers} layers converted", f"device {result.device}"]
    if result.reason:
        caption.append(f"reason: {result.reason}")
    config = result.config
    return Listing(
        title=f"{config['rule']} / {config['arch']} / {config['dataset']}: {result.status}",
        columns=[Column("epoch", right=True), Column("train_loss", "train loss", number(), True),
                 Column("val_loss", "val loss", number(), True),
                 Column(task.score, label, number(), True),
                 *[Column(key, "val top-5", number(), True) for key in top5],
                 Column("weight_angle_mean", "∠(W,B) °", number(1), True),
                 Column("norm_ratio_mean", "‖B‖/‖W‖", number(3), True),
                 Column("gradient_angle_mean", "grad ∠ °", number(1), True),
                 Column("wall_time", "time s", number(1), True)],
        rows=rows, caption=" · ".join(caption), document=result.to_dict())


COMMAND = Command("train", "train one rule on one model and dataset", arguments, run,
                  shared=("storage", "format"),
                  description="Train once with a credit-assignment rule and print a summary.")

