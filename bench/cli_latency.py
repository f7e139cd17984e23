"""Wall time of `creditsweep best` and `creditsweep status` / `optuna best-trial`, side by side.

All three read the same SQLite study (a sweep-like study of --trials trials with creditsweep's
user attributes), as fresh processes, round-robin over --rounds rounds so that drift hits all
alike; the ratios are of the medians. Goal: <= 1.2 for both, i.e. creditsweep's queries cost
about what Optuna's own CLI does (neither loads torch or Ray).

    python bench/cli_latency.py [--rounds 15] [--trials 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

GOAL = 1.2


def make_study(url: str, trials: int) -> None:
    study = optuna.create_study(study_name="bench", storage=url, direction="maximize")
    study.set_user_attr("kind", "sweep")
    study.set_user_attr("rule", "weight_mirror")
    dists = {n: FloatDistribution(1e-6, 10.0, log=True) for n in ("alpha", "beta")}
    for i in range(trials):
        params = {"alpha": 10 ** (-6 + 7 * ((i * 37) % 100) / 100),
                  "beta": 10 ** (-6 + 7 * ((i * 61) % 100) / 100)}
        study.add_trial(optuna.trial.create_trial(
            value=0.5 + 0.4 * ((i * 13) % 97) / 97, params=params, distributions=dists,
            intermediate_values={e: 0.1 * e for e in range(1, 7)},
            user_attrs={"history": [{"epoch": e, "val_top1": 0.1 * e} for e in range(1, 7)],
                        "diagnostics": {"weight_angle_mean": 40.0, "norm_ratio_mean": 1.0}}))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        make_study(url, args.trials)
        commands = {
            "optuna best-trial": [optuna_cli, "best-trial", "--study-name", "bench",
                                  "--storage", url],
            "creditsweep best": [sys.executable, "-m", "search.cli", "best", "--study",
                                 "bench", "--storage", url],
            "creditsweep status": [sys.executable, "-m", "search.cli", "status",
                                   "--storage", url],
        }
        for command in commands.values():  # warm the file cache and the bytecode
            timed(command)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                samples[name].append(timed(command))
    base = statistics.median(samples["optuna best-trial"])
    print(f"SQLite study of {args.trials} trials, median of {args.rounds} rounds, "
          f"Python {sys.version.split()[0]}\n")
    print("| command | median wall time (s) | ratio to optuna best-trial | goal | met |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        ratio = statistics.median(values) / base
        goal = "" if name.startswith("optuna") else f"≤ {GOAL}"
        met = "" if name.startswith("optuna") else ("yes" if ratio <= GOAL else "NO")
        print(f"| {name} | {statistics.median(values):.3f} | {ratio:.2f} | {goal} | {met} |")


if __name__ == "__main__":
    main()
