"""creditsweep's trainer: feedback-weight layers, the rules' regularizers, models, data, a loop.

Runs without Ray; the search service builds on exactly this public API. What a rule, an
architecture and a training option *are* is declared in ``catalogue`` (no torch); this package
is how they run.
"""

from catalogue.rule import ConfiguredRule, Rule, get_rule, list_rules, register_rule
from catalogue.rule import rule_declaration
from catalogue.training import TrainConfig
from trainer.alignment import alignment_loss
from trainer.convert import convert, feedback_layers, swap_layers
from trainer.datasets import DataError, check_dataset, list_datasets, load_dataset
from trainer.diagnostics import measure_alignment
from trainer.layers import FeedbackConv2d, FeedbackLinear
from trainer.loop import TrainResult, resolve_device, train
from trainer.models import create_model, list_models, register_model

__all__ = [
    "ConfiguredRule", "DataError", "FeedbackConv2d", "FeedbackLinear", "Rule", "TrainConfig",
    "TrainResult", "alignment_loss", "check_dataset", "convert", "create_model",
    "feedback_layers", "get_rule", "list_datasets", "list_models", "list_rules",
    "load_dataset", "measure_alignment", "register_model", "register_rule", "resolve_device",
    "rule_declaration", "swap_layers", "train",
]
