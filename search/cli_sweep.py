"""``creditsweep sweep | resume | status | best | trials``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from search.cli_common import UsageError

SWEEP_DEFAULTS = dict(rule="information_alignment", arch="resnet8", dataset="digits",
                      trials=32, epochs=6)


def add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a TPE search over a rule's metaparameters",
                       description="Run (or continue) a sweep; every trial lands in an Optuna "
                                   "study. With no arguments: a small real sweep on digits.")
    p.add_argument("--rule", default=SWEEP_DEFAULTS["rule"])
    p.add_argument("--arch", default=SWEEP_DEFAULTS["arch"])
    p.add_argument("--dataset", default=SWEEP_DEFAULTS["dataset"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--trials", type=int, default=SWEEP_DEFAULTS["trials"])
    p.add_argument("--epochs", type=int, default=SWEEP_DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="fixed learning rate (or --space lr=…)")
    p.add_argument("--space", action="append", default=[], metavar="NAME=LOW:HIGH[:log|linear]",
                   help="narrow or add a tuned parameter, e.g. alpha=1e-5:1e-1:log")
    p.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="hold a parameter fixed, e.g. sigma=1.0")
    p.add_argument("--space-file", default=None, help="TOML or YAML file with [space] and [fix]")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; fractions pack several trials on one GPU")
    p.add_argument("--initial-points", type=int, default=None,
                   help="TPE's random start (default min(20, max(3, trials/4)))")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed worker")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo")
    p.add_argument("--searcher", choices=["tpe", "random"], default="tpe")
    _common(p, study=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ray-dir", default=None, help="where Ray keeps experiment state "
                   "(default $CREDITSWEEP_RAY_DIR or ~/.creditsweep/ray)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=run_sweep_command)

    r = sub.add_parser("resume", help="run the missing trials of an interrupted sweep",
                       description="Bring the study's latest unfinished sweep (or --sweep ID) "
                                   "to exactly its trial count; recorded trials are kept.")
    _common(r, study=True)
    r.add_argument("--sweep", default=None, help="which sweep of the study (default: the "
                   "latest unfinished one)")
    r.add_argument("--format", choices=["table", "json"], default="table")
    r.set_defaults(handler=run_resume)

    s = sub.add_parser("status", help="every study: rule, arch, dataset, counts, best")
    _common(s, study=False)
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(handler=run_status)

    b = sub.add_parser("best", help="the best metaparameters of a study")
    _common(b, study=True)
    b.add_argument("--rule")
    b.add_argument("--arch")
    b.add_argument("--dataset")
    b.add_argument("--format", choices=["table", "json"], default="table")
    b.set_defaults(handler=run_best)

    t = sub.add_parser("trials", help="every trial of a study")
    _common(t, study=True)
    t.add_argument("--format", choices=["table", "csv", "json"], default="table")
    t.set_defaults(handler=run_trials)


def _common(p: argparse.ArgumentParser, study: bool) -> None:
    p.add_argument("--storage", default=None,
                   help="SQLAlchemy URL (default $CREDITSWEEP_STORAGE or sqlite:///creditsweep.db)")
    if study:
        p.add_argument("--study", default=None, help="study name (default RULE.ARCH.DATASET)")
    p.add_argument("--address", default=None, help="join this Ray cluster (or $RAY_ADDRESS)")


def _build_spec(args: argparse.Namespace):
    from search.sweep import SweepSpec
    from spaces import apply_overrides, default_space

    space = apply_overrides(default_space(args.rule), args.space, args.fix, args.space_file)
    if args.lr is not None:
        if "lr" in space.params:
            raise UsageError("--lr conflicts with a tuned lr in --space; use one of them")
        space = space.with_fixed("lr", args.lr)
    train: dict[str, Any] = {}
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    if args.data_dir is not None:
        train["data_dir"] = args.data_dir
    return SweepSpec(rule=args.rule, arch=args.arch, dataset=args.dataset, trials=args.trials,
                     epochs=args.epochs, space=space, study=args.study, storage=args.storage,
                     seed=args.seed, max_concurrent=args.max_concurrent,
                     cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                     address=args.address, scheduler=args.scheduler, searcher=args.searcher,
                     initial_points=args.initial_points, max_failures=args.max_failures,
                     ray_dir=args.ray_dir, train=train)


def run_sweep_command(args: argparse.Namespace) -> int:
    from search.sweep import run_sweep

    spec = _build_spec(args)
    spec.validate()
    err = Console(stderr=True)
    err.print(f"sweep {spec.study_name()}: {spec.trials} trials × {spec.epochs} epochs, "
              f"{spec.searcher}, space {spec.resolved_space().describe()}")
    outcome = run_sweep(spec)
    return _print_outcome(outcome, args.format)


def run_resume(args: argparse.Namespace) -> int:
    from search.sweep import resume_sweep

    if not args.study:
        raise UsageError("resume needs --study NAME (see `creditsweep status`)")
    return _print_outcome(resume_sweep(args.study, args.storage, args.address, args.sweep),
                          args.format)


def _print_outcome(outcome: Any, fmt: str) -> int:
    from dataclasses import asdict

    if fmt == "json":
        print(json.dumps(asdict(outcome)))
        return 0
    console = Console()
    console.print(f"study [bold]{outcome.study}[/] in {outcome.storage}: {outcome.added} new "
                  f"trials in {outcome.wall_time:.0f} s")
    if outcome.best_value is None:
        console.print("no completed trial yet")
    else:
        params = ", ".join(f"{k}={v:.4g}" for k, v in outcome.best_params.items())
        console.print(f"best val top-1 {outcome.best_value:.4f} with {params}")
    return 0


def _open(args: argparse.Namespace):
    from search import storage as st

    return st, st.open_storage(st.storage_url(args.storage))


def run_status(args: argparse.Namespace) -> int:
    st, storage = _open(args)
    rows = st.study_summaries(storage)
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    table = Table(title=f"studies in {st.redact(st.storage_url(args.storage))}")
    for col in ("study", "rule", "arch", "dataset", "complete", "failed", "pruned", "running",
                "best"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["study"], str(r["rule"]), str(r["arch"]), str(r["dataset"]),
                      str(r["complete"]), str(r["failed"]), str(r["pruned"]), str(r["running"]),
                      "-" if r["best"] is None else f"{r['best']:.4f}")
    Console(width=140).print(table)
    return 0


def _study_from_args(args: argparse.Namespace):
    st, storage = _open(args)
    name = args.study
    parts = [getattr(args, k, None) for k in ("rule", "arch", "dataset")]
    if name and any(parts):
        raise UsageError("give either --study or --rule/--arch/--dataset, not both")
    if not name:
        if not all(parts):
            raise UsageError("name a study: --study NAME, or all of --rule, --arch, --dataset")
        name = st.study_name_for(*parts)
    return st, st.load_study(storage, name)


def run_best(args: argparse.Namespace) -> int:
    st, study = _study_from_args(args)
    best = st.best_trial(study)
    data = {"study": study.study_name, "number": best.number, "value": best.value,
            "params": best.params, "fixed": study.user_attrs.get("space", {}).get("fixed", {}),
            "diagnostics": best.user_attrs.get("diagnostics", {})}
    if args.format == "json":
        print(json.dumps(data))
        return 0
    table = Table(title=f"best of {study.study_name}: trial {best.number}, "
                        f"val top-1 {best.value:.4f}")
    table.add_column("parameter")
    table.add_column("value")
    for k, v in best.params.items():
        table.add_row(k, f"{v:.6g}")
    for k, v in data["fixed"].items():
        table.add_row(k, f"{v:.6g} (fixed)")
    Console().print(table)
    return 0


def run_trials(args: argparse.Namespace) -> int:
    if not args.study:
        raise UsageError("trials needs --study NAME (see `creditsweep status`)")
    st, study = _study_from_args(args)
    rows = st.trial_rows(study)
    columns = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                     if rows and k in rows[0] else 99)
    if args.format == "json":
        print(json.dumps(rows))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(title=f"trials of {study.study_name}")
        for col in columns:
            table.add_column(col.replace("param_", ""))
        for r in rows:
            table.add_row(*[_cell(r.get(c)) for c in columns])
        Console(width=200).print(table)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
