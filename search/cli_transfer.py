"""``creditsweep transfer | transfer-summary | report``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from search.cli_common import UsageError


def add_transfer_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transfer", help="re-run a study's best settings on other depths",
                       description="Train the source study's top-k settings and a backprop "
                                   "baseline on every target architecture and seed.")
    p.add_argument("--rule", required=True)
    p.add_argument("--source", default=None, help="source architecture (its sweep study)")
    p.add_argument("--defaults", action="store_true",
                   help="transfer the rule's official defaults instead of a study's best")
    p.add_argument("--targets", required=True, help="comma-separated architectures")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--source-study", default=None, help="default RULE.SOURCE.DATASET")
    p.add_argument("--name", default=None, help="transfer study (default transfer.RULE.SOURCE.DATASET)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: the source study's")
    p.add_argument("--retune", type=int, default=0, metavar="N",
                   help="also run an N-trial TPE sweep on each target")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--storage", default=None)
    p.add_argument("--address", default=None)
    p.add_argument("--ray-dir", default=None)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(handler=run_transfer_command)

    s = sub.add_parser("transfer-summary", help="accuracy per depth of a transfer study")
    s.add_argument("name")
    s.add_argument("--storage", default=None)
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(handler=run_summary)

    r = sub.add_parser("report", help="PNG plots and a Markdown summary")
    group = r.add_mutually_exclusive_group(required=True)
    group.add_argument("--study", help="a sweep study")
    group.add_argument("--transfer", action="append", help="transfer study (repeat to overlay)")
    r.add_argument("--out", required=True, help="folder for the PNG and Markdown files")
    r.add_argument("--storage", default=None)
    r.set_defaults(handler=run_report)


def run_transfer_command(args: argparse.Namespace) -> int:
    from search.transfer import TransferSpec, run_transfer

    spec = TransferSpec(
        rule=args.rule, source=args.source,
        targets=[t.strip() for t in args.targets.split(",") if t.strip()],
        dataset=args.dataset, top_k=args.top_k, seeds=args.seeds, epochs=args.epochs,
        retune=args.retune, storage=args.storage, source_study=args.source_study,
        name=args.name, max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, address=args.address,
        max_failures=args.max_failures, ray_dir=args.ray_dir, defaults=args.defaults,
        train={"data_dir": args.data_dir} if args.data_dir else {})
    _print_summary(run_transfer(spec), args.format)
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from search import storage as st
    from search.transfer import summarize

    study = st.load_study(st.open_storage(st.storage_url(args.storage)), args.name)
    if study.user_attrs.get("kind") != "transfer":
        raise UsageError(f"study {args.name!r} is not a transfer study")
    _print_summary(summarize(study), args.format)
    return 0


COLUMNS = ("target", "depth", "mean", "std", "backprop_mean", "backprop_std",
           "gap_to_backprop", "diverged_fraction", "retuned", "best_source_trial")


def _print_summary(summary: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(summary))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["rule", *COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary["rows"])
        sys.stdout.write(buf.getvalue())
        return
    table = Table(title=f"{summary['rule']}: transfer from {summary['source_study']} "
                        f"({summary['seeds']} seeds, {summary['epochs']} epochs)")
    for col in ("target", "val top-1", "backprop", "gap", "diverged", "re-tuned"):
        table.add_column(col, justify="right")
    for r in summary["rows"]:
        table.add_row(r["target"], _pm(r["mean"], r["std"]),
                      _pm(r["backprop_mean"], r["backprop_std"]), _num(r["gap_to_backprop"], signed=True),
                      _num(r["diverged_fraction"], 2), _num(r["retuned"]))
    Console(width=120).print(table)


def _num(value: Any, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(mean: Any, std: Any) -> str:
    return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"


def run_report(args: argparse.Namespace) -> int:
    from search import report
    from search import storage as st

    storage = st.open_storage(st.storage_url(args.storage))
    out = Path(args.out)
    if args.study:
        study = st.load_study(storage, args.study)
        files = report.study_report(study, out)
    else:
        studies = [st.load_study(storage, name) for name in args.transfer]
        for s in studies:
            if s.user_attrs.get("kind") != "transfer":
                raise UsageError(f"study {s.study_name!r} is not a transfer study")
        files = report.transfer_report(studies, out)
    for name in files:
        print(out / name)
    return 0
