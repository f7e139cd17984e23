"""How many trials hyperopt's TPE and Optuna's TPE need to reach random search's 64-trial best.

Every search is a real creditsweep sweep (Ray Tune, the same trainable, the same space, its own
study). Per seed, random search runs its budget; its best value is the target. TPE (hyperopt)
and Optuna's multivariate TPE then each run the same budget, and the trial at which each first
reaches the target is read from its study ("> budget" if never). The task is weight mirror with
its learning rate tuned too, on a Fashion-MNIST subset, where a setting's value varies enough
for the searchers to be told apart (the embedded digits saturate). Reported: per seed, and the
median over seeds, with each searcher's own best and the mean value of its second half of
trials (how much of the budget it spends near the good region, not just its luckiest draw).

One factor at a time: ``--searchers tpe`` with ``--searcher-option NAME=VALUE`` (hyperopt's
settings), ``--initial-points`` or ``--max-concurrent`` runs that variant in studies of its
own (named after what it changes), against the same random search.

    python bench/tpe_vs_random.py [--seeds 0 1 2 3 4] [--budget 64] [--out runs/tpe_vs_random]
        [--searchers tpe optuna] [--searcher-option gamma=1.5] [--initial-points N]
        [--max-concurrent 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from catalogue.errors import UsageError  # noqa: E402
from search.cli.base import parse_numbers  # noqa: E402
from search.execution import Execution  # noqa: E402
from search.searchers import SEARCHERS as SEARCHER_REGISTRY  # noqa: E402
from search.sweep import SweepSpec, run_sweep  # noqa: E402
from spaces import default_space  # noqa: E402

COMPARED = ("tpe", "optuna")  # each against random search, the baseline that sets the target


def values_in_order(url: str, study: str) -> list[float]:
    """Each trial's value in the order the sweep started them (a failed one is 0)."""
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    return [t.value if t.state == TrialState.COMPLETE else 0.0
            for t in sorted(trials, key=lambda t: t.number)]


def trials_to_reach(values: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def shown(hit: float | None, budget: int) -> str:
    return f"> {budget}" if hit is None or hit == float("inf") else f"{hit:g}"


def variant(searcher: str, options: dict[str, float], initial_points: int | None,
            max_concurrent: int) -> str:
    """The searcher and the settings it runs under that differ from a sweep's defaults: its
    study's name, so that each variant keeps a study of its own."""
    if searcher == "random":
        return searcher
    given = {**options, **({"initial_points": initial_points} if initial_points else {}),
             **({"max_concurrent": max_concurrent}
                if max_concurrent != Execution().max_concurrent else {})}
    return searcher + (f"[{','.join(f'{k}={v:g}' for k, v in sorted(given.items()))}]"
                       if given else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--rule", default="weight_mirror")
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--val-subset", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--searchers", nargs="+", default=list(COMPARED),
                        choices=[s for s in SEARCHER_REGISTRY.names() if s != "random"],
                        help="the searchers compared with random search")
    parser.add_argument("--searcher-option", action="append", default=[],
                        metavar="NAME=VALUE", help="a setting of hyperopt's TPE (tpe)")
    parser.add_argument("--initial-points", type=int, default=None,
                        help="the TPEs' random start (default: the sweep's)")
    parser.add_argument("--max-concurrent", type=int, default=Execution().max_concurrent)
    parser.add_argument("--out", default="runs/tpe_vs_random")
    args = parser.parse_args()
    try:  # a bad option fails in one line, before any trial
        options = parse_numbers(args.searcher_option, "--searcher-option")
        SEARCHER_REGISTRY.get("tpe").settings(options)
    except UsageError as exc:
        parser.error(str(exc))
    searchers = ["random", *args.searchers]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out.resolve()}/bench.db"
    Execution().connect()
    space = default_space(args.rule, tune_lr=True)
    needed: dict[str, list[float]] = {s: [] for s in searchers}
    bests: dict[str, list[float]] = {s: [] for s in searchers}
    late: dict[str, list[float]] = {s: [] for s in searchers}  # mean of the second half
    rows = []
    started = time.perf_counter()
    for seed in args.seeds:
        values = {}
        for searcher in searchers:
            name = variant(searcher, options if searcher == "tpe" else {},
                           args.initial_points, args.max_concurrent)
            study = f"{name}-{args.rule}-{args.arch}-seed{seed}"
            spec = SweepSpec(rule=args.rule, arch=args.arch, dataset=args.dataset,
                             epochs=args.epochs, seed=seed, storage=url, space=space,
                             study=study, searcher=searcher,
                             initial_points=None if searcher == "random" else args.initial_points,
                             searcher_options=options if searcher == "tpe" else {},
                             execution=Execution(ray_dir=str(out.resolve() / "ray"),
                                                 max_concurrent=args.max_concurrent),
                             train={"train_subset": args.train_subset,
                                    "val_subset": args.val_subset})
            have = 0
            try:
                have = len(optuna.load_study(study_name=study, storage=url).trials)
            except KeyError:
                pass
            if have < args.budget:  # a re-run completes what an interrupted one left
                run_sweep(SweepSpec(**{**spec.__dict__, "trials": args.budget - have}),
                          progress=lambda line: None)
            values[searcher] = values_in_order(url, study)[:args.budget]
        target = max(values["random"])
        hits = {s: trials_to_reach(v, target) for s, v in values.items()}
        for s in searchers:
            needed[s].append(hits[s] if hits[s] is not None else float("inf"))
            bests[s].append(max(values[s]))
            late[s].append(statistics.fmean(values[s][len(values[s]) // 2:]))
        rows.append((seed, target, {s: max(values[s]) for s in searchers}, hits,
                     {s: late[s][-1] for s in searchers}))
        print(f"seed {seed}: random best {target:.4f}; " + "; ".join(
            f"{s} best {max(values[s]):.4f}, reached it at trial {shown(hits[s], args.budget)}"
            for s in searchers[1:]) + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    half = args.budget // 2
    names = {s: variant(s, options if s == "tpe" else {}, args.initial_points,
                        args.max_concurrent) for s in searchers}
    print(f"\n{args.rule} on {args.arch}/{args.dataset} ({args.train_subset} training "
          f"examples, {args.epochs} epochs), space {space.describe()}, budget {args.budget}, "
          f"{len(args.seeds)} seeds, {time.perf_counter() - started:.0f} s")
    print("| seed | random's best | " + " | ".join(
        f"{names[s]} best | {names[s]} trials to reach it | {names[s]} mean of trials "
        f"{half + 1}-{args.budget}" for s in searchers[1:]) + " | random's own trial |")
    print("|---|---|" + "---|---|---|" * (len(searchers) - 1) + "---|")
    for seed, target, best, hits, second in rows:
        print(f"| {seed} | {target:.4f} | " + " | ".join(
            f"{best[s]:.4f} | {shown(hits[s], args.budget)} | {second[s]:.3f}"
            for s in searchers[1:]) + f" | {hits['random']} |")
    print(f"\n| searcher | median trials to reach random's best | median best | median of the "
          f"mean value of trials {half + 1}-{args.budget} | mean of it |")
    print("|---|---|---|---|---|")
    for s in searchers:
        print(f"| {names[s]} | {shown(statistics.median(needed[s]), args.budget)} | "
              f"{statistics.median(bests[s]):.4f} | {statistics.median(late[s]):.4f} | "
              f"{statistics.fmean(late[s]):.4f} |")


if __name__ == "__main__":
    main()
