"""Tasks: the loss and metrics a dataset's task gives, accumulated over batches."""

import math

import pytest
import torch
import torch.nn.functional as F

from catalogue.errors import UsageError
from catalogue.tasks import InputSpec, get_task
from trainer.tasks import Scorer, loss_fn


def test_r2_over_batches_is_one_minus_sse_over_the_splits_variance():
    torch.manual_seed(0)
    y = torch.randn(10, 7, 2) * torch.tensor([1.0, 5.0]) + torch.tensor([3.0, -1.0])
    pred = y + 0.3 * torch.randn_like(y)
    scorer = Scorer("regression")
    for part in (slice(0, 4), slice(4, 10)):
        scorer.add(pred[part], y[part])
    flat_y, flat_p = y.reshape(-1, 2).double(), pred.reshape(-1, 2).double()
    expected = 1 - ((flat_p - flat_y) ** 2).sum() / ((flat_y - flat_y.mean(0)) ** 2).sum()
    result = scorer.result("val")
    assert math.isclose(result["val_r2"], float(expected), rel_tol=1e-9)
    assert math.isclose(result["val_loss"], float(F.mse_loss(pred, y)), rel_tol=1e-6)
    mean_only = Scorer("regression")
    mean_only.add(y.mean((0, 1)).expand_as(y), y)  # predicting the mean explains nothing
    assert abs(mean_only.result("val")["val_r2"]) < 1e-9


def test_classification_scores_top1_and_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    scorer = Scorer("classification")
    scorer.add(logits, y)
    result = scorer.result("train")
    assert result["train_top1"] == pytest.approx(2 / 3)
    assert "train_top5" not in result  # three classes: top-5 would always be 1
    many = Scorer("classification")
    many.add(torch.eye(7)[[0, 1, 2]] + torch.arange(7.0) / 100, torch.tensor([0, 6, 0]))
    assert many.result("val")["val_top5"] == pytest.approx(2 / 3)
    assert result["train_loss"] == pytest.approx(float(F.cross_entropy(logits, y)))
    assert loss_fn("classification") is F.cross_entropy
    assert get_task("regression").score == "val_r2"


def test_a_sequence_is_an_image_read_row_by_row():
    assert InputSpec.image(3, 32).as_sequence() == InputSpec.sequence(32, 96)
    with pytest.raises(UsageError, match="unknown task .segmentation.; valid: classification"):
        get_task("segmentation")
