"""The learning-rate schedule as one array of per-step factors (lr_t = lr x factor_t).

The training loop steps through it and the feedback-weight plan sums over it, so both read
the same numbers: a linear warm-up, then cosine, step or constant.
"""

from __future__ import annotations

import numpy as np

from catalogue.training import TrainConfig


def lr_factors(config: TrainConfig, total: int, per_epoch: int) -> np.ndarray:
    """Factor of the base learning rate at each of ``total`` steps."""
    steps = np.arange(total, dtype=np.float64)
    warmup = int(config.warmup_epochs * per_epoch)
    progress = (steps - warmup) / max(1, total - warmup)
    if config.schedule == "cosine":
        factors = 0.5 * (1 + np.cos(np.pi * progress))
    elif config.schedule == "step":
        drops = sum((progress >= m).astype(np.float64) for m in config.step_milestones)
        factors = config.step_gamma ** drops
    else:
        factors = np.ones(total)
    if warmup:
        factors = np.where(steps < warmup, (steps + 1) / warmup, factors)
    return factors
