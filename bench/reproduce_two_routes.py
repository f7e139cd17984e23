"""Kunin et al. (2020) in miniature, on the embedded digits and CIFAR-style ResNets.

1. TPE searches for weight mirror and information alignment on the smallest ResNet (source).
2. Their best settings are transferred to deeper ResNets, beside symmetric and activation
   alignment at their official defaults, each with a backprop baseline on the same seeds.
3. A report (accuracy vs. depth, per-layer angles, Markdown) and the paper's three findings
   checked against the numbers:
   - weight mirror's tuned setting does not transfer: its gap to backprop widens with depth;
   - information alignment transfers better: its gap stays smaller than weight mirror's;
   - symmetric and activation alignment stay close to backprop at every depth.

The budget is set by --trials (per search), --seeds, --epochs and --targets. A run with 80
trials, 3 seeds, 6 epochs and depths 8-32 took 15 min on a 2-core CPU; the defaults are sized
from that to take about an hour. Re-running with the same --out reuses every finished run.

    python bench/reproduce_two_routes.py --out reproduction [--trials 160 --seeds 4 --epochs 12]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna  # noqa: E402

from search.execution import Execution  # noqa: E402
from search.report import transfer_report  # noqa: E402
from search.sweep import SweepSpec, top_up  # noqa: E402
from search.transfer import TransferSpec, run_transfer, summarize  # noqa: E402

SEARCHED = ("weight_mirror", "information_alignment")
AT_DEFAULTS = ("symmetric_alignment", "activation_alignment")
CLOSE_TO_BACKPROP = 0.02  # "matches backprop": within two points of top-1


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reproduction")
    parser.add_argument("--source", default="resnet8")
    parser.add_argument("--targets", default="resnet8,resnet14,resnet20,resnet32,resnet44")
    parser.add_argument("--trials", type=int, default=160, help="TPE trials per search")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'two_routes.db'}"
    targets = [t.strip() for t in args.targets.split(",")]
    started = time.perf_counter()
    common = dict(storage=url, execution=Execution(ray_dir=str(out / "ray")))

    for rule in SEARCHED:
        log(f"TPE search: {rule} on {args.source}, up to {args.trials} trials")
        top_up(SweepSpec(rule=rule, arch=args.source, epochs=args.epochs, **common),
               args.trials, progress=lambda line: None)
    studies = []
    for rule in SEARCHED + AT_DEFAULTS:
        log(f"transfer: {rule} to {', '.join(targets)} with backprop, {args.seeds} seeds")
        spec = TransferSpec(rule=rule, targets=targets, seeds=args.seeds, epochs=args.epochs,
                            source=args.source if rule in SEARCHED else None,
                            defaults=rule in AT_DEFAULTS, **common)
        run_transfer(spec, progress=lambda line: None)
        studies.append(optuna.load_study(study_name=spec.study_name(), storage=url))
    transfer_report(studies, out / "report")
    summaries = {s.user_attrs["rule"]: summarize(s) for s in studies}
    minutes = (time.perf_counter() - started) / 60
    print_findings(summaries, targets, args, minutes)
    log(f"report in {out / 'report'}")


def _gap(summary: dict, target: str) -> float | None:
    row = next(r for r in summary["rows"] if r["target"] == target)
    return row["gap_to_backprop"]


def print_findings(summaries: dict, targets: list[str], args: argparse.Namespace,
                   minutes: float) -> None:
    print(f"\nbudget: {args.trials} TPE trials per search, {args.seeds} seeds, {args.epochs} "
          f"epochs, source {args.source}; took {minutes:.0f} min\n")
    header = "| rule | " + " | ".join(targets) + " |"
    print(header + "\n|---|" + "---|" * len(targets))
    backprop = next(iter(summaries.values()))["rows"]
    print("| backprop | " + " | ".join(f"{r['backprop_mean']:.4f} ± {r['backprop_std']:.4f}"
                                        for r in backprop) + " |")
    for rule, summary in summaries.items():
        cells = []
        for r in summary["rows"]:
            if r["mean"] is None:
                cells.append("diverged")
            else:
                div = f", {r['diverged_fraction']:.0%} div." if r["diverged_fraction"] else ""
                cells.append(f"{r['mean']:.4f} ± {r['std']:.4f} ({r['gap_to_backprop']:+.3f}"
                             f"{div})")
        print(f"| {rule} | " + " | ".join(cells) + " |")
    first, last = targets[0], targets[-1]
    wm = [_gap(summaries["weight_mirror"], t) for t in (first, last)]
    ia = [_gap(summaries["information_alignment"], t) for t in (first, last)]
    print("\nfindings (gap = val top-1 minus backprop's; None = every seed diverged):")
    widened = wm[1] is None or (wm[0] is not None and wm[1] < wm[0])
    print(f"- weight mirror's gap widens from {first} to {last}: {wm[0]} -> {wm[1]}: "
          f"{'reproduced' if widened else 'NOT reproduced'}")
    smaller = ia[1] is not None and (wm[1] is None or ia[1] > wm[1])
    print(f"- information alignment transfers better than weight mirror at {last} "
          f"(gap {ia[1]} vs {wm[1]}): {'reproduced' if smaller else 'NOT reproduced'}")
    for rule in AT_DEFAULTS:
        gaps = [_gap(summaries[rule], t) for t in targets]
        close = all(g is not None and abs(g) <= CLOSE_TO_BACKPROP for g in gaps)
        print(f"- {rule} within {CLOSE_TO_BACKPROP} of backprop at every depth "
              f"(gaps {[None if g is None else round(g, 3) for g in gaps]}): "
              f"{'reproduced' if close else 'NOT reproduced'}")


if __name__ == "__main__":
    main()
