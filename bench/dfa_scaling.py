"""Does DFA scale? Backprop, feedback alignment, plain direct feedback alignment and DFA's
variants (Han et al.: modules, sparse feedback, a BP/DFA hybrid) on LeNet and ResNet-20, over
seeds, with each weight layer's delta angle: the angle between the error δ_l its output
receives under the rule and the true ∂L/∂a_l, measured at the end of every epoch.

Each row runs at every learning rate of ``--lrs`` and is reported at the one with the best mean
val top-1 over the seeds (a diverged seed counts 0). A variant is ``label=rule:option=value,...``
(the rule's typed options, as ``--set`` takes them), e.g.
``dfa_modules3=direct_feedback_alignment:modules=3``.

Writes ``runs.jsonl`` (a re-run skips finished runs), ``summary.md`` and ``delta_angles.png``
(each row's final delta angle per layer, one panel per architecture).

    python bench/dfa_scaling.py --out dfa-scaling [--archs lenet,resnet20] [--seeds 3]
        [--dataset fashion_mnist --train-subset 10000 --epochs 3] [--lrs 0.01,0.05]
        [--variants LABEL=RULE:OPT=V,...] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

from catalogue.errors import UsageError
from run_log import add_run_options, run_all
from search.cli.base import parse_numbers

BASELINES = ("backprop=backprop", "feedback_alignment=feedback_alignment",
             "dfa=direct_feedback_alignment")


def parse_variant(text: str) -> dict[str, Any]:
    """``label=rule:opt=value,...`` -> {"label", "rule", "options"}; values are numbers where
    they parse as numbers."""
    label, _, spec = text.partition("=")
    rule, _, options = spec.partition(":")
    if not label or not rule:
        raise SystemExit(f"--variants: expected LABEL=RULE[:OPT=VALUE,...], got {text!r}")
    try:
        parsed = parse_numbers(list(filter(None, options.split(","))), "--variants", names=True)
    except UsageError as exc:
        raise SystemExit(str(exc)) from None
    return {"label": label, "rule": rule, "options": parsed}


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    import torch

    import trainer

    torch.set_num_threads(common.pop("threads", 1))
    result = trainer.train({**common, "arch": run["arch"], "rule": run["rule"],
                            "metaparameters": run["options"], "seed": run["seed"],
                            "lr": run["lr"]})
    last = result.history[-1] if result.history else {}
    layers = (last.get("diagnostics") or {}).get("layers") or {}
    return {**run, "status": result.status, "reason": result.reason,
            "best_val_top1": result.best_val_top1,
            "delta_angles": {name: d.get("delta_angle") for name, d in layers.items()},
            "update_angles": {name: d.get("update_angle") for name, d in layers.items()},
            "wall_time": result.wall_time}


def _score(run: dict[str, Any]) -> float:
    top1 = run.get("best_val_top1")
    ok = run["status"] == "completed" and top1 is not None and math.isfinite(top1)
    return float(top1) if ok else 0.0


def best_runs(results: list[dict[str, Any]], arch: str, label: str
              ) -> tuple[list[dict[str, Any]], float | None]:
    """The row's runs at its best learning rate (best mean val top-1), and that rate."""
    runs = [r for r in results if r["arch"] == arch and r["label"] == label]
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    if not by_lr:
        return [], None
    lr = max(by_lr, key=lambda k: statistics.fmean(_score(r) for r in by_lr[k]))
    return by_lr[lr], lr


def mean_angles(runs: list[dict[str, Any]], key: str = "delta_angles") -> dict[str, float]:
    """Per layer, the mean over completed runs of the final angle (layers in model order)."""
    per: dict[str, list[float]] = {}
    for r in runs:
        if r["status"] != "completed":
            continue
        for name, angle in (r.get(key) or {}).items():
            if angle is not None and math.isfinite(angle):
                per.setdefault(name, []).append(angle)
    return {name: statistics.fmean(v) for name, v in per.items()}


def summarize(results: list[dict[str, Any]], rows: list[dict[str, Any]],
              args: argparse.Namespace) -> str:
    lines = [f"{args.dataset}, {args.train_subset or 'all'} training examples, {args.epochs} "
             f"epochs, batch {args.batch}, lr in {args.lrs} (best mean), {args.seeds} seeds "
             "(SGD, Nesterov 0.9, cosine, the trainer's defaults otherwise)", ""]
    for arch in args.archs.split(","):
        lines += [f"### {arch}", "",
                  "| row | rule, options | val top-1 (mean ± std) | completed | lr | "
                  "mean δ angle (°) | per-layer δ angle (°), input → output |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            runs, lr = best_runs(results, arch, row["label"])
            if not runs:
                continue
            scores = [_score(r) for r in runs]
            done = sum(r["status"] == "completed" for r in runs)
            angles = mean_angles(runs)
            mean = statistics.fmean(angles.values()) if angles else float("nan")
            per_layer = ", ".join(f"{a:.0f}" for a in angles.values()) or "-"
            options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
            lines.append(
                f"| {row['label']} | {row['rule']}{': ' + options if options else ''} | "
                f"{statistics.fmean(scores):.3f} ± "
                f"{statistics.stdev(scores) if len(scores) > 1 else 0.0:.3f} | "
                f"{done}/{len(runs)} | {lr:g} | {mean:.1f} | {per_layer} |")
        reasons = {r["reason"] for r in results if r["arch"] == arch and r.get("reason")}
        if reasons:
            lines += ["", "Not completed: " + "; ".join(sorted(reasons))[:600]]
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], rows: list[dict[str, Any]], archs: list[str],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for row in rows:
            runs, _ = best_runs(results, arch, row["label"])
            angles = mean_angles(runs)
            if angles:
                ax.plot(range(len(angles)), list(angles.values()), marker="o",
                        label=row["label"])
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.set(title=arch, xlabel="weight layer (input → output)",
               ylabel="δ angle to the true ∂L/∂a (°)", ylim=(-5, 120))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="lenet,resnet20")
    parser.add_argument("--lrs", default="0.01,0.05")
    parser.add_argument("--variants", nargs="*", default=[],
                        help="LABEL=RULE:OPT=VALUE,... rows beside backprop, FA and plain DFA")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    add_run_options(parser, out="dfa-scaling", epochs=3)
    args = parser.parse_args()
    rows = [parse_variant(v) for v in (*BASELINES, *args.variants)]
    planned = [{"arch": arch, "label": row["label"], "rule": row["rule"],
                "options": row["options"], "seed": seed, "lr": lr,
                "key": f"{arch}|{row['label']}|{lr:g}|{seed}"}
               for arch in args.archs.split(",") for seed in range(args.seeds)
               for lr in map(float, args.lrs.split(",")) for row in rows]
    common: dict[str, Any] = {"dataset": args.dataset, "epochs": args.epochs,
                              "batch_size": args.batch, "threads": args.threads}
    if args.train_subset:
        common["train_subset"] = args.train_subset
    out = Path(args.out)
    results = run_all(out, planned, execute, common, args.workers,
                      lambda r: f"{r['status']}, best val top-1 {r['best_val_top1']}")
    table = summarize(results, rows, args)
    (out / "summary.md").write_text(table + "\n")
    plot(results, rows, args.archs.split(","), out / "delta_angles.png")
    print("\n" + table + f"\nplot: {out / 'delta_angles.png'}")


if __name__ == "__main__":
    main()
