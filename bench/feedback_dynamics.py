"""B's dynamics measured: every learned-B rule at the default B learning rate and at ``auto``.

For each architecture and seed: backprop and feedback alignment as references, and each
learned-B rule with ``--feedback-lr-multiplier`` 1 (the default) and ``auto`` (Kolen-Pollack
only at 1: its B takes W's updates, so auto leaves it there). Each run records val top-1,
the mean angle between W and B, the mean angle between B and the fixed point its rule pulls
it to (``trainer.dynamics.fixed_point``), and the relaxation times its slowest layer got.

Writes ``runs.jsonl`` (one line per finished run; a re-run skips them), ``summary.md`` (the
table, mean ± std over seeds) and ``angle_vs_relaxations.png`` (per layer: measured angle to
the fixed point against relaxation times, with atan(1/(e^n - 1)), the angle a frozen W
predicts for a B that starts orthogonal to its fixed point at the same norm).

    python bench/feedback_dynamics.py --out dynamics [--archs resnet8,resnet20] [--seeds 3]
        [--dataset fashion_mnist --train-subset 10000 --epochs 3 --batch 128] [--workers 2]
        [--only backprop,symmetric_alignment:auto]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from run_log import add_run_options, mean_std, run_all

LEARNED = ("kolen_pollack", "weight_mirror", "information_alignment", "symmetric_alignment",
           "activation_alignment")
REFERENCES = ("backprop", "feedback_alignment")


def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for arch in args.archs.split(","):
        for seed in range(args.seeds):
            for rule in REFERENCES:
                runs.append({"arch": arch, "seed": seed, "rule": rule, "setting": "-"})
            for rule in LEARNED:
                for setting in ("1", "auto") if rule != "kolen_pollack" else ("1",):
                    runs.append({"arch": arch, "seed": seed, "rule": rule,
                                 "setting": setting})
    for run in runs:
        run["key"] = f"{run['arch']}|{run['rule']}|{run['setting']}|{run['seed']}"
    if args.only:  # e.g. the rows that decide a comparison with backprop, for more seeds
        wanted = set(args.only.split(","))
        runs = [r for r in runs if r["rule"] in wanted
                or f"{r['rule']}:{r['setting']}" in wanted]
    return runs


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """One training run in a worker process (one torch thread), summarized."""
    import torch

    import trainer

    torch.set_num_threads(1)
    multiplier = {"-": 1.0, "1": 1.0, "auto": "auto"}[run["setting"]]
    result = trainer.train({**common, "rule": run["rule"], "arch": run["arch"],
                            "seed": run["seed"], "feedback_lr_multiplier": multiplier})
    final = result.final or {}
    plan = result.feedback_plan or {}
    layers = plan.get("layers", {})
    return {**run, "status": result.status, "reason": result.reason,
            "val_top1": final.get("val_top1"), "best_val_top1": result.best_val_top1,
            "weight_angle": (final.get("diagnostics") or {}).get("summary", {})
            .get("weight_angle_mean"),
            "fixed_point_angle": plan.get("summary", {}).get("fixed_point_angle_mean"),
            "relaxations_min": plan.get("summary", {}).get("relaxations_min"),
            "stability_ratio_max": plan.get("summary", {}).get("stability_ratio_max"),
            "initial": plan.get("initial"),
            "layers": {name: {k: layer.get(k) for k in ("relaxations", "fixed_point_angle",
                                                       "multiplier", "stability_ratio")}
                       for name, layer in layers.items()},
            "wall_time": result.wall_time}


def summarize(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.dataset} (train subset {args.train_subset}), {args.epochs} epochs, batch "
             f"{args.batch}, lr 0.05 cosine, Nesterov 0.9; mean ± std over the seeds run "
             "(last column: diverged / runs)",
             "", "| arch | rule | B lr multiplier | val top-1 (%) | ∠(W, B) ° | "
             "∠(B, fixed point) ° | relaxation times (slowest layer) | diverged |",
             "|---|---|---|---|---|---|---|---|"]
    order = {rule: i for i, rule in enumerate(REFERENCES + LEARNED)}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["rule"], r["setting"]), []).append(r)
    for (arch, rule, setting), runs in sorted(groups.items(),
                                              key=lambda kv: (kv[0][0], order[kv[0][1]],
                                                              kv[0][2])):
        done = [r for r in runs if r["status"] == "completed"]
        relax = [r["relaxations_min"] for r in done if r["relaxations_min"] is not None]
        lines.append(
            f"| {arch} | {rule} | {setting} | {mean_std([r['val_top1'] for r in done], 1, 100)} | "
            f"{mean_std([r['weight_angle'] for r in done])} | "
            f"{mean_std([r['fixed_point_angle'] for r in done])} | "
            f"{mean_std(relax, 2) if relax else '-'} | {len(runs) - len(done)}/{len(runs)} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"1": "o", "auto": "^"}
    for rule in LEARNED:
        for setting in ("1", "auto"):
            xs, ys = [], []
            for r in results:
                if r["rule"] != rule or r["setting"] != setting or r["status"] != "completed":
                    continue
                for layer in r["layers"].values():
                    n, angle = layer.get("relaxations"), layer.get("fixed_point_angle")
                    if n is not None and angle is not None and math.isfinite(angle):
                        xs.append(max(n, 1e-3))
                        ys.append(angle)
            if xs:
                ax.scatter(xs, ys, s=12, alpha=0.6, marker=markers[setting],
                           label=f"{rule}, multiplier {setting}")
    n = np.geomspace(1e-3, 100, 400)
    ax.plot(n, np.degrees(np.arctan(1 / np.expm1(n))), color="black",
            label="predicted, W frozen: atan(1/(e^n - 1))")
    ax.axvline(3, color="grey", linestyle=":", label="3 relaxation times")
    ax.set_xscale("log")
    ax.set_xlabel("relaxation times the run gave the layer's B (log scale)")
    ax.set_ylabel("angle between B and its rule's fixed point (degrees), end of training")
    ax.set_title("B's alignment vs its relaxation budget, per layer")
    ax.set_ylim(0, 95)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet8,resnet20")
    add_run_options(parser, out="dynamics", epochs=3)
    parser.add_argument("--only", default="",
                        help="run only these rules or rule:setting pairs, e.g. "
                             "backprop,symmetric_alignment:auto")
    args = parser.parse_args()
    out = Path(args.out)
    common = {"dataset": args.dataset, "train_subset": args.train_subset,
              "epochs": args.epochs, "batch_size": args.batch}
    results = run_all(out, plan_runs(args), execute, common, args.workers, lambda r: (
        f"{r['status']}, val top-1 {r['val_top1']}, relax {r['relaxations_min']}"))
    table = summarize(results, args)
    (out / "summary.md").write_text(table + "\n")
    plot(results, out / "angle_vs_relaxations.png")
    print("\n" + table)


if __name__ == "__main__":
    main()
