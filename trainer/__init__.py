"""creditsweep's trainer: feedback-weight layers, the rules' regularizers, models, data, a loop.

Runs without Ray; the search service builds on exactly this public API. What a rule, an
architecture and a training option *are* is declared in ``catalogue`` (no torch); this package
is how they run.

Names are imported when first used, so that ``trainer.datasets``' checks (which a sweep runs
before anything else) do not wait for torch to load.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "catalogue.rule": ("ConfiguredRule", "Rule", "get_rule", "list_rules", "register_rule",
                       "rule_declaration"),
    "catalogue.training": ("TrainConfig",),
    "trainer.alignment": ("alignment_loss",),
    "trainer.conversion": ("convert", "feedback_layers", "swap_layers"),
    "trainer.datasets": ("DataError", "check_dataset", "list_datasets", "load_dataset"),
    "trainer.diagnostics": ("measure_alignment",),
    "trainer.layers": ("FeedbackConv2d", "FeedbackLinear"),
    "trainer.loop": ("TrainResult", "resolve_device", "train"),
    "trainer.models": ("create_model", "list_models", "register_model"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
    else:
        try:  # a submodule named as an attribute: trainer.datasets after ``import trainer``
            value = import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists and itself lacks something
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
