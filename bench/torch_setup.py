"""The options every step-timing benchmark shares: batch, threads, device."""

from __future__ import annotations

import argparse

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
    print(f"device {device} ({name}), {args.threads} threads, batch {args.batch}, median of "
          f"{args.rounds} {measured}, torch {torch.__version__}\n")
    return device
