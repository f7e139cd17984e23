"""The rules that settle (activation relaxation, predictive coding, dynamic inversion) and
phaseless alignment beside backprop and feedback alignment: each at its defaults and at the
best of a small sweep, on every architecture it takes, over seeds.

Stage 1 runs the service's own sweep (``search.sweep.run_sweep``: Ray Tune, TPE, an Optuna
study in ``OUT/studies.db``, the rule's declared space) on each rule and architecture:
``--sweep-trials`` trials of ``--sweep-epochs`` epochs on ``--sweep-subset`` examples. Stage 2
trains every rule at its defaults, and each swept rule at its sweep's best setting, for
``--epochs`` epochs on ``--train-subset`` examples and ``--seeds`` seeds. Every sweep searches
the learning rate beside the rule's own parameters (a rule whose updates are larger than
backprop's, as dynamic inversion's, diverges at the trainer's default 0.05). The sweeps search T
(``inference_steps``) up to ``--max-steps`` (default 200: the declared range reaches 1000,
ten times the defaults' cost per step, which a CPU benchmark cannot afford). A rule refused by an
architecture is listed with its one-line reason.

Writes ``runs.jsonl`` (a re-run skips finished runs; the sweeps continue their studies only
up to ``--sweep-trials``) and ``summary.md``.

    python bench/relaxation_rules.py --out relaxation-rules [--archs mlp,lenet] [--seeds 3]
        [--dataset fashion_mnist --train-subset 10000 --epochs 3] [--sweep-trials 8]
        [--max-steps 200]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from run_log import add_run_options, run_all

REFERENCES = ("backprop", "feedback_alignment")
SWEPT = ("activation_relaxation", "predictive_coding", "dynamic_inversion",
         "phaseless_alignment")


def best_setting(rule: str, arch: str, args: argparse.Namespace, out: Path
                 ) -> dict[str, Any] | str:
    """The sweep's best parameters, or the one-line reason the rule cannot run there."""
    import optuna

    import trainer
    from catalogue.errors import UsageError
    from search.specs import SweepSpec
    from search.sweep import run_sweep
    from spaces.overrides import apply_overrides
    from spaces.registry import default_space

    storage = f"sqlite:///{(out / 'studies.db').resolve()}"
    name = f"{rule}.{arch}.{args.dataset}"
    try:
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        done = 0
    if done < args.sweep_trials:
        relaxes = trainer.rule_declaration(rule).option("inference_steps") is not None
        space = apply_overrides(default_space(rule, tune_lr=True), ranges=[
            f"inference_steps=1:{args.max_steps}"] if relaxes else [])
        spec = SweepSpec(rule=rule, arch=arch, dataset=args.dataset, study=name, space=space,
                         trials=args.sweep_trials - done, epochs=args.sweep_epochs,
                         storage=storage, train={"train_subset": args.sweep_subset,
                                                 "batch_size": args.batch})
        try:
            run_sweep(spec)
        except UsageError as error:
            return str(error)
    study = optuna.load_study(study_name=name, storage=storage)
    if not any(t.value is not None for t in study.trials):
        return f"no trial of its sweep {name} completed"
    return {"params": study.best_trial.params, "sweep_value": study.best_value}


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    import torch

    import trainer
    from catalogue.errors import UsageError

    from search.trial_io import split_sampled

    torch.set_num_threads(1)
    meta, options = split_sampled(run["rule"], run["params"])  # lr is a training option
    config = {**common, **options, "rule": run["rule"], "arch": run["arch"],
              "seed": run["seed"], "metaparameters": meta}
    try:
        result = trainer.train(config)
    except UsageError as error:
        return {**run, "status": "refused", "reason": str(error)}
    return {**run, "status": result.status, "reason": result.reason,
            "best_val_top1": result.best_val_top1, "wall_time": result.wall_time}


def summarize(results: list[dict[str, Any]], args: argparse.Namespace,
              refused: dict[tuple[str, str], str]) -> str:
    lines = [f"{args.dataset}, {args.train_subset or 'all'} training examples, {args.epochs} "
             f"epochs, batch {args.batch}, {args.seeds} seeds; sweeps: {args.sweep_trials} "
             f"trials of {args.sweep_epochs} epoch(s) on {args.sweep_subset} examples", "",
             "| arch | rule | setting | val top-1 (mean ± std) | seeds | diverged | parameters |",
             "|---|---|---|---|---|---|---|"]
    for arch in args.archs.split(","):
        for rule in [*REFERENCES, *SWEPT]:
            if (rule, arch) in refused:
                lines.append(f"| {arch} | {rule} | - | refused: {refused[rule, arch]} | | | |")
                continue
            for setting in ("defaults", "best of sweep"):
                runs = [r for r in results if (r["arch"], r["rule"], r["setting"])
                        == (arch, rule, setting)]
                if not runs:
                    continue
                ok = [r["best_val_top1"] for r in runs if r["status"] == "completed"]
                spread = statistics.stdev(ok) if len(ok) > 1 else 0.0
                mean = f"{statistics.fmean(ok):.4f} ± {spread:.4f}" if ok else "-"
                params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in runs[0]["params"].items()) or "-"
                lines.append(f"| {arch} | {rule} | {setting} | {mean} | {len(ok)} | "
                             f"{len(runs) - len(ok)} | {params} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mlp,lenet")
    parser.add_argument("--sweep-trials", type=int, default=8)
    parser.add_argument("--sweep-epochs", type=int, default=1)
    parser.add_argument("--sweep-subset", type=int, default=5000)
    parser.add_argument("--max-steps", type=int, default=200)
    add_run_options(parser, out="relaxation-rules", epochs=3)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import trainer

    rules = [r for r in SWEPT if r in trainer.list_rules()]
    planned: list[dict[str, Any]] = []
    refused: dict[tuple[str, str], str] = {}
    for arch in args.archs.split(","):
        settings: list[tuple[str, str, dict[str, Any]]] = [
            (rule, "defaults", {}) for rule in [*REFERENCES, *rules]]
        for rule in rules:
            best = best_setting(rule, arch, args, out)
            if isinstance(best, str):
                refused[rule, arch] = best
                settings = [s for s in settings if s[0] != rule]
                continue
            settings.append((rule, "best of sweep", best["params"]))
        planned += [{"arch": arch, "rule": rule, "setting": setting, "params": params,
                     "seed": seed, "key": f"{arch}|{rule}|{setting}|{seed}"}
                    for rule, setting, params in settings for seed in range(args.seeds)]
    common = {"dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch}
    if args.train_subset:
        common["train_subset"] = args.train_subset
    results = run_all(out, planned, execute, common, args.workers,
                      lambda r: f"{r['status']}, best val top-1 {r.get('best_val_top1')}")
    for r in results:
        if r["status"] == "refused":
            refused[r["rule"], r["arch"]] = r["reason"]
    table = summarize(results, args, refused)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
