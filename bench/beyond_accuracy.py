"""Liu et al.'s question on feedforward rules: do the local rules (feedback alignment, weight
mirror, information alignment) end at higher loss curvature and with larger generalisation gaps
than backprop and symmetric alignment?

Every rule and seed trains with ``--curvature`` (the service's own end-of-run measurement:
top Hessian eigenvalue and Hutchinson trace of the true loss, B excluded, eval mode; train
top-1 on a fixed training subset minus val top-1; val top-1 under Gaussian input noise). The
learned-B rules run with ``--feedback-lr-multiplier auto``, the setting under which B reaches
its fixed point (docs/design.md section 7).

Two controls for what λ_max and the gap compare. In a BatchNorm network λ_max scales as 1/‖W‖²
(scaling the weights in front of a BatchNorm changes nothing else), so λ_max·‖W‖² is reported
beside it. And the local rules underfit at equal epochs, so the gap is also read at matched
training accuracy: with ``--match-top1 X`` every epoch is measured, and the gap is taken at
the first epoch whose train top-1 (eval mode, fixed subset) reaches X.

Writes ``runs.jsonl`` (one line per finished run; a re-run skips them), ``summary.md`` (mean ±
std over seeds, and per local rule whether it is above both references) and
``beyond_accuracy.png`` (every seed as a dot, the mean as a bar).

    python bench/beyond_accuracy.py --out beyond [--arch resnet8] [--seeds 3]
        [--dataset fashion_mnist --train-subset 10000 --epochs 5 --batch 128] [--workers 2]
        [--match-top1 0.8]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

from run_log import add_run_options, run_all

REFERENCES = ("backprop", "symmetric_alignment")
LOCAL = ("feedback_alignment", "weight_mirror", "information_alignment")
LEARNED = ("symmetric_alignment", "weight_mirror", "information_alignment")
MEASURES = {"val_top1": "val top-1 (fraction)",
            "top_eigenvalue": "top Hessian eigenvalue of the true loss",
            "top_eigenvalue_scaled": "λ_max × ‖W‖² (every weight layer's W)",
            "generalization_gap": "generalisation gap (train − val top-1)",
            "matched_gap": "gap at the first epoch with train top-1 ≥ --match-top1",
            "noise_drop": "val top-1 lost under input noise σ = 0.5"}


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """One training run in a worker process (one torch thread), summarized."""
    import torch

    import trainer

    torch.set_num_threads(1)
    multiplier = "auto" if run["rule"] in LEARNED else 1.0
    match = common.pop("match_top1", None)
    result = trainer.train({**common, "rule": run["rule"], "seed": run["seed"],
                            "feedback_lr_multiplier": multiplier, "curvature": True,
                            "curvature_every": 1 if match else 0})
    matched = matched_gap(result.history, match) if match else (None, None)
    final = result.final or {}
    c = final.get("curvature") or {}
    noisy = c.get("noisy_val_top1") or {}
    drop = noisy["0"] - noisy["0.5"] if {"0", "0.5"} <= set(noisy) else None
    return {**run, "status": result.status, "reason": result.reason or c.get("error"),
            "val_top1": final.get("val_top1"), "top_eigenvalue": c.get("top_eigenvalue"),
            "top_eigenvalue_scaled": c.get("top_eigenvalue_scaled"),
            "weight_norm_sq": c.get("weight_norm_sq"),
            "matched_gap": matched[0], "matched_epoch": matched[1],
            "trace": c.get("trace"), "generalization_gap": c.get("generalization_gap"),
            "train_top1_eval": c.get("train_top1_eval"), "noisy_val_top1": noisy,
            "noise_drop": drop, "measure_seconds": c.get("seconds"),
            "wall_time": result.wall_time}


def matched_gap(history: list[dict[str, Any]], level: float
                ) -> tuple[float | None, int | None]:
    """The gap, and the epoch, where the run's train top-1 (eval mode) first reaches
    ``level``; (None, None) for a run that never does."""
    for record in history:
        c = record.get("curvature") or {}
        if (c.get("train_top1_eval") or 0.0) >= level:
            return c.get("generalization_gap"), record["epoch"]
    return None, None


def _values(results: list[dict[str, Any]], rule: str, key: str) -> list[float]:
    return [r[key] for r in results if r["rule"] == rule and r.get(key) is not None
            and math.isfinite(r[key])]


def _stat(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {std:{fmt}}"


def summarize(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rules = [*REFERENCES, *LOCAL]
    lines = [f"{args.arch} on {args.dataset} (train subset {args.train_subset}), {args.epochs} "
             f"epochs, batch {args.batch}, {args.seeds} seeds; learned B at multiplier auto", "",
             "| rule | val top-1 | λ_max | ‖W‖² | λ_max·‖W‖² | trace | gen. gap | "
             f"gap at train top-1 ≥ {args.match_top1} (epoch; runs) | drop at σ=0.5 | runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rule in rules:
        epochs = _values(results, rule, "matched_epoch")
        matched = (f"{_stat(_values(results, rule, 'matched_gap'), '.4f')} "
                   f"({statistics.fmean(epochs):.1f}; {len(epochs)})" if epochs else "never")
        lines.append(f"| {rule} | {_stat(_values(results, rule, 'val_top1'), '.4f')} | "
                     f"{_stat(_values(results, rule, 'top_eigenvalue'), '.3g')} | "
                     f"{_stat(_values(results, rule, 'weight_norm_sq'), '.3g')} | "
                     f"{_stat(_values(results, rule, 'top_eigenvalue_scaled'), '.3g')} | "
                     f"{_stat(_values(results, rule, 'trace'), '.3g')} | "
                     f"{_stat(_values(results, rule, 'generalization_gap'), '.4f')} | "
                     f"{matched if args.match_top1 else '-'} | "
                     f"{_stat(_values(results, rule, 'noise_drop'), '.4f')} | "
                     f"{len([r for r in results if r['rule'] == rule])} |")
    lines += ["", "Is the local rule's mean above both references' means (and above every "
              "reference seed)?", ""]
    for key in ("top_eigenvalue", "top_eigenvalue_scaled", "generalization_gap",
                "matched_gap"):
        reference = {rule: _values(results, rule, key) for rule in REFERENCES}
        if not all(reference.values()):
            continue
        top = max(statistics.fmean(v) for v in reference.values())
        every = max(max(v) for v in reference.values())
        for rule in LOCAL:
            mine = _values(results, rule, key)
            if mine:
                mean = statistics.fmean(mine)
                lines.append(f"- {key}, {rule}: {'yes' if mean > top else 'no'} "
                             f"({mean:.4g} vs {top:.4g}); every seed above every reference "
                             f"seed: {'yes' if min(mine) > every else 'no'}")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [*REFERENCES, *LOCAL]
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 4.5))
    for ax, (key, label) in zip(axes, MEASURES.items()):
        for i, rule in enumerate(rules):
            values = _values(results, rule, key)
            color = "tab:blue" if rule in REFERENCES else "tab:red"
            if values:
                ax.bar(i, statistics.fmean(values), color=color, alpha=0.35)
                ax.scatter([i] * len(values), values, color=color, s=18, zorder=3)
        ax.set_xticks(range(len(rules)))
        ax.set_xticklabels(rules, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if key.startswith("top_eigenvalue"):
            ax.set_yscale("log")
    fig.suptitle(f"{title} (blue: backprop and non-local SA; red: local rules; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet8")
    parser.add_argument("--match-top1", type=float, default=0.0,
                        help="also the gap at the first epoch whose train top-1 reaches this "
                             "(measures every epoch; 0: off)")
    add_run_options(parser, out="beyond", epochs=5)
    args = parser.parse_args()
    out = Path(args.out)
    planned = [{"rule": rule, "seed": seed, "key": f"{rule}|{seed}"}
               for seed in range(args.seeds) for rule in (*REFERENCES, *LOCAL)]
    common = {"arch": args.arch, "dataset": args.dataset, "train_subset": args.train_subset,
              "epochs": args.epochs, "batch_size": args.batch,
              "match_top1": args.match_top1 or None}
    results = run_all(out, planned, execute, common, args.workers, lambda r: (
        f"{r['status']}, val top-1 {r['val_top1']}, λ_max {r['top_eigenvalue']}, "
        f"gap {r['generalization_gap']}"))
    table = summarize(results, args)
    (out / "summary.md").write_text(table + "\n")
    plot(results, out / "beyond_accuracy.png",
         f"{args.arch} on {args.dataset}, {args.epochs} epochs")
    print("\n" + table)


if __name__ == "__main__":
    main()
