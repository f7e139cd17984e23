"""Why the sign rules lag backprop on LeNet: one factor at a time, against a baseline.

Every cell is the baseline (LeNet, SGD with Nesterov momentum 0.9, cosine schedule, lr 0.05,
weight decay 5e-4, batch 128, PyTorch's default initialisation, B held at B0's norm) with one
thing changed: a higher learning rate, B's scale tracking W's (the sign rules' ``scale``: norm or fit),
BioTorch's initialisation (Xavier-uniform W, zero biases, B drawn at that W's scale), BioTorch's
weight decay or batch size. Printed: val top-1 (%) per rule and factor, its gap to backprop in
the same cell, and the smallest ||B|| / ||W|| over the layers at the end of training (the
error a lower layer receives shrinks by the product of the ratios above it).

    python bench/sign_factors.py --out sign-factors [--rules backprop,usf,frsf,brsf]
        [--factors baseline,lr=0.1,scale=fit+lr=0.1,...] [--seeds 1] [--epochs 3] [--train-subset 0]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

from run_log import add_run_options, run_all

XAVIER_LENET = "lenet_xavier"
# name -> what it changes in the baseline's TrainConfig ("metaparameters": the rule's options).
FACTORS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "lr=0.1": {"lr": 0.1},
    "lr=0.2": {"lr": 0.2},
    "scale=norm": {"metaparameters": {"scale": "norm"}},
    "scale=fit": {"metaparameters": {"scale": "fit"}},
    "xavier_init": {"arch": XAVIER_LENET},
    "weight_decay=1e-3": {"weight_decay": 1e-3},
    "weight_decay=0": {"weight_decay": 0.0},
    "batch=64": {"batch_size": 64},
}
BASELINE = {"arch": "lenet", "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128}
SIGN_BASELINE = {"scale": "initial"}  # the sign rules' B as it was: B0's scale throughout


def _register_xavier_lenet() -> None:
    """BioTorch's initialisation of its layers (fa_constructor: xavier_uniform_ W, zero bias),
    on our LeNet, as an architecture of this script's own."""
    from torch import nn

    from catalogue.architectures import ARCHITECTURES, Architecture, register_architecture
    from trainer.models import lenet

    if XAVIER_LENET in ARCHITECTURES:
        return

    def build(**kwargs: Any) -> nn.Module:
        model = lenet(**kwargs)
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        return model

    register_architecture(Architecture(XAVIER_LENET, "lenet", "LeNet-5, Xavier-uniform W and "
                                       "zero biases (BioTorch's)", build, image_sizes=(24, 32)))


def changes(factor: str) -> dict[str, Any]:
    """What a factor changes; factors joined by '+' change all their settings at once."""
    merged: dict[str, Any] = {}
    for name in factor.split("+"):
        for key, value in FACTORS[name].items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def backprop_factor(factor: str) -> str:
    """Backprop's cell to compare a factor with: the same settings without the rule options."""
    return "+".join(name for name in factor.split("+")
                    if "metaparameters" not in FACTORS[name]) or "baseline"


def applies(rule: str, factor: str) -> bool:
    """A rule option's factor applies only to the rules that declare it."""
    return "metaparameters" not in changes(factor) or rule != "backprop"


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    import torch

    import trainer

    torch.set_num_threads(1)
    _register_xavier_lenet()
    changed = changes(run["factor"])
    config = {**common, **BASELINE, **changed, "rule": run["rule"], "seed": run["seed"]}
    if run["rule"] != "backprop":
        config["metaparameters"] = {**SIGN_BASELINE, **changed.get("metaparameters", {})}
    result = trainer.train(config)
    ratios = [layer["norm_ratio"] for layer in
              (result.history[-1].get("diagnostics") or {}).get("layers", {}).values()
              if layer.get("norm_ratio") is not None] if result.history else []
    return {**run, "status": result.status, "reason": result.reason,
            "best_val_top1": result.best_val_top1,
            "min_norm_ratio": min(ratios) if ratios and run["rule"] != "backprop" else None,
            "wall_time": result.wall_time}


def _score(runs: list[dict[str, Any]]) -> float | None:
    """Mean best val top-1 (%); a failed or diverged run counts as 10 % (chance)."""
    scores = [100 * r["best_val_top1"] if r["status"] == "completed"
              and r["best_val_top1"] is not None and math.isfinite(r["best_val_top1"])
              else 10.0 for r in runs]
    return statistics.fmean(scores) if scores else None


def summarize(results: list[dict[str, Any]], rules: list[str], factors: list[str],
              args: argparse.Namespace) -> str:
    subset = f"{args.train_subset} training images" if args.train_subset else "60k images"
    lines = [f"LeNet on {args.dataset} ({subset}), {args.epochs} epochs, {args.seeds} seed(s): "
             "best val top-1 (%), in brackets the gap to backprop with the same settings (rule "
             "options aside) and the smallest ||B||/||W|| over the layers at the end", "",
             "| factor | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
    for factor in factors:
        cells = {rule: [r for r in results if r["rule"] == rule and r["factor"] == factor]
                 for rule in rules}
        scores = {rule: _score(runs) for rule, runs in cells.items()}
        bp = _score([r for r in results if r["rule"] == "backprop"
                     and r["factor"] == backprop_factor(factor)])
        row = []
        for rule in rules:
            score = scores[rule]
            if score is None:
                row.append("-")
                continue
            notes = []
            if rule != "backprop" and bp is not None:
                notes.append(f"{score - bp:+.1f}")
            ratios = [r["min_norm_ratio"] for r in cells[rule] if r.get("min_norm_ratio")]
            if ratios:
                notes.append(f"{statistics.fmean(ratios):.2f}")
            row.append(f"{score:.2f}" + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(f"| {factor} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="backprop,usf,frsf,brsf")
    parser.add_argument("--factors", default=",".join(FACTORS))
    parser.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=True,
                        help="measure ||B||/||W|| (a few seconds per epoch)")
    add_run_options(parser, out="sign-factors", epochs=3)
    parser.set_defaults(train_subset=0, seeds=1, workers=1)
    args = parser.parse_args()
    rules, factors = args.rules.split(","), args.factors.split(",")
    unknown = [f for f in factors if any(name not in FACTORS for name in f.split("+"))]
    if unknown:
        parser.error(f"unknown factor(s) {', '.join(unknown)}; known: {', '.join(FACTORS)}")
    planned = [{"rule": rule, "factor": factor, "seed": seed,
                "key": f"{rule}|{factor}|{seed}|{args.epochs}|{args.train_subset}"}
               for factor in factors for rule in rules if applies(rule, factor)
               for seed in range(args.seeds)]
    common = {"dataset": args.dataset, "epochs": args.epochs,
              "diagnostics": args.diagnostics}
    if args.train_subset:
        common["train_subset"] = args.train_subset
    results = run_all(Path(args.out), planned, execute, common, args.workers,
                      lambda r: f"{r['status']}, best val top-1 {r['best_val_top1']}")
    keys = {r["key"] for r in planned}
    table = summarize([r for r in results if r["key"] in keys], rules, factors, args)
    (Path(args.out) / "summary.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
