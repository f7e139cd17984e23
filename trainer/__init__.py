"""creditsweep's trainer: feedback-weight layers, alignment rules, models, data and a loop.

Runs without Ray; the search service (``search``) builds on exactly this public API.
"""

from trainer.alignment import alignment_loss
from trainer.convert import convert, feedback_layers, swap_layers
from trainer.datasets import DataError, list_datasets, load_dataset
from trainer.diagnostics import measure_alignment
from trainer.layers import FeedbackConv2d, FeedbackLinear
from trainer.loop import TrainConfig, TrainResult, train
from trainer.models import create_model, list_models, register_model
from trainer.rules import Rule, get_rule, list_rules, register_rule, rule_declaration

__all__ = [
    "DataError", "FeedbackConv2d", "FeedbackLinear", "Rule", "TrainConfig", "TrainResult",
    "alignment_loss", "convert", "create_model", "feedback_layers", "get_rule",
    "list_datasets", "list_models", "list_rules", "load_dataset", "measure_alignment",
    "register_model", "register_rule", "rule_declaration", "swap_layers", "train",
]
