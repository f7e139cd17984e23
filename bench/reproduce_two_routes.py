"""Kunin et al. (2020)'s four findings, re-run on Fashion-MNIST with CIFAR-style ResNets.

1. TPE searches for weight mirror and information alignment on the source ResNet.
2. Transfer to deeper ResNets: their searches' settings (chosen on the source alone,
   ``--select robust``: the best worst-seed accuracy among the top-k), and symmetric and
   activation alignment at their official defaults; backprop on every depth and seed, once,
   in a baseline study the four transfers share.
3. A robustness study: every rule and backprop under noisy B updates.
4. The report, and each finding judged on the numbers (mean ± std over seeds):
   (a) weight mirror's tuned setting does not transfer: its gap to backprop widens with depth;
   (b) information alignment's transfers better than weight mirror's, with a gap to backprop
       that widens with depth;
   (c) symmetric and activation alignment match backprop (within a point) at every depth;
   (d) symmetric and activation alignment keep their accuracy under noisy B updates.

B gets enough relaxation times through ``--feedback-lr-multiplier auto`` (docs/design.md §7)
unless ``--multiplier`` says otherwise. Activation alignment steps B with the covariance
preconditioner (its stiff and soft modes at one rate) unless ``--aa-preconditioner none``
asks for the plain gradient the paper used. Every step reuses what an earlier run with the same
``--out`` finished. Sizes are flags; two presets:

    # CPU, 2 cores (see the README for its measured time)
    python bench/reproduce_two_routes.py --out reproduction --preset cpu
    # one GPU, closer to the paper: the full training set, deeper nets, more of everything
    python bench/reproduce_two_routes.py --out reproduction-gpu --preset gpu
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from search.execution import Execution  # noqa: E402

Execution().prepare()  # before anything imports Ray: a local Ray without its token notice

from search import storage as st  # noqa: E402
from search.reports import robustness_report, transfer_report  # noqa: E402
from search.robustness import run_robustness  # noqa: E402
from search.specs import RobustnessSpec  # noqa: E402
from search.sweep import SweepSpec, top_up  # noqa: E402
from search.transfer import TransferSpec, run_transfer  # noqa: E402

SEARCHED = ("weight_mirror", "information_alignment")
AT_DEFAULTS = ("symmetric_alignment", "activation_alignment")
ROBUSTNESS_RULES = ("symmetric_alignment", "activation_alignment", "information_alignment",
                    "backprop")
CLOSE = 0.01  # "matches backprop": within one point of top-1
PRESETS = {
    "cpu": dict(train_subset=3000, val_subset=3000, epochs=3, trials=10, top_k=3, seeds=3,
                targets="resnet8,resnet14,resnet20,resnet32", noise="0,1e-3,1e-2,1e-1",
                robustness_arch="resnet8", max_concurrent=2, cpus_per_trial=1.0,
                gpus_per_trial=0.0),
    "gpu": dict(train_subset=None, val_subset=None, epochs=30, trials=64, top_k=5, seeds=5,
                targets="resnet8,resnet14,resnet20,resnet32,resnet56,resnet110",
                noise="0,1e-4,1e-3,1e-2,1e-1", robustness_arch="resnet20", max_concurrent=4,
                cpus_per_trial=4.0, gpus_per_trial=0.25),
}


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reproduction")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="sizes to start from; every flag below overrides its own")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--source", default="resnet8")
    parser.add_argument("--multiplier", default="auto", help="B's learning-rate multiplier")
    parser.add_argument("--skip-robustness", action="store_true",
                        help="findings (a)-(c) only: no robustness study, no finding (d)")
    parser.add_argument("--aa-preconditioner", choices=("covariance", "none"),
                        default="covariance", help="activation alignment's B update")
    for name, kind in (("train-subset", int), ("val-subset", int), ("epochs", int),
                       ("trials", int), ("top-k", int), ("seeds", int), ("targets", str),
                       ("noise", str), ("robustness-arch", str), ("max-concurrent", int),
                       ("cpus-per-trial", float), ("gpus-per-trial", float)):
        parser.add_argument(f"--{name}", type=kind, default=None)
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'two_routes.db'}"
    targets = [t.strip() for t in args.targets.split(",")]
    multiplier: Any = args.multiplier if args.multiplier == "auto" else float(args.multiplier)
    train = {k: v for k, v in (("train_subset", args.train_subset),
                               ("val_subset", args.val_subset), ("data_dir", args.data_dir),
                               ("feedback_lr_multiplier", multiplier), ("batch_size", 128),
                               # acts on activation alignment's sparse term alone; shared, so
                               # that every transfer shares one baseline study
                               ("feedback_preconditioner", args.aa_preconditioner))
             if v is not None}
    execution = Execution(max_concurrent=args.max_concurrent,
                          cpus_per_trial=args.cpus_per_trial,
                          gpus_per_trial=args.gpus_per_trial, ray_dir=str(out / "ray"))
    common = dict(storage=url, execution=execution)
    quiet = lambda line: None  # noqa: E731
    started = time.perf_counter()
    for rule in SEARCHED:
        log(f"TPE search: {rule} on {args.source}, up to {args.trials} trials")
        top_up(SweepSpec(rule=rule, arch=args.source, dataset=args.dataset,
                         epochs=args.epochs, train=train, **common), args.trials, quiet)
    summaries: dict[str, dict] = {}
    names = []
    for rule in SEARCHED + AT_DEFAULTS:
        log(f"transfer: {rule} to {', '.join(targets)}, {args.seeds} seeds")
        searched = rule in SEARCHED
        spec = TransferSpec(rule=rule, targets=targets, dataset=args.dataset,
                            seeds=args.seeds, epochs=args.epochs,
                            source=args.source if searched else None, defaults=not searched,
                            top_k=args.top_k if searched else 1, select="robust",
                            baseline_study=f"baseline.{args.dataset}", train=train, **common)
        summaries[rule] = run_transfer(spec, progress=quiet)
        names.append(spec.study_name())
    robustness = None
    if not args.skip_robustness:
        log(f"robustness: {', '.join(ROBUSTNESS_RULES)} on {args.robustness_arch}, noise "
            f"{args.noise}, {args.seeds} seeds")
        robustness = run_robustness(RobustnessSpec(
            rules=list(ROBUSTNESS_RULES), arch=args.robustness_arch, dataset=args.dataset,
            noise=[float(v) for v in args.noise.split(",")], seeds=args.seeds,
            epochs=args.epochs, train=train, **common), progress=quiet)
    storage = st.open_storage(url)
    studies = [st.load_study(storage, name) for name in names]
    transfer_report(studies, out / "report", storage)
    if robustness is not None:
        robustness_report(st.load_study(storage, robustness["study"]), out / "report")
    minutes = (time.perf_counter() - started) / 60
    print_findings(summaries, robustness, targets, args, minutes)
    log(f"report in {out / 'report'}")


def _row(summary: dict, target: str) -> dict:
    return next(r for r in summary["rows"] if r["target"] == target)


def _pm(mean: float | None, std: float | None, scale: float = 100) -> str:
    if mean is None:
        return "every seed diverged"
    return f"{mean * scale:.1f} ± {(std or 0) * scale:.1f}"


def _gap_text(row: dict) -> str:
    if row["gap_to_backprop"] is None:
        return "n/a"
    spread = math.hypot(row["std"] or 0, row["backprop_std"] or 0)
    return f"{row['gap_to_backprop'] * 100:+.1f} ± {spread * 100:.1f}"


def print_findings(summaries: dict, robustness: dict | None, targets: list[str],
                   args: argparse.Namespace, minutes: float) -> None:
    print(f"\n{args.dataset}: train subset {args.train_subset}, val subset {args.val_subset}, "
          f"{args.epochs} epochs, B multiplier {args.multiplier}, activation alignment's "
          f"preconditioner {args.aa_preconditioner}, {args.trials} TPE trials "
          f"per search, {args.seeds} seeds; took {minutes:.0f} min\n")
    print("| val top-1 % (gap to backprop, points) | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    first = next(iter(summaries.values()))
    print("| backprop | " + " | ".join(_pm(_row(first, t)["backprop_mean"],
                                            _row(first, t)["backprop_std"])
                                        for t in targets) + " |")
    for rule, summary in summaries.items():
        cells = [f"{_pm(_row(summary, t)['mean'], _row(summary, t)['std'])} "
                 f"({_gap_text(_row(summary, t))})" for t in targets]
        print(f"| {rule} | " + " | ".join(cells) + " |")
    first_t, last_t = targets[0], targets[-1]
    gap = {rule: [_row(summaries[rule], t)["gap_to_backprop"] for t in (first_t, last_t)]
           for rule in summaries}
    spread = {rule: [math.hypot(_row(summaries[rule], t)["std"] or 0,
                                _row(summaries[rule], t)["backprop_std"] or 0)
                     for t in (first_t, last_t)] for rule in summaries}

    def widens(rule: str) -> bool:
        a, b = gap[rule]
        return b is None or (a is not None and b < a - max(spread[rule]))

    print("\nfindings (gaps in points of val top-1, mean ± the seeds' spread):")
    print(f"- (a) weight mirror's setting does not transfer (gap {first_t} -> {last_t}: "
          f"{_fmt_gap(gap['weight_mirror'])}): "
          f"{'reproduced' if widens('weight_mirror') else 'NOT reproduced'}")
    ia, wm = gap["information_alignment"][1], gap["weight_mirror"][1]
    better = ia is not None and (wm is None or ia > wm)
    print(f"- (b) information alignment transfers better than weight mirror at {last_t} "
          f"(gap {_fmt(ia)} vs {_fmt(wm)}) and its gap widens with depth "
          f"({_fmt_gap(gap['information_alignment'])}): "
          f"{'reproduced' if better and widens('information_alignment') else 'NOT reproduced'}")
    for rule in AT_DEFAULTS:
        gaps = [_row(summaries[rule], t)["gap_to_backprop"] for t in targets]
        close = all(g is not None and abs(g) <= CLOSE for g in gaps)
        print(f"- (c) {rule} within {CLOSE * 100:.0f} point of backprop at every depth "
              f"(gaps {[None if g is None else round(g * 100, 1) for g in gaps]}): "
              f"{'reproduced' if close else 'NOT reproduced'}")
    if robustness is None:
        print("- (d) not run (--skip-robustness)")
        return
    noisiest = max(r["noise"] for r in robustness["rows"])
    drops = {r["rule"]: r["drop"] for r in robustness["rows"] if r["noise"] == noisiest}
    hurt = [r for r, d in drops.items() if d is None or d < -CLOSE]
    # a noise no rule feels cannot tell a robust rule from a fragile one
    print(f"- (d) at noise variance {noisiest:g}, rules that lost more than "
          f"{CLOSE * 100:.0f} point: {', '.join(hurt) or 'none (the noise does not discriminate)'}")
    for rule in AT_DEFAULTS:
        kept = drops.get(rule) is not None and drops[rule] >= -CLOSE
        others = ", ".join(f"{r} {_fmt(drops.get(r))}" for r in ROBUSTNESS_RULES
                           if r not in AT_DEFAULTS)
        print(f"- (d) {rule} keeps its accuracy at noise variance {noisiest:g} (change "
              f"{_fmt(drops.get(rule))}; {others}): "
              f"{'reproduced' if kept else 'NOT reproduced'}")


def _fmt(value: float | None) -> str:
    return "diverged" if value is None else f"{value * 100:+.1f}"


def _fmt_gap(pair: list[float | None]) -> str:
    return " -> ".join(_fmt(v) for v in pair)


if __name__ == "__main__":
    main()
