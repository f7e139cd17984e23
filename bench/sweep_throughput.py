"""Core utilisation of a sweep: in-trial training time ÷ (wall time × cores), by trial length.

Real creditsweep sweeps (TPE, the Optuna study, recording) of weight mirror on the MLP with
Fashion-MNIST, on one already-started local Ray, 2 trials at a time with 1 CPU each; the trial
length is set by the training-set size and the epochs (~1 s per 10,000 example-epochs here).
Each trial's training time is the trainer's own wall time, as the study records it (data
loading included); the rest is broken down into start-up, idle cores between the first
trial's start and the last one's end, and wind-down (``breakdown``).

    python bench/sweep_throughput.py [--lengths 1,10,60] [--trials N] [--out runs/sweep_throughput]
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
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per sweep for every length (default: 32, 12 and 4 for "
                             "1, 10 and 60 s trials); more trials spread the start-up thinner")
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
        trials = args.trials or trials
        study = f"throughput-{length}s-{time.strftime('%H%M%S')}"
        called = time.time()
        outcome = run_sweep(SweepSpec(rule="weight_mirror", arch="mlp", dataset="fashion_mnist",
                                      epochs=epochs, trials=trials, storage=url, study=study,
                                      execution=execution,
                                      train={"train_subset": images, "val_subset": 1000}),
                            progress=lambda line: None)
        done = optuna.load_study(study_name=study, storage=url).trials
        row = breakdown(done, called, outcome.wall_time, cores)
        rows.append((length, row))
        print(f"~{length} s trials: {row['trials']} trials, {row['per_trial']:.2f} s training "
              f"each, sweep wall {row['wall']:.1f} s, utilisation {row['utilisation']:.3f}",
              flush=True)
    print(f"\n{cores} cores, 2 trials at a time, 1 CPU each (torch threads 1)")
    print("| trial length | trials | training per trial (s) | sweep wall (s) | core utilisation "
          "| core-seconds lost per trial | start-up (s) | idle core-s between first start and "
          "last end | wind-down (s) | utilisation from first start to last end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for length, r in rows:
        print(f"| ~{length} s | {r['trials']} | {r['per_trial']:.2f} | {r['wall']:.1f} | "
              f"{r['utilisation']:.3f} | {r['lost_per_trial']:.2f} | {r['start_up']:.1f} | "
              f"{r['idle_between']:.1f} | {r['wind_down']:.1f} | {r['steady']:.3f} |")


def breakdown(trials: list, called: float, wall: float, cores: int) -> dict[str, float]:
    """Where a sweep's core-seconds went, from the study's trial times (a trial's start is its
    end less its in-trial training time): start-up before the first trial trains (Ray Tune's
    set-up and the trial workers' start), cores left idle between the first start and the last
    end (hand-over between trials, and the tail when fewer trials than cores remain), and the
    wind-down after the last trial (the closing reconciliation)."""
    spans = sorted((t.datetime_complete.timestamp() - (t.user_attrs.get("wall_time") or 0.0),
                    t.datetime_complete.timestamp()) for t in trials)
    training = sum(end - start for start, end in spans)
    first, last = spans[0][0], max(end for _, end in spans)
    return {"trials": len(trials), "per_trial": training / len(trials), "wall": wall,
            "utilisation": training / (wall * cores),
            "lost_per_trial": (wall * cores - training) / len(trials),
            "start_up": first - called, "idle_between": (last - first) * cores - training,
            "wind_down": called + wall - last, "steady": training / ((last - first) * cores)}


if __name__ == "__main__":
    main()
