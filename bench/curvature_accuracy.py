"""How close ``--curvature``'s defaults come to a far costlier reference measurement.

For each rule: train the model (``--epochs``), then measure the true loss's top Hessian
eigenvalue and trace on a reference of ``--reference-batches`` batches (Lanczos
``--reference-steps`` steps, ``--reference-probes`` Hutchinson probes), and at the defaults
(``curvature_batches`` batches, ``curvature_steps`` steps, ``TRACE_SAMPLES`` probes) on
``--draws`` disjoint groups of training batches, seeded differently. Prints each estimate's
relative error against the reference, and the eigenvalue after fewer Lanczos steps, so that
the two sources of error (which examples, how many steps) are told apart.

    python bench/curvature_accuracy.py [--arch resnet20] [--dataset fashion_mnist]
        [--train-subset 10000] [--epochs 2] [--rules feedback_alignment,backprop] [--draws 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from catalogue.training import TrainConfig
from trainer.checkpoint import FolderCheckpointer, read
from trainer.curvature import (Tridiagonal, hutchinson_trace, lanczos, random_like,
                               task_hessian, task_parameters)
from trainer.generalization import TRACE_SAMPLES, _first_batches
from trainer.loop import build, train


def largest_after(t: Tridiagonal, k: int) -> float:
    """The top Ritz value after the first k Lanczos steps of the same run."""
    k = min(k, t.steps)
    return Tridiagonal(t.alphas[:k], t.betas[:k - 1], t.start_norm2).largest()


class _Enough(Exception):
    pass


def trained(config: TrainConfig) -> tuple[torch.nn.Module, object]:
    """The model after ``config.epochs`` epochs of a schedule one epoch longer: a run keeps no
    checkpoint of its last epoch, so the run stops right after saving the one before."""
    longer = TrainConfig.from_dict({**config.to_dict(), "epochs": config.epochs + 1})
    records = []

    def stop(record: dict) -> None:
        records.append(record)
        if record["epoch"] >= config.epochs:
            raise _Enough

    with tempfile.TemporaryDirectory() as folder:
        try:
            train(longer, callback=stop, checkpointer=FolderCheckpointer(folder, config.epochs))
        except _Enough:
            pass
        model, data = build(config)
        model.load_state_dict(read(folder)["model"])
    print(f"  trained {config.epochs} epochs: val top-1 {records[-1]['val_top1']:.4f}")
    return model, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rules", default="feedback_alignment,backprop")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--reference-batches", type=int, default=16)
    parser.add_argument("--reference-steps", type=int, default=30)
    parser.add_argument("--reference-probes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    errors: dict[str, list[float]] = {"eigenvalue": [], "trace": []}
    for rule in args.rules.split(","):
        config = TrainConfig(rule=rule, arch=args.arch, dataset=args.dataset,
                             train_subset=args.train_subset, epochs=args.epochs,
                             diagnostics=False)
        print(f"{rule}, {args.arch} on {args.dataset} ({args.train_subset} train), "
              f"batch {config.batch_size}")
        model, data = trained(config)
        params = task_parameters(model)
        started = time.perf_counter()
        with task_hessian(model, _first_batches(data.train, args.reference_batches)) as hvp:
            eig = lanczos(hvp, random_like(params, 0), args.reference_steps).largest()
            trace = hutchinson_trace(hvp, params, samples=args.reference_probes)
        print(f"  reference ({args.reference_batches} batches, {args.reference_steps} steps, "
              f"{args.reference_probes} probes): λ_max {eig:.4g}, trace {trace:.4g} "
              f"({time.perf_counter() - started:.0f} s)")
        n = config.curvature_batches
        pool = _first_batches(data.train, n * args.draws)
        for draw in range(args.draws):
            started = time.perf_counter()
            with task_hessian(model, pool[draw * n:(draw + 1) * n]) as hvp:
                t = lanczos(hvp, random_like(params, draw), config.curvature_steps)
                tr = hutchinson_trace(hvp, params, samples=TRACE_SAMPLES, seed=draw)
            seconds = time.perf_counter() - started
            by_steps = ", ".join(f"{k}: {largest_after(t, k):.4g}"
                                 for k in (2, 4, 6, config.curvature_steps))
            errors["eigenvalue"].append(abs(t.largest() / eig - 1))
            errors["trace"].append(abs(tr / trace - 1))
            print(f"  draw {draw} ({n} batches): λ_max {t.largest():.4g} "
                  f"({t.largest() / eig - 1:+.1%}; after steps {by_steps}), trace {tr:.4g} "
                  f"({tr / trace - 1:+.1%}), {seconds:.1f} s")
    for key, values in errors.items():
        print(f"{key}: |relative error| at the defaults, median {statistics.median(values):.1%}"
              f", max {max(values):.1%} over {len(values)} draws")


if __name__ == "__main__":
    main()
