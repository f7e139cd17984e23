"""Training-step time of every rule divided by plain-autograd backprop, measured side by side.

Each round times one step of every rule in turn (round-robin, same batch, same threads), so
drift in machine speed hits all rules alike; the ratio is of the medians over rounds. A step is
exactly what training runs (``trainer.loop.train_step``): forward, task + alignment loss,
backward, SGD. Targets come from the extra convolutions each regularizer needs.

    python bench/step_overhead.py [--rounds 15] [--threads 2] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import trainer
from torch_setup import add_options
from torch_setup import setup as setup_torch
from trainer.loop import TrainConfig, _parameter_groups, train_step

TARGETS = {"backprop": 1.0, "feedback_alignment": 1.05, "kolen_pollack": 1.05,
           "symmetric_alignment": 1.05, "sign_symmetry": 1.05, "weight_mirror": 1.7,
           "activation_alignment": 1.7, "information_alignment": 2.4}

SETUPS = {  # name: (arch, in_channels, image_size, steps per timed sample)
    "resnet20 32x32 b128": ("resnet20", 3, 32, 1),
    "mlp 8x8 b128": ("mlp", 1, 8, 20),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make(rule: str, arch: str, channels: int, size: int, device: torch.device):
    torch.manual_seed(0)
    model = trainer.create_model(arch, num_classes=10, in_channels=channels, image_size=size)
    trainer.convert(model, rule)
    model.to(device).train()
    opt = torch.optim.SGD(_parameter_groups(model, TrainConfig()), lr=0.01, momentum=0.9,
                          nesterov=True)
    return model, opt


def measure(setup: str, rounds: int, batch: int, device: torch.device) -> dict[str, float]:
    arch, channels, size, inner = SETUPS[setup]
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    runs = {rule: _make(rule, arch, channels, size, device) for rule in TARGETS}
    samples: dict[str, list[float]] = {rule: [] for rule in TARGETS}
    for model, opt in runs.values():  # warm-up
        for _ in range(2):
            train_step(model, opt, x, y)
    for _ in range(rounds):
        for rule, (model, opt) in runs.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                train_step(model, opt, x, y)
            _sync(device)
            samples[rule].append((time.perf_counter() - start) / inner)
    return {rule: statistics.median(s) for rule, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, rounds=15)
    args = parser.parse_args()
    device = setup_torch(args, "rounds")
    results = {setup: measure(setup, args.rounds, args.batch, device) for setup in SETUPS}
    header = "| rule | " + " | ".join(f"{s} (ms, ratio)" for s in SETUPS) + " | target | met |"
    print(header)
    print("|" + "---|" * (len(SETUPS) + 3))
    for rule, target in TARGETS.items():
        cells, met = [], True
        for setup in SETUPS:
            base = results[setup]["backprop"]
            ratio = results[setup][rule] / base
            met &= ratio <= target
            cells.append(f"{results[setup][rule] * 1e3:.1f}, {ratio:.2f}")
        print(f"| {rule} | " + " | ".join(cells) + f" | ≤ {target:.2f} | "
              f"{'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
