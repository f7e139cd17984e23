"""Core utilisation of a sweep: in-trial training time ÷ (wall time × cores), by trial length.

Real creditsweep sweeps (TPE, the Optuna study, recording) of weight mirror on the MLP with
Fashion-MNIST, on one already-started local Ray, 2 trials at a time with 1 CPU each; the trial
length is set by the training-set size and the epochs (~1 s per 10,000 example-epochs here).
Each trial's training time is the trainer's own wall time, as the study records it; the rest
of the wall time is start-up of the trial's worker, data loading, reporting and recording.

    python bench/sweep_throughput.py [--lengths 1,10,60] [--out runs/sweep_throughput]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from search.execution import Execution  # noqa: E402

Execution().prepare()  # before anything imports Ray

import optuna  # noqa: E402
import ray  # noqa: E402

from search.sweep import SweepSpec, run_sweep  # noqa: E402

# trial length (s) -> (training images, epochs, trials): about 1 s per 10k example-epochs
SHAPES = {1: (5000, 1, 32), 10: (10000, 10, 12), 60: (60000, 10, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1,10,60")
    parser.add_argument("--out", default="runs/sweep_throughput")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out}/studies.db"
    execution = Execution(ray_dir=str(out / "ray"), max_concurrent=2, cpus_per_trial=1.0)
    execution.connect()
    cores = int(ray.cluster_resources()["CPU"])
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        images, epochs, trials = SHAPES[length]
        study = f"throughput-{length}s-{time.strftime('%H%M%S')}"
        outcome = run_sweep(SweepSpec(rule="weight_mirror", arch="mlp", dataset="fashion_mnist",
                                      epochs=epochs, trials=trials, storage=url, study=study,
                                      execution=execution,
                                      train={"train_subset": images, "val_subset": 1000}),
                            progress=lambda line: None)
        done = optuna.load_study(study_name=study, storage=url).trials
        training = sum(t.user_attrs.get("wall_time") or 0.0 for t in done)
        utilisation = training / (outcome.wall_time * cores)
        rest = (outcome.wall_time * cores - training) / len(done)
        rows.append((length, len(done), training / len(done), outcome.wall_time, utilisation,
                     rest))
        print(f"~{length} s trials: {len(done)} trials, {training / len(done):.2f} s training "
              f"each, sweep wall {outcome.wall_time:.1f} s, utilisation {utilisation:.3f}",
              flush=True)
    print(f"\n{cores} cores, 2 trials at a time, 1 CPU each (torch threads 1)")
    print("| trial length | trials | training per trial (s) | sweep wall (s) | core utilisation "
          "| core-seconds lost per trial |")
    print("|---|---|---|---|---|---|")
    for length, n, per, wall, util, rest in rows:
        print(f"| ~{length} s | {n} | {per:.2f} | {wall:.1f} | {util:.3f} | {rest:.2f} |")


if __name__ == "__main__":
    main()
