"""How many trials TPE needs to reach the best value random search finds in 64 trials.

Both searches are real creditsweep sweeps (Ray Tune, the same trainable, the same space) of
weight mirror on the embedded digits; per seed, random search runs its budget, then TPE runs
until it matches random's best or exhausts the same budget. Reported: the median over seeds
of the trial index at which TPE first reaches random's best ("> budget" if never).

    python bench/tpe_vs_random.py [--seeds 0 1 2] [--budget 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.execution import Execution  # noqa: E402
from search.sweep import SweepSpec, run_sweep  # noqa: E402


def values_in_order(url: str, study: str) -> list[float]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    return [t.value if t.state == TrialState.COMPLETE else 0.0
            for t in sorted(trials, key=lambda t: t.number)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arch", default="mlp")
    args = parser.parse_args()
    Execution().connect()
    needed: list[float] = []
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{workdir}/bench.db"
        for seed in args.seeds:
            common = dict(rule="weight_mirror", arch=args.arch, epochs=args.epochs, seed=seed,
                          storage=url, execution=Execution(ray_dir=workdir))
            run_sweep(SweepSpec(**common, trials=args.budget, searcher="random",
                                study=f"random-{seed}"), progress=lambda line: None)
            target = max(values_in_order(url, f"random-{seed}"))
            run_sweep(SweepSpec(**common, trials=args.budget, searcher="tpe",
                                study=f"tpe-{seed}"), progress=lambda line: None)
            tpe = values_in_order(url, f"tpe-{seed}")
            hit = next((i + 1 for i, v in enumerate(tpe) if v >= target), None)
            needed.append(hit if hit is not None else float("inf"))
            rows.append((seed, target, max(tpe), hit))
            print(f"seed {seed}: random best {target:.4f}, TPE best {max(tpe):.4f}, "
                  f"TPE reached it at trial {hit if hit else '> ' + str(args.budget)}",
                  flush=True)
    median = statistics.median(needed)
    print(f"\nweight_mirror on {args.arch}/digits, {args.epochs} epochs, budget {args.budget}")
    print("| seed | random best (64 trials) | TPE best | TPE trials to reach random's best |")
    print("|---|---|---|---|")
    for seed, target, best, hit in rows:
        print(f"| {seed} | {target:.4f} | {best:.4f} | {hit if hit else '> ' + str(args.budget)} |")
    shown = f"> {args.budget}" if median == float("inf") else f"{median:g}"
    print(f"\nmedian trials TPE needs: {shown} (target ≤ 32: "
          f"{'met' if median <= 32 else 'MISSED'})")


if __name__ == "__main__":
    main()
