"""Activation relaxation's cost per inner iteration (one sweep) over one plain autograd
backward through the same model, on CPU.

Each round times, on the same batch and in turn: the backward of plain backprop, and the
backward of activation relaxation at T = 10 and at T = 100 (each after its own forward, which
is not timed). One sweep is (T100 - T10) / 90, so that the forward-side capture, the wrapper
and the pass that forms the update cancel; its ratio to backprop's backward is taken within
each round and the median over rounds is printed with its quartiles, so that drift in machine
speed hits both alike. The whole steps' ratios (T = 10, T = 100 over backprop's backward) are
printed beside it. Target: a sweep <= 1.2 x a backward.

    python bench/relaxation_sweep.py [--rounds 5] [--threads 1] [--only resnet8 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import trainer

SETUPS = {  # name: (arch, in_channels, image_size, batch)
    "mlp 28x28 b128": ("mlp", 1, 28, 128),
    "lenet 28x28 b128": ("lenet", 1, 28, 128),
    "resnet8 32x32 b64": ("resnet8", 3, 32, 64),
    "resnet20 32x32 b64": ("resnet20", 3, 32, 64),
}
STEPS = (10, 100)
TARGET = 1.2


def _model(arch: str, channels: int, size: int, steps: int | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = trainer.create_model(arch, num_classes=10, in_channels=channels, image_size=size)
    if steps is not None:
        trainer.convert(model, "activation_relaxation", inference_steps=steps)
    return model.train()


def _backward_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    start = time.perf_counter()
    loss.backward()
    return time.perf_counter() - start


def measure(setup: str, rounds: int) -> dict[str, list[float]]:
    """Per round: the sweep's and each whole backward's ratio to backprop's backward."""
    arch, channels, size, batch = SETUPS[setup]
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    models = {None: _model(arch, channels, size, None)}
    models.update({steps: _model(arch, channels, size, steps) for steps in STEPS})
    for model in models.values():  # warm-up
        _backward_seconds(model, x, y)
    ratios: dict[str, list[float]] = {"sweep": [], **{f"T={s}": [] for s in STEPS}}
    for _ in range(rounds):
        seconds = {steps: _backward_seconds(model, x, y) for steps, model in models.items()}
        plain = seconds[None]
        sweep = (seconds[STEPS[1]] - seconds[STEPS[0]]) / (STEPS[1] - STEPS[0])
        ratios["sweep"].append(sweep / plain)
        for steps in STEPS:
            ratios[f"T={steps}"].append(seconds[steps] / plain)
    return ratios


def _summary(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"{median:.3f} [{q1:.3f}, {q3:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="architectures (mlp, lenet, resnet8, ...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'setup':<20} {'sweep / backward':>24} {'T=10 / backward':>24} "
          f"{'T=100 / backward':>24}  target <= {TARGET}")
    for setup, (arch, *_) in SETUPS.items():
        if args.only and arch not in args.only:
            continue
        ratios = measure(setup, args.rounds)
        print(f"{setup:<20} {_summary(ratios['sweep']):>24} {_summary(ratios['T=10']):>24} "
              f"{_summary(ratios['T=100']):>24}", flush=True)


if __name__ == "__main__":
    main()
