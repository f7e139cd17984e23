"""Beyond accuracy, per run: the loss curvature (top eigenvalue and trace of the true task
loss's Hessian, ``trainer.curvature.task_hessian``; not B's regularizer curvature, which
``trainer.dynamics`` plans with), the generalisation gap, and the val score under input noise
(Liu et al., NeurIPS 2022, measured on feedforward rules and depths, and on rate RNNs, where
the top eigenvalue of W_rec's block is measured too).

The loss is the dataset's task's (cross-entropy, or the mean squared error of a regression).
Every measurement uses generators of its own, never the global ones, so that turning it on
changes nothing about the training run itself (checkpoints restore bit for bit with it on).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from catalogue.tasks import get_task
from trainer.curvature import (ALL, curvature_groups, hutchinson_trace, task_hessian_blocks,
                               top_eigenvalue)
from trainer.conversion import weight_layers
from trainer.tasks import loss_fn, score_batches

TRACE_SAMPLES = 10
GAP_EXAMPLES = 2000  # the fixed training subset the train loss and top-1 (eval mode) are on
NOISE_EXAMPLES = 2000  # the fixed val subset the noisy score (and its clean value) is on


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


def eigenvalue_key(group: str) -> str:
    """Where a group's top eigenvalue is stored: ``top_eigenvalue`` for every trained
    parameter, ``top_eigenvalue_<group>`` for a block (``top_eigenvalue_recurrent``)."""
    return "top_eigenvalue" if group == ALL else f"top_eigenvalue_{group}"


def scale_free(model: nn.Module, top: float) -> dict[str, float]:
    """λ_max·‖W‖², with ‖W‖² the squared norm of every weight layer's W together. Where a
    BatchNorm follows a layer, scaling its W by c leaves the loss as it is and divides its
    curvature by c², so λ_max alone compares how large the weights grew as much as how sharp
    the minimum is. The product is a first-order correction, not an invariant: ‖W‖² also
    counts the layers no BatchNorm follows (the head; every layer of LeNet and the MLPs, where
    it means little), and λ_max is taken over all parameters, not the normalised block."""
    squared = sum(float(layer.weight.detach().pow(2).sum()) for _, layer in weight_layers(model))
    return {"weight_norm_sq": squared, "top_eigenvalue_scaled": top * squared}


def measure(model: nn.Module, data: Any, config: Any, device: torch.device,
            val: Mapping[str, float]) -> dict[str, Any]:
    """The measurements of ``--curvature`` for the model as it is now, given the epoch's val
    record (``val_loss`` and the task's score over the whole val split, eval mode). The keys
    are stored in studies and read by ``search``: ``top_eigenvalue`` (and a block's, see
    ``eigenvalue_key``) and ``trace`` are the loss curvature's; ``loss_gap`` is val loss
    minus the loss on a fixed training subset (every task), ``generalization_gap`` the same
    in top-1, the other way round (train minus val: classification)."""
    started = time.perf_counter()
    task = get_task(data.task)
    loss = loss_fn(task)
    batches = _first_batches(data.train, config.curvature_batches)
    groups = curvature_groups(model)
    # One graph for every block's eigenvalue and the trace.
    with task_hessian_blocks(model, batches, loss, groups) as hvps:
        result: dict[str, Any] = {
            eigenvalue_key(name): top_eigenvalue(hvps[name], group,
                                                 steps=config.curvature_steps,
                                                 seed=config.seed)
            for name, group in groups.items()}
        result["trace"] = hutchinson_trace(hvps[ALL], groups[ALL], samples=TRACE_SAMPLES,
                                           seed=config.seed)
        result["curvature_examples"] = sum(len(y) for _, y in batches)
    result.update(scale_free(model, result["top_eigenvalue"]))
    train = score_batches(model, _first_batches(data.train, None, GAP_EXAMPLES), device,
                          task, "train")
    result["train_loss_eval"] = train["train_loss"]
    result["loss_gap"] = val["val_loss"] - train["train_loss"]
    if "train_top1" in train:
        result["train_top1_eval"] = train["train_top1"]
        result["generalization_gap"] = train["train_top1"] - val["val_top1"]
    else:
        result["train_r2_eval"] = train["train_r2"]
    # Noise on a fixed val subset, its clean score ("0") on the same examples beside it.
    subset = _first_batches(data.val, None, NOISE_EXAMPLES)
    result[f"noisy_{task.score}"] = {
        f"{sigma:g}": score_batches(model, subset, device, task, "val", sigma,
                                    config.seed)[task.score]
        for sigma in (0.0, *config.input_noise)}
    result["seconds"] = time.perf_counter() - started
    return result
