"""Wall time of a creditsweep sweep vs. a bare Ray Tune + HyperOptSearch run, side by side.

Both run the same trainable (``search.trainable.run_trial``), trial count, seed, concurrency
and TPE settings on one already-started Ray; creditsweep adds validation, the Optuna study,
per-trial recording and the final reconciliation. Rounds alternate the order (ABBA) so drift
hits both alike; the ratio is of the mean times.

    python bench/sweep_overhead.py [--trials 16] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from ray import tune  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.hyperopt import HyperOptSearch  # noqa: E402

from dataclasses import replace  # noqa: E402

from search.searchers import METRIC, MODE  # noqa: E402
from search.sweep import SweepSpec, run_sweep  # noqa: E402
from search.trainable import run_trial  # noqa: E402


def bare(spec: SweepSpec, workdir: str, tag: str) -> float:
    space = spec.resolved_space()
    tpe = HyperOptSearch(space.to_hyperopt(), metric=METRIC, mode=MODE,
                         n_initial_points=spec.n_initial(), random_state_seed=spec.seed)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=spec.base_config(), fixed={}, threads=1),
        {"cpu": spec.execution.cpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=spec.trials, reuse_actors=True,
            search_alg=ConcurrencyLimiter(tpe, spec.execution.max_concurrent)),
        run_config=tune.RunConfig(name=f"bare-{tag}", storage_path=workdir, verbose=0))
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def creditsweep(spec: SweepSpec, workdir: str, tag: str) -> float:
    start = time.perf_counter()
    run_sweep(replace(spec, study=f"bench-{tag}", storage=f"sqlite:///{workdir}/bench.db",
                      execution=replace(spec.execution, ray_dir=workdir)),
              progress=lambda line: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rule", default="weight_mirror")
    parser.add_argument("--arch", default="mlp")
    args = parser.parse_args()
    spec = SweepSpec(rule=args.rule, arch=args.arch, trials=args.trials, epochs=args.epochs)
    spec.execution.connect()
    times: dict[str, list[float]] = {"bare": [], "creditsweep": []}
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            order = ["bare", "creditsweep"] if r % 2 == 0 else ["creditsweep", "bare"]
            for kind in order:
                run = bare if kind == "bare" else creditsweep
                times[kind].append(run(spec, workdir, f"{kind}-{r}"))
                print(f"round {r + 1} {kind}: {times[kind][-1]:.1f} s", flush=True)
    b, c = statistics.fmean(times["bare"]), statistics.fmean(times["creditsweep"])
    print(f"\n{args.trials} trials of {args.rule} on {args.arch}, {args.epochs} epochs, "
          f"2 concurrent, {args.rounds} rounds")
    print("| run | mean wall time (s) |\n|---|---|")
    print(f"| bare Ray Tune + HyperOptSearch | {b:.1f} |\n| creditsweep sweep | {c:.1f} |")
    print(f"| ratio | {c / b:.3f} (target ≤ 1.05: {'met' if c / b <= 1.05 else 'MISSED'}) |")


if __name__ == "__main__":
    main()
