"""Beyond accuracy, per run: the loss curvature (top eigenvalue and trace of the true task
loss's Hessian, ``trainer.curvature.task_hessian``; not B's regularizer curvature, which
``trainer.dynamics`` plans with), the generalisation gap, and accuracy under input noise (Liu
et al., NeurIPS 2022, measured on feedforward rules and depths).

Every measurement uses generators of its own, never the global ones, so that turning it on
changes nothing about the training run itself (checkpoints restore bit for bit with it on).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from trainer.curvature import (hutchinson_trace, task_hessian, task_parameters,
                               top_eigenvalue)

TRACE_SAMPLES = 10
GAP_EXAMPLES = 2000  # the fixed training subset the train top-1 (eval mode) is measured on
NOISE_EXAMPLES = 2000  # the fixed val subset the noisy top-1 (and its clean value) is on


def _first_batches(source: Any, count: int | None, examples: int | None = None
                   ) -> list[tuple[Tensor, Tensor]]:
    """The first ``count`` batches (or ``examples`` examples) of epoch 0's fixed order."""
    taken, seen = [], 0
    for x, y in source.batches(0):
        if (count is not None and len(taken) >= count) or \
                (examples is not None and seen >= examples):
            break
        taken.append((x, y))
        seen += len(y)
    return taken


@torch.no_grad()
def _top1(model: nn.Module, batches: list[tuple[Tensor, Tensor]], device: torch.device,
          sigma: float = 0.0, seed: int = 0) -> float:
    """Top-1 in eval mode, with N(0, sigma^2) added to the (standardised) inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in batches:
            if sigma:
                x = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            logits = model(x.to(device))
            correct += int((logits.argmax(1) == y.to(device)).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / total


def measure(model: nn.Module, data: Any, config: Any, device: torch.device,
            val_top1: float) -> dict[str, Any]:
    """The measurements of ``--curvature`` for the model as it is now. The keys are stored in
    studies and read by ``search``: ``top_eigenvalue`` and ``trace`` are the loss curvature's."""
    started = time.perf_counter()
    batches = _first_batches(data.train, config.curvature_batches)
    with task_hessian(model, batches) as loss_hvp:  # one graph for the eigenvalue and the trace
        params = task_parameters(model)
        result: dict[str, Any] = {
            "top_eigenvalue": top_eigenvalue(loss_hvp, params, steps=config.curvature_steps,
                                             seed=config.seed),
            "trace": hutchinson_trace(loss_hvp, params, samples=TRACE_SAMPLES,
                                      seed=config.seed),
            "curvature_examples": sum(len(y) for _, y in batches)}
    train_top1 = _top1(model, _first_batches(data.train, None, GAP_EXAMPLES), device)
    result["train_top1_eval"] = train_top1
    result["generalization_gap"] = train_top1 - val_top1
    # Noise on a fixed val subset, its clean top-1 ("0") on the same examples beside it.
    val = _first_batches(data.val, None, NOISE_EXAMPLES)
    result["noisy_val_top1"] = {f"{sigma:g}": _top1(model, val, device, sigma, config.seed)
                                for sigma in (0.0, *config.input_noise)}
    result["seconds"] = time.perf_counter() - started
    return result
