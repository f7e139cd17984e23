"""Cost of one end-of-run ``--curvature`` measurement (top Hessian eigenvalue, Hutchinson
trace, generalisation gap, val top-1 under input noise) as a fraction of one training epoch,
measured side by side in one run.

The median time of ``trainer.generalization.measure`` at the defaults over --rounds, against
the median time of a training step (``trainer.loop.train_step``, same model and batch size)
times the dataset's steps per epoch, interleaved so that drift hits both alike. It runs once per
trial (at the end), so this fraction is its overhead on a one-epoch run. Goal: <= 10 %.

    python bench/curvature_cost.py [--arch resnet20] [--dataset fashion_mnist]
        [--train-subset 10000] [--rule feedback_alignment] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse


from catalogue.training import TrainConfig
from trainer.generalization import GAP_EXAMPLES, NOISE_EXAMPLES, TRACE_SAMPLES
from trainer.generalization import measure as measure_generalization
from trainer.loop import build, train_step
from trainer.optim import make_optimizer
from torch_setup import add_options, interleaved
from torch_setup import setup as setup_torch

GOAL = 0.10
FULL_TRAIN = {"fashion_mnist": 60_000, "mnist": 60_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--rule", default="feedback_alignment")
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    add_options(parser, rounds=3)
    args = parser.parse_args()
    device = setup_torch(args, "rounds")
    config = TrainConfig(rule=args.rule, arch=args.arch, dataset=args.dataset,
                         batch_size=args.batch, train_subset=args.train_subset, curvature=True)
    model, data = build(config)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    x, y = (t.to(device) for t in next(iter(data.train.batches(0))))
    per_epoch = len(data.train)
    train_step(model, optimizer, x, y)  # warm-up
    step, cost = interleaved(
        lambda: train_step(model, optimizer, x, y),
        lambda: measure_generalization(model, data, config, device,
                                       {"val_loss": 0.0, "val_top1": 0.0}),
        rounds=args.rounds, steps=args.steps, device=device)
    epoch = step * per_epoch
    print(f"{args.arch} on {args.dataset} ({data.train_size} train / {data.val_size} val, "
          f"{per_epoch} steps per epoch), {args.rule}")
    print(f"defaults: {config.curvature_batches} batches of {args.batch} x "
          f"{config.curvature_steps} Lanczos steps, trace from {TRACE_SAMPLES} probes, gap on "
          f"{GAP_EXAMPLES} training examples, clean + {len(config.input_noise)} noise levels "
          f"on {NOISE_EXAMPLES} val examples")
    print(f"one training epoch: {epoch:.2f} s (median step {step * 1e3:.1f} ms)")
    print(f"one measurement:    {cost:.2f} s")
    ratio = cost / epoch
    verdict = "met" if ratio <= GOAL else "MISSED"
    print(f"measurement / epoch = {ratio:.3f} (goal <= {GOAL:.2f}: {verdict})")
    full = FULL_TRAIN.get(args.dataset)
    if full and full > data.train_size:
        print(f"the same measurement / one epoch of the full {full}-image training set = "
              f"{cost / (step * full / args.batch):.3f} (its cost does not grow with the data)")


if __name__ == "__main__":
    main()
