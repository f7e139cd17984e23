"""What T buys: for every rule that settles for T inner iterations (an ``inference_steps``
option), the angle between its update of W and the true gradient, and the accuracy after
training, against T.

Each run builds the model as training does, measures the update angle (trainer.diagnostics'
``update_angles``, mean over the hidden layers: the output layer's update is exact for every
rule) on one fixed training batch before the first step, trains ``--epochs`` epochs at that T
with the rule's other options at their defaults, and keeps the validation top-1. A rule that
does not take the architecture is left out with its one-line reason.

The published reference: activation relaxation's gradient error falls to about 0 within ~100
iterations at eta = 0.1 (Millidge et al. 2020, figure 2). Ours is printed beside it.

Writes ``runs.jsonl`` (a re-run skips finished runs), ``summary.md`` and
``relaxation_steps.png`` (angle against T above, accuracy against T below, one line per rule,
mean over seeds with every seed as a dot).

    python bench/relaxation_steps.py --out relaxation-steps [--arch mlp] [--steps 1,3,10,30,100]
        [--seeds 3] [--dataset fashion_mnist --train-subset 10000 --epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from run_log import add_run_options, run_all


def relaxing_rules() -> list[str]:
    import trainer

    return [rule for rule in trainer.list_rules()
            if trainer.rule_declaration(rule).option("inference_steps") is not None]


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process (one torch thread): the angle at initialisation, then
    training."""
    import torch
    import torch.nn.functional as F

    import trainer
    from catalogue.errors import UsageError
    from catalogue.training import TrainConfig
    from trainer.diagnostics import update_angles
    from trainer.loop import build

    torch.set_num_threads(1)
    config = {**common, "rule": run["rule"], "seed": run["seed"],
              "metaparameters": {"inference_steps": run["steps"]}}
    try:
        model, data = build(TrainConfig.from_dict(config))
    except UsageError as error:
        return {**run, "status": "refused", "reason": str(error)}
    x, y = next(iter(data.train.batches(0)))
    angles = list(update_angles(model, x, y, F.cross_entropy).values())[:-1]
    result = trainer.train(config)
    final = result.final or {}
    return {**run, "status": result.status, "reason": result.reason,
            "angle_at_init": statistics.fmean(angles),
            "best_val_top1": result.best_val_top1,
            "final_update_angle": final.get("diagnostics", {}).get("summary", {})
                                       .get("update_angle_mean"),
            "relaxation_residual": final.get("relaxation_residual"),
            "wall_time": result.wall_time}


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summarize(results: list[dict[str, Any]], rules: list[str], steps: list[int],
              args: argparse.Namespace) -> str:
    lines = [f"{args.arch} on {args.dataset} ({args.train_subset or 'all'} training examples, "
             f"{args.epochs} epochs, batch {args.batch}, {args.seeds} seeds): mean over seeds",
             "", "| rule | T | update angle at init (°) | after training (°) | "
             "last residual | val top-1 | s per run |", "|---|---|---|---|---|---|---|"]
    for rule in rules:
        runs = [r for r in results if r["rule"] == rule]
        refused = [r for r in runs if r["status"] == "refused"]
        if refused:
            lines.append(f"| {rule} | - | refused: {refused[0]['reason']} | | | | |")
            continue
        for t in steps:
            at = [r for r in runs if r["steps"] == t]
            lines.append(f"| {rule} | {t} | {_cell(_mean(at, 'angle_at_init'), '.2f')} | "
                         f"{_cell(_mean(at, 'final_update_angle'), '.2f')} | "
                         f"{_cell(_mean(at, 'relaxation_residual'), '.2g')} | "
                         f"{_cell(_mean(at, 'best_val_top1'), '.4f')} | "
                         f"{_cell(_mean(at, 'wall_time'), '.0f')} |")
    lines += ["", "Published (activation relaxation, eta = 0.1): the gradient error reaches "
                  "about 0 by 100 iterations."]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], rules: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 7), sharex=True)
    for rule in rules:
        runs = [r for r in results if r["rule"] == rule and r["status"] != "refused"]
        if not runs:
            continue
        steps = sorted({r["steps"] for r in runs})
        for ax, key in ((top, "angle_at_init"), (bottom, "best_val_top1")):
            means = [_mean([r for r in runs if r["steps"] == t], key) for t in steps]
            line, = ax.plot(steps, means, marker="o", label=rule)
            dots = [(r["steps"], r[key]) for r in runs if r.get(key) is not None]
            ax.scatter(*zip(*dots), s=10, alpha=0.4, color=line.get_color())
    top.set_ylabel("update angle to the true gradient (°)\nat initialisation, hidden layers")
    bottom.set_ylabel("best val top-1")
    bottom.set_xlabel("inner iterations T")
    top.set_xscale("log")
    top.legend()
    top.set_title("What T buys")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--steps", default="1,3,10,30,100")
    parser.add_argument("--rules", default=None,
                        help="comma-separated (default: every rule with inference_steps)")
    add_run_options(parser, out="relaxation-steps", epochs=2)
    args = parser.parse_args()
    rules = args.rules.split(",") if args.rules else relaxing_rules()
    steps = [int(t) for t in args.steps.split(",")]
    planned = [{"rule": rule, "steps": t, "seed": seed, "arch": args.arch,
                "key": f"{args.arch}|{rule}|{t}|{seed}"}
               for seed in range(args.seeds) for t in steps for rule in rules]
    common = {"arch": args.arch, "dataset": args.dataset, "epochs": args.epochs,
              "batch_size": args.batch}
    if args.train_subset:
        common["train_subset"] = args.train_subset
    out = Path(args.out)
    results = run_all(out, planned, execute, common, args.workers,
                      lambda r: f"{r['status']}, angle {r.get('angle_at_init')}, "
                                f"val top-1 {r.get('best_val_top1')}")
    results = [r for r in results if r["arch"] == args.arch and r["rule"] in rules]
    table = summarize(results, rules, steps, args)
    (out / "summary.md").write_text(table + "\n")
    plot(results, rules, out / "relaxation_steps.png")
    print("\n" + table + f"\n\nplot: {out / 'relaxation_steps.png'}")


if __name__ == "__main__":
    main()
