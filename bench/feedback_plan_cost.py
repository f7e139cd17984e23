"""Cost of B's plan (curvature of every layer's regularizer, stability limits, relaxation
budgets) as a fraction of one training epoch, measured side by side in one run.

For each learned-B rule: the median time of ``FeedbackPlanner.plan`` over --rounds, and the
median time of a training step (``trainer.loop.train_step``, same model and batch) times the
dataset's steps per epoch. The plan runs once before training and once per epoch, so this
fraction is its whole overhead. Goal: <= 5 % of an epoch. Under auto, also the warm-up
that runs once before W's first step (``FeedbackPlanner.warm_up``: median over --rounds, each
on a fresh copy of the model), as a fraction of one epoch.

    python bench/feedback_plan_cost.py [--arch resnet20] [--dataset fashion_mnist]
        [--train-subset 10000] [--batch 128] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


from catalogue.training import TrainConfig
from trainer.dynamics import FeedbackPlanner
from trainer.loop import build, resolve_device, train_step
from trainer.optim import feedback_groups, make_optimizer, set_lr
from trainer.schedule import lr_factors
from torch_setup import interleaved

RULES = ("symmetric_alignment", "kolen_pollack", "weight_mirror", "information_alignment",
         "activation_alignment")
GOAL = 0.05


def measure(rule: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    config = TrainConfig(rule=rule, arch=args.arch, dataset=args.dataset,
                         batch_size=args.batch, train_subset=args.train_subset,
                         feedback_lr_multiplier=args.multiplier)
    model, data = build(config)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    per_epoch = len(data.train)
    factors = lr_factors(config, per_epoch * config.epochs, per_epoch)
    x, y = (t.to(device) for t in next(iter(data.train.batches(0))))
    planner = FeedbackPlanner(model, feedback_groups(model, optimizer), x, lr=config.lr,
                              factors=factors, momentum=config.momentum,
                              multiplier=config.feedback_lr_multiplier,
                              target=config.feedback_relaxations)
    for _ in range(2):  # warm-up
        if (error := planner.plan(0, 0).error) is not None:
            raise RuntimeError(f"{rule}: the plan failed: {error}")
        set_lr(optimizer, config.lr, 1.0)  # each group at lr x its (planned) scale
        train_step(model, optimizer, x, y)
    rounds = iter(range(1, args.rounds + 1))

    def plan_once() -> None:
        round_ = next(rounds)
        plan = planner.plan(per_epoch * round_, round_)
        if plan.error is not None:  # a failed plan returns early: its time would flatter
            raise RuntimeError(f"{rule}: the plan failed: {plan.error}")
        set_lr(optimizer, config.lr, 1.0)

    step, plan = interleaved(lambda: train_step(model, optimizer, x, y), plan_once,
                             rounds=args.rounds, steps=args.steps, device=device)
    return {"step": step, "epoch": step * per_epoch, "plan": plan, "per_epoch": per_epoch,
            "warmup": _warmup_seconds(model, config, factors, x, args.rounds)}


def _warmup_seconds(model: torch.nn.Module, config: TrainConfig, factors, x: torch.Tensor,
                    rounds: int) -> float | None:
    """Median seconds of auto's warm-up, each round on a fresh copy (it runs once a run)."""
    if config.feedback_lr_multiplier != "auto":
        return None
    times = []
    for _ in range(rounds):
        fresh = copy.deepcopy(model)
        planner = FeedbackPlanner(fresh, feedback_groups(fresh, make_optimizer(fresh, config)),
                                  x, lr=config.lr, factors=factors, momentum=config.momentum,
                                  multiplier="auto", target=config.feedback_relaxations,
                                  warmup=config.feedback_warmup_relaxations)
        started = time.perf_counter()
        planner.warm_up()
        times.append(time.perf_counter() - started)
        if planner.warmup_error is not None:
            raise RuntimeError(f"{config.rule}: the warm-up failed: {planner.warmup_error}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--multiplier", default="auto", help="a number, or auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.multiplier != "auto":
        args.multiplier = float(args.multiplier)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"{args.arch} on {args.dataset} (train subset {args.train_subset}), batch "
          f"{args.batch}, multiplier {args.multiplier}, device {device}, {args.threads} "
          f"threads, torch {torch.__version__}; medians of {args.rounds} rounds\n")
    print("| rule | step (ms) | steps/epoch | epoch (s) | plan (s) | plan / epoch | goal | met | "
          "warm-up (s) | warm-up / epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rule in RULES:
        m = measure(rule, args, device)
        ratio = m["plan"] / m["epoch"]
        print(f"| {rule} | {m['step'] * 1e3:.1f} | {m['per_epoch']} | {m['epoch']:.1f} | "
              f"{m['plan']:.3f} | {ratio:.1%} | ≤ {GOAL:.0%} | "
              f"{'yes' if ratio <= GOAL else 'NO'} | " + (
                  "- | - |" if m["warmup"] is None else
                  f"{m['warmup']:.3f} | {m['warmup'] / m['epoch']:.1%} |"), flush=True)


if __name__ == "__main__":

    main()
