"""Does a transfer-aware search find weight-mirror settings that transfer better, and at what price?

Per search seed, two TPE sweeps of the same budget: one on the source depth alone, and one whose
every trial trains on two depths and is scored by ``--objective`` over them. With
``--also-epochs N`` the second depth is a fidelity: it trains only the first N epochs of the
run (``--arch-epochs``), a cheaper probe; ``--objective guard`` lets it veto only. Each sweep's best
setting is then transferred (``creditsweep transfer``, 3 seeds) to every target depth beside one
shared backprop baseline. Printed: per target, the transferred setting's val top-1 (mean ± std
over every transfer run of every search seed), its gap to backprop's mean there, how many runs
diverged (left out of the mean), and the search's wall time. Every step reuses what an earlier run with the same ``--out`` finished.

    python bench/transfer_aware.py [--search-seeds 0 1] [--trials 10] [--out runs/transfer_aware]
    python bench/transfer_aware.py --also resnet20 --also-epochs 1 --objective guard
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from search.execution import Execution  # noqa: E402

Execution().prepare()  # before anything imports Ray

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.summaries import latest_by_key  # noqa: E402
from search.sweep import SweepSpec, top_up  # noqa: E402
from search.transfer import TransferSpec, run_transfer  # noqa: E402


def sweep_seconds(url: str, study: str) -> float:
    """The sweep's wall time, from its trials' recorded start and end."""
    trials = [t for t in optuna.load_study(study_name=study, storage=url).trials
              if t.datetime_start and t.datetime_complete]
    return (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()


def transfer_runs(url: str, study: str) -> dict[tuple[str, str], list[float | None]]:
    """Each run's val top-1 (None: diverged or failed) by (role, target architecture)."""
    runs: dict[tuple[str, str], list[float | None]] = {}
    for t in latest_by_key(optuna.load_study(study_name=study, storage=url)).values():
        key = (t.user_attrs["role"], t.user_attrs["target_arch"])
        runs.setdefault(key, []).append(t.value if t.state == TrialState.COMPLETE else None)
    return runs


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="weight_mirror")
    parser.add_argument("--source", default="resnet8")
    parser.add_argument("--also", default="resnet14", help="the second depth of the aware search")
    parser.add_argument("--also-epochs", type=int, default=None,
                        help="the second depth trains only the first N epochs of the run")
    parser.add_argument("--objective", default="min")
    parser.add_argument("--targets", default="resnet8,resnet14,resnet20,resnet32")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=3000)
    parser.add_argument("--val-subset", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seeds", type=int, default=3, help="transfer seeds per search")
    parser.add_argument("--out", default="runs/transfer_aware")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out}/studies.db"
    execution = Execution(ray_dir=str(out / "ray"), max_concurrent=2)
    train = {"train_subset": args.train_subset, "val_subset": args.val_subset,
             "feedback_lr_multiplier": "auto"}
    targets = args.targets.split(",")
    kinds = {"single": [args.source], "aware": [args.source, args.also]}
    probe = f"@{args.also_epochs}ep" if args.also_epochs is not None else ""
    shortened = {args.also: args.also_epochs} if args.also_epochs is not None else {}
    results: dict[str, dict[str, list[float]]] = {k: {t: [] for t in targets} for k in kinds}
    gaps: dict[str, dict[str, list[float]]] = {k: {t: [] for t in targets} for k in kinds}
    diverged: dict[str, dict[str, int]] = {k: {t: 0 for t in targets} for k in kinds}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    best_values: dict[str, list[str]] = {k: [] for k in kinds}
    started = time.perf_counter()
    for seed in args.search_seeds:
        for kind, archs in kinds.items():
            spec = SweepSpec(rule=args.rule, arch=archs[0],
                             archs=archs if len(archs) > 1 else [], objective=args.objective,
                             arch_epochs=shortened if len(archs) > 1 else {},
                             dataset=args.dataset, epochs=args.epochs, seed=seed, storage=url,
                             study=f"{kind}{probe if len(archs) > 1 else ''}.seed{seed}",
                             execution=execution, train=train)
            top_up(spec, args.trials, progress=lambda line: None)
            seconds[kind].append(sweep_seconds(url, spec.study_name()))
            best = optuna.load_study(study_name=spec.study_name(), storage=url).best_trial
            best_values[kind].append(", ".join(f"{k}={v:.3g}" for k, v in best.params.items()))
            run_transfer(TransferSpec(
                rule=args.rule, source=None, source_study=spec.study_name(), targets=targets,
                dataset=args.dataset, seeds=args.seeds, epochs=args.epochs, storage=url,
                name=f"transfer.{spec.study_name()}", baseline_study="backprop",
                execution=execution, train=train), progress=lambda line: None)
            runs_of = transfer_runs(url, f"transfer.{spec.study_name()}")
            backprop = transfer_runs(url, "backprop")
            for target in targets:
                values = runs_of.get(("transferred", target), [])
                diverged[kind][target] += sum(v is None for v in values)
                done = [v for v in values if v is not None]
                results[kind][target] += done
                baseline = [v for v in backprop.get(("backprop", target), []) if v is not None]
                gaps[kind][target] += [v - statistics.fmean(baseline) for v in done]
            print(f"search seed {seed}, {kind}: best {best.value:.4f} ({best_values[kind][-1]}), "
                  f"search {seconds[kind][-1]:.0f} s ({time.perf_counter() - started:.0f} s "
                  "so far)", flush=True)
    runs = args.seeds * len(args.search_seeds)
    print(f"\n{args.rule} on {args.dataset} ({args.train_subset} training examples, "
          f"{args.epochs} epochs, B at auto), {args.trials} TPE trials per search, search seeds "
          f"{args.search_seeds}, {args.seeds} transfer seeds each; aware = each trial on "
          f"{args.source}+{args.also}"
          + (f" (the first {args.also_epochs} of its epochs)" if probe else "")
          + f", objective {args.objective}; "
          f"{time.perf_counter() - started:.0f} s in all")
    print("| val top-1 % (gap to backprop, points; diverged runs) | "
          + " | ".join(targets) + " | search wall time |")
    print("|---|" + "---|" * (len(targets) + 1))
    for kind in kinds:
        label = "+".join(kinds[kind]) + (probe if kind == "aware" else "")
        cells = [f"{fmt(results[kind][t])} ({fmt(gaps[kind][t])}; {diverged[kind][t]}/{runs})"
                 for t in targets]
        print(f"| search on {label} | " + " | ".join(cells)
              + f" | {statistics.fmean(seconds[kind]):.0f} s |")
    price = statistics.fmean(seconds["aware"]) / statistics.fmean(seconds["single"])
    print(f"price of the aware search: {price:.2f}x the search on the source alone")


if __name__ == "__main__":
    main()
