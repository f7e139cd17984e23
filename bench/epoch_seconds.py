"""Seconds per training epoch for each dataset x architecture x rule, on this machine.

A training step (``trainer.loop.train_step``: forward, task + alignment loss, backward, SGD)
on a real batch, median over --rounds, times the steps an epoch of the whole training split
takes (and of a 10k subset, the size the README's CPU runs use). Datasets whose files are not
present are skipped with a note. CPU by default; CUDA when present (--device auto).

    python bench/epoch_seconds.py [--datasets digits,fashion_mnist]
        [--archs resnet8,resnet20,resnet32] [--batch 128] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from catalogue.errors import UsageError
from catalogue.rule import list_rules
from catalogue.training import TrainConfig
from torch_setup import add_options
from torch_setup import setup as setup_torch
from trainer.loop import build, train_step
from trainer.optim import make_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(config: TrainConfig, rounds: int, device: torch.device) -> tuple[float, int]:
    """(median seconds per step, training examples) for one configuration."""
    model, data = build(config)
    model.to(device).train()
    optimizer = make_optimizer(model, TrainConfig(**{**config.to_dict(), "lr": 0.01,
                                                      "momentum": 0.9}))
    x, y = (t.to(device) for t in next(iter(data.train.batches(0))))
    train_step(model, optimizer, x, y)  # warm-up
    samples = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        train_step(model, optimizer, x, y)
        _sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), data.train_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,fashion_mnist,mnist")
    parser.add_argument("--archs", default="resnet8,resnet20,resnet32")
    parser.add_argument("--rules", default=",".join(list_rules()))
    add_options(parser, rounds=3)
    args = parser.parse_args()
    device = setup_torch(args, "steps")
    print("| dataset | arch | rule | ms / step | s / epoch (whole split) | s / epoch (subset of ≤ 10k) |")
    print("|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        for arch in args.archs.split(","):
            for rule in args.rules.split(","):
                config = TrainConfig(rule=rule, arch=arch, dataset=dataset,
                                     batch_size=args.batch, device=str(device))
                try:
                    step, size = step_seconds(config, args.rounds, device)
                except UsageError as exc:  # the dataset's files are not here
                    print(f"| {dataset} | - | - | skipped: {exc} | | |", flush=True)
                    break
                steps = -(-size // args.batch)
                subset = -(-min(size, 10000) // args.batch)
                print(f"| {dataset} | {arch} | {rule} | {step * 1e3:.0f} | "
                      f"{step * steps:.1f} | {step * subset:.1f} |", flush=True)
            else:
                continue
            break


if __name__ == "__main__":
    main()
