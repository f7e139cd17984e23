"""The options every step-timing benchmark shares: batch, threads, device."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from trainer.loop import resolve_device


def add_options(parser: argparse.ArgumentParser, rounds: int) -> None:
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")


def setup(args: argparse.Namespace, measured: str) -> torch.device:
    """Apply the thread count, pick the device, and print the header a reader compares by."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    print(f"device {device} ({name}), {args.threads} threads, batch {args.batch}, median of "
          f"{args.rounds} {measured}, torch {torch.__version__} ({build})\n")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(step: Callable[[], object], other: Callable[[], object], *, rounds: int,
                steps: int, device: torch.device) -> tuple[float, float]:
    """(median seconds of one ``step``, median seconds of one ``other``): each round times
    ``steps`` steps and then one ``other``, so that drift of the machine hits both alike."""
    step_times, other_times = [], []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        step_times.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        other()
        sync(device)
        other_times.append(time.perf_counter() - start)
    return statistics.median(step_times), statistics.median(other_times)
