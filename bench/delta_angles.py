"""Per layer, the angle between the error δ_l a rule delivers to the layer's output and the
true ∂L/∂a_l (trainer.diagnostics' delta angle), at initialisation and as training goes on.

The claim it measures: vanilla direct feedback alignment's δ on conv layers sits near 90°.
A method is a rule with options, ``rule:name=value:name=value`` (DFA's variants), so what an
option does to the angle is one more method.

Each run builds the model as training does and measures the delta angle on the probe batch
the loop measures on (the first validation batch) before the first step, then trains
``--epochs`` epochs (of at most ``--steps-per-epoch`` steps) with the diagnostics on, so that every
epoch's record carries the angle after that many steps.

Writes ``runs.jsonl`` (a re-run skips finished runs) and ``summary.md`` (per method and
checkpoint, each layer's angle as mean ± sd over seeds, and the validation top-1).

    python bench/delta_angles.py --out delta-angles [--arch lenet] [--dataset fashion_mnist]
        [--methods backprop,feedback_alignment,direct_feedback_alignment]
        [--epochs 4] [--steps-per-epoch 50] [--seeds 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from run_log import add_run_options, run_all

METHODS = "backprop,feedback_alignment,direct_feedback_alignment"


def parse_method(method: str) -> tuple[str, dict[str, Any]]:
    """'rule:name=value:...' -> (rule, options); a value is read as an int, a float or a
    string, as the command line's --set reads it."""
    rule, *settings = method.split(":")
    options: dict[str, Any] = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep:
            raise SystemExit(f"method {method!r}: option {setting!r} is not name=value")
        for kind in (int, float):
            try:
                options[name] = kind(text)
                break
            except ValueError:
                continue
        else:
            options[name] = text
    return rule, options


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process (one torch thread): the angles at initialisation, then
    training with the diagnostics each epoch."""
    import torch
    import torch.nn.functional as F

    import trainer
    from catalogue.errors import UsageError
    from catalogue.training import TrainConfig
    from trainer.conversion import weight_layers
    from trainer.diagnostics import delta_angles
    from trainer.loop import build

    torch.set_num_threads(1)
    rule, options = parse_method(run["method"])
    config = {**common, "rule": rule, "seed": run["seed"], "metaparameters": options}
    try:
        model, data = build(TrainConfig.from_dict(config))
    except UsageError as error:
        return {**run, "status": "refused", "reason": str(error)}
    kinds = {name: "conv" if isinstance(layer, torch.nn.Conv2d) else "fc"
             for name, layer in weight_layers(model)}
    x, y = next(iter(data.val.batches(0)))
    per_epoch = min(len(data.train), common["max_steps_per_epoch"] or len(data.train))
    checkpoints = [{"steps": 0, "angles": delta_angles(model, x, y, F.cross_entropy)}]
    result = trainer.train(config)
    for record in result.history:
        layers = record.get("diagnostics", {}).get("layers", {})
        checkpoints.append({
            "steps": record["epoch"] * per_epoch,
            "angles": {name: v["delta_angle"] for name, v in layers.items()
                       if "delta_angle" in v},
            "val_top1": record.get("val_top1")})
    return {**run, "status": result.status, "reason": result.reason, "kinds": kinds,
            "checkpoints": checkpoints, "wall_time": result.wall_time}


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarize(results: list[dict[str, Any]], methods: list[str], args: argparse.Namespace
              ) -> str:
    done = [r for r in results if r["status"] != "refused"]
    if not done:
        return "no method ran"
    kinds = done[0]["kinds"]
    names = list(kinds)
    lines = [f"{args.arch} on {args.dataset} ({args.train_subset or 'all'} training examples, "
             f"batch {args.batch}, lr {args.lr}, {args.seeds} seeds): the delta angle "
             "∠(δ_l, ∂L/∂a_l) in degrees per weight layer, mean ± sd over seeds", "",
             "| method | steps | " + " | ".join(f"{kinds[n]} {n}" for n in names)
             + " | conv mean | fc mean (hidden) | val top-1 |",
             "|---|---|" + "---|" * (len(names) + 3)]
    hidden_fc = [n for n in names if kinds[n] == "fc"][:-1]  # the output layer's δ is e
    conv = [n for n in names if kinds[n] == "conv"]
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        refused = [r for r in runs if r["status"] == "refused"]
        if refused:
            lines.append(f"| {method} | - | refused: {refused[0]['reason']} |"
                         + " |" * (len(names) + 2))
            continue
        steps = sorted({c["steps"] for r in runs for c in r["checkpoints"]})
        for step in steps:
            at = [c for r in runs for c in r["checkpoints"] if c["steps"] == step]
            cells = [_spread([c["angles"][n] for c in at if n in c["angles"]]) for n in names]
            groups = [_spread([statistics.fmean([c["angles"][n] for n in group])
                               for c in at if all(n in c["angles"] for n in group)])
                      if group else "-" for group in (conv, hidden_fc)]
            top1 = [c["val_top1"] for c in at if c.get("val_top1") is not None]
            lines.append(f"| {method} | {step} | " + " | ".join(cells) + " | "
                         + " | ".join(groups) + " | "
                         + (f"{statistics.fmean(top1):.4f}" if top1 else "-") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--methods", default=METHODS,
                        help="comma-separated rule[:name=value...] (default: %(default)s)")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="cap on each epoch's steps (0: whole epochs)")
    parser.add_argument("--lr", type=float, default=0.01,
                        help="0.01: where DFA trains LeNet (it diverges at 0.05)")
    parser.add_argument("--val-subset", type=int, default=2000)
    add_run_options(parser, out="delta-angles", epochs=4)
    args = parser.parse_args()
    methods = args.methods.split(",")
    for method in methods:
        parse_method(method)
    common = {"arch": args.arch, "dataset": args.dataset, "train_subset": args.train_subset or None,
              "val_subset": args.val_subset, "epochs": args.epochs, "batch_size": args.batch,
              "lr": args.lr, "max_steps_per_epoch": args.steps_per_epoch or None,
              "diagnostics": True}
    planned = [{"key": f"{method}/seed{seed}", "method": method, "seed": seed}
               for method in methods for seed in range(args.seeds)]
    out = Path(args.out)
    results = run_all(out, planned, execute, common, args.workers,
                      lambda r: r["status"] if r["status"] == "refused" else
                      f"{r['status']}, {r['wall_time']:.0f} s")
    summary = summarize(results, methods, args)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
