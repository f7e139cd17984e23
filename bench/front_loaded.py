"""Symmetric alignment against backprop under ``auto``, with B's relaxation times spread evenly
over the run and front-loaded by auto's warm-up (docs/design.md section 7, "auto's warm-up").

For each architecture and seed: backprop, and each rule at ``--feedback-lr-multiplier auto``,
setting ``even`` with ``--feedback-warmup-relaxations 0`` (the even spread alone, auto before
the warm-up) and setting ``front`` at its default (B warmed up alone before W's first step).
The sizes are the reproduction's CPU preset (bench/reproduce_two_routes.py): Fashion-MNIST,
3,000 training and 3,000 validation images, 3 epochs, batch 128, the trainer's other defaults.
Each run records val top-1, the train loss after the first epoch, B's mean angle to W after
the first and the last epoch, and the relaxation times of its slowest layer.

Writes ``runs.jsonl`` (a re-run skips what it holds) and ``summary.md``.

    python bench/front_loaded.py --out front_loaded [--archs resnet8,resnet20] [--seeds 3]
        [--rules symmetric_alignment] [--settings even,front]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from run_log import add_run_options, mean_std, run_all

SETTINGS: dict[str, dict[str, Any]] = {
    "even": {"feedback_lr_multiplier": "auto", "feedback_warmup_relaxations": 0.0},
    "front": {"feedback_lr_multiplier": "auto"},
    # the warm-up, then every B at its cap (half the stability limit) for the whole run: does
    # B's lag behind a moving W still cost accuracy once the warm-up has aligned it?
    "cap": {"feedback_lr_multiplier": "auto", "feedback_relaxations": 1000.0},
    # the warm-up, with B's gradient preconditioned by the inverse input covariance, so that
    # activation alignment's stiff and soft modes relax at about one rate (design.md §7)
    "covariance": {"feedback_lr_multiplier": "auto", "feedback_preconditioner": "covariance"},
}


def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for arch in args.archs.split(","):
        for seed in range(args.seeds):
            if not args.no_backprop:
                runs.append({"arch": arch, "seed": seed, "rule": "backprop", "setting": "-"})
            for rule in args.rules.split(","):
                for setting in args.settings.split(","):
                    runs.append({"arch": arch, "seed": seed, "rule": rule, "setting": setting})
    for run in runs:
        run["key"] = f"{run['arch']}|{run['rule']}|{run['setting']}|{run['seed']}"
    return runs


def _angle(record: dict[str, Any]) -> float | None:
    return (record.get("diagnostics") or {}).get("summary", {}).get("weight_angle_mean")


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """One training run in a worker process (one torch thread), summarized."""
    import torch

    import trainer

    torch.set_num_threads(1)
    result = trainer.train({**common, **SETTINGS.get(run["setting"], {}), "rule": run["rule"],
                            "arch": run["arch"], "seed": run["seed"]})
    history = result.history
    plan = result.feedback_plan or {}
    first_plan = (history[0].get("feedback_plan") or {}) if history else {}
    return {**run, "status": result.status, "reason": result.reason,
            "val_top1": history[-1]["val_top1"] if history else None,
            "best_val_top1": result.best_val_top1,
            "train_loss_1": history[0]["train_loss"] if history else None,
            "weight_angle_1": _angle(history[0]) if history else None,
            "weight_angle": _angle(history[-1]) if history else None,
            "relaxations_min": plan.get("summary", {}).get("relaxations_min"),
            "stability_ratio_max": plan.get("summary", {}).get("stability_ratio_max"),
            "schedule": (first_plan.get("summary") or {}).get("schedule"),
            "wall_time": result.wall_time}


def summarize(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.dataset} (train subset {args.train_subset}, val subset {args.val_subset}), "
             f"{args.epochs} epochs, batch {args.batch}, lr 0.05 cosine, Nesterov 0.9; mean ± std "
             "over seeds; gap: to backprop's mean on the same architecture",
             "", "| arch | rule | B's schedule | val top-1 (%) | gap (points) | train loss, "
             "epoch 1 | ∠(W, B) °, epoch 1 | ∠(W, B) °, end | relaxation times (slowest "
             "layer) | diverged |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["rule"], r["setting"]), []).append(r)
    for (arch, rule, setting), runs in sorted(groups.items(),
                                              key=lambda kv: (kv[0][0], kv[0][1] != "backprop",
                                                              kv[0])):
        done = [r for r in runs if r["status"] == "completed"]
        base = [r["val_top1"] for r in results if r["arch"] == arch and r["rule"] == "backprop"
                and r["status"] == "completed"]
        mine = [r["val_top1"] for r in done]
        gap = ("-" if rule == "backprop" or not base or not mine else
               f"{100 * (statistics.fmean(mine) - statistics.fmean(base)):+.1f}")
        lines.append(
            f"| {arch} | {rule} | {setting} | {mean_std(mine, 1, 100)} | {gap} | "
            f"{mean_std([r['train_loss_1'] for r in done], 3)} | "
            f"{mean_std([r['weight_angle_1'] for r in done])} | "
            f"{mean_std([r['weight_angle'] for r in done], 2)} | "
            f"{mean_std([r['relaxations_min'] for r in done], 1)} | "
            f"{len(runs) - len(done)}/{len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet8,resnet20")
    parser.add_argument("--rules", default="symmetric_alignment")
    parser.add_argument("--settings", default="even,front",
                        help=f"B's schedules to run: {', '.join(SETTINGS)}")
    parser.add_argument("--no-backprop", action="store_true")
    add_run_options(parser, out="front_loaded", epochs=3)
    parser.set_defaults(train_subset=3000, workers=1)
    parser.add_argument("--val-subset", type=int, default=3000)
    args = parser.parse_args()
    out = Path(args.out)
    common = {"dataset": args.dataset, "train_subset": args.train_subset,
              "val_subset": args.val_subset, "epochs": args.epochs, "batch_size": args.batch,
              "diagnostics": True}
    results = run_all(out, plan_runs(args), execute, common, args.workers, lambda r: (
        f"{r['status']}, val top-1 {r['val_top1']}, angle {r['weight_angle_1']} -> "
        f"{r['weight_angle']}"))
    table = summarize(results, args)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
