"""``creditsweep train`` and ``creditsweep rules``: the trainer from the command line."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.cli_common import parse_assignments


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    import trainer

    p = sub.add_parser("train", help="train one rule on one model and dataset",
                       description="Train once with a credit-assignment rule and print a summary.")
    p.add_argument("--rule", default="backprop", help=f"one of: {', '.join(trainer.list_rules())}")
    p.add_argument("--arch", default="mlp", help="model (see `creditsweep models`)")
    p.add_argument("--dataset", default="digits", help="digits (embedded), cifar10, imagenet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--feedback-lr-multiplier", type=float, default=1.0)
    p.add_argument("--update-noise", type=float, default=0.0,
                   help="variance v of the noise added to B after each step (B += lr*xi)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="a rule metaparameter, e.g. --set alpha=1e-3 --set sigma=0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--data-dir", default=None, help="dataset folder (cifar10, imagenet)")
    p.add_argument("--image-size", type=int, default=None, help="imagenet crop size")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader workers (imagenet)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=run_train)

    r = sub.add_parser("rules", help="list the rules, their primitives and defaults")
    r.add_argument("--format", choices=["table", "json"], default="table")
    r.set_defaults(handler=run_rules)

    m = sub.add_parser("models", help="list the registered architectures")
    m.set_defaults(handler=lambda args: print("\n".join(trainer.list_models())) or 0)


def run_train(args: argparse.Namespace) -> int:
    import trainer

    config = trainer.TrainConfig(
        rule=args.rule, metaparameters=parse_assignments(args.sets, "--set"), arch=args.arch,
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        feedback_lr_multiplier=args.feedback_lr_multiplier, update_noise=args.update_noise,
        seed=args.seed, device=args.device, image_size=args.image_size,
        num_workers=args.num_workers)
    config.validate()
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=console,
                  transient=False, disable=not console.is_terminal) as progress:
        epochs = progress.add_task(f"{config.rule} on {config.arch}", total=config.epochs,
                                   metrics="")
        steps = progress.add_task("  steps", total=None, metrics="")

        def on_epoch(record: dict[str, Any]) -> None:
            progress.update(epochs, advance=1, metrics=(
                f"val top-1 {record['val_top1']:.3f}  loss {record['train_loss']:.3f}"))
            if not console.is_terminal:
                console.print(f"epoch {record['epoch']}/{config.epochs}: "
                              f"train loss {record['train_loss']:.4f}, "
                              f"val top-1 {record['val_top1']:.4f}")

        def on_step(epoch: int, step: int, total: int) -> None:
            progress.update(steps, completed=step, total=total)

        result = trainer.train(config, callback=on_epoch, on_step=on_step)
    if args.format == "json":
        print(json.dumps(result.to_dict(), default=_json_default))
    else:
        Console().print(_summary_table(result))
    return 0 if result.status == "completed" else 1


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _summary_table(result: Any) -> Table:
    table = Table(title=f"{result.config['rule']} / {result.config['arch']} / "
                        f"{result.config['dataset']}: {result.status}")
    table.add_column("epoch", justify="right")
    for col in ("train loss", "val loss", "val top-1", "val top-5", "∠(W,B) °", "‖B‖/‖W‖",
                "grad ∠ °", "time s"):
        table.add_column(col, justify="right")
    for r in result.history:
        s = r.get("diagnostics", {}).get("summary", {})
        table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}",
                      f"{r['val_top1']:.4f}", f"{r['val_top5']:.4f}",
                      _fmt(s.get("weight_angle_mean")), _fmt(s.get("norm_ratio_mean"), 3),
                      _fmt(s.get("gradient_angle_mean")), f"{r['wall_time']:.1f}")
    caption = [f"best val top-1 {result.best_val_top1:.4f}" if result.best_val_top1 is not None
               else "no completed epoch",
               f"{result.converted_layers} layers converted", f"device {result.device}"]
    if result.reason:
        caption.append(f"reason: {result.reason}")
    table.caption = " · ".join(caption)
    return table


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def run_rules(args: argparse.Namespace) -> int:
    import trainer
    from trainer.primitives import PRIMITIVES

    rows = []
    for name in trainer.list_rules():
        rule = trainer.rule_declaration(name)
        rows.append({"rule": name, "local": rule.local,
                     "regularizer": " + ".join(f"{c}·{p}" for p, c in rule.terms.items()) or "-",
                     "input": rule.regularizer_input, "defaults": dict(rule.defaults),
                     "summary": rule.summary})
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    table = Table(title="credit-assignment rules")
    for col in ("rule", "local", "R per layer", "input", "defaults", "summary"):
        table.add_column(col)
    for row in rows:
        defaults = ", ".join(f"{k}={v:g}" for k, v in row["defaults"].items()) or "-"
        table.add_row(row["rule"], "yes" if row["local"] else "no", row["regularizer"],
                      row["input"], defaults, row["summary"])
    table.caption = "primitives: " + "; ".join(f"{p.name} = {p.formula}"
                                              for p in PRIMITIVES.values())
    Console(width=160).print(table)
    return 0
