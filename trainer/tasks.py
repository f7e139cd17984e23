"""A task's loss and metrics in torch (declared in ``catalogue.tasks``): what a training step
minimises, what an epoch records, and what a search maximizes (the task's ``score``)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catalogue.tasks import Task, get_task

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over examples, steps and outputs."""
    return F.mse_loss(output, target)


LOSSES: dict[str, LossFn] = {"cross_entropy": F.cross_entropy, "mse": mse}


def loss_fn(task: str | Task) -> LossFn:
    declared = get_task(task) if isinstance(task, str) else task
    return LOSSES[declared.loss]


def topk_correct(logits: Tensor, y: Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y.unsqueeze(1)).any(1).sum())


class Scorer:
    """Running sums over batches for one split: the loss and the task's metrics.

    Classification: ``loss``, ``top1``, ``top5`` (beyond 5 classes). Regression: ``loss`` (the mean squared
    error) and ``r2``, the fraction of the target's variance explained, 1 - SSE / SST, with
    SST about the split's mean per output dimension."""

    def __init__(self, task: str | Task) -> None:
        self.task = get_task(task) if isinstance(task, str) else task
        self.loss_sum = 0.0
        self.n = 0
        self.top1 = self.top5 = 0
        self.sse = 0.0
        self.target_sum: Tensor | None = None
        self.target_sq: Tensor | None = None
        self.values = 0  # target values per output dimension seen
        self.classes = 0

    @torch.no_grad()
    def add(self, output: Tensor, y: Tensor, loss: Tensor | None = None) -> None:
        """One batch; ``loss`` (the batch's mean loss) when the step computed it already."""
        n = len(y)
        if self.task.loss == "cross_entropy":
            batch_loss = float(loss) if loss is not None else float(F.cross_entropy(output, y))
            self.top1 += topk_correct(output, y, 1)
            self.top5 += topk_correct(output, y, 5)
            self.classes = output.shape[1]
        else:
            err = (output - y).double()
            batch_loss = float(loss) if loss is not None else float(err.pow(2).mean())
            self.sse += float(err.pow(2).sum())
            flat = y.double().reshape(-1, y.shape[-1])
            sums, squares = flat.sum(0), flat.pow(2).sum(0)
            self.target_sum = sums if self.target_sum is None else self.target_sum + sums
            self.target_sq = squares if self.target_sq is None else self.target_sq + squares
            self.values += flat.shape[0]
        self.loss_sum += batch_loss * n
        self.n += n

    def result(self, prefix: str) -> dict[str, float]:
        """``{prefix}_loss`` and the task's metrics under the same prefix."""
        out = {f"{prefix}_loss": self.loss_sum / self.n}
        if self.task.loss == "cross_entropy":
            out[f"{prefix}_top1"] = self.top1 / self.n
            if self.classes > 5:  # with 5 classes or fewer, top-5 is always 1
                out[f"{prefix}_top5"] = self.top5 / self.n
        else:
            assert self.target_sum is not None and self.target_sq is not None
            sst = float((self.target_sq - self.target_sum.pow(2) / self.values).sum())
            out[f"{prefix}_r2"] = 1.0 - self.sse / sst if sst > 0 else float("nan")
        return out


@torch.no_grad()
def score_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                  device: torch.device, task: str | Task, prefix: str, sigma: float = 0.0,
                  seed: int = 0) -> dict[str, float]:
    """The task's loss and metrics over ``batches`` in eval mode (``{prefix}_loss``,
    ``{prefix}_top1`` or ``{prefix}_r2``), with N(0, sigma^2) added to the (standardised)
    inputs from a generator of its own; the model's mode is restored after."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    scorer = Scorer(task)
    try:
        for x, y in batches:
            if sigma:
                x = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            scorer.add(model(x.to(device, non_blocking=True)),
                       y.to(device, non_blocking=True))
    finally:
        model.train(was_training)
    return scorer.result(prefix)

