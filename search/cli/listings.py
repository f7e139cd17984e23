"""``creditsweep rules | models | datasets``: what can be named, from the catalogue.

``rules`` and ``models`` read only the torch-free catalogue, so they answer at once.
"""

from __future__ import annotations

import argparse

from search.cli.base import Command
from search.cli.output import Column, Listing, emit


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run_rules(args: argparse.Namespace) -> int:
    from catalogue.primitives import PRIMITIVES
    from catalogue.rule import RULES, list_rules, rule_declaration

    rows = []
    for name in list_rules():
        rule = rule_declaration(name)
        rows.append({"rule": name, "local": rule.local, "feedback": rule.feedback,
                     "regularizer": rule.formula(), "input": rule.regularizer_input,
                     "defaults": {**rule.defaults, **{o.name: o.default for o in rule.options}},
                     "summary": rule.summary,
                     "reference": rule.reference})
    caption = "primitives: " + "; ".join(f"{p.name} = {p.formula}" for p in PRIMITIVES.values())
    old_names = RULES.aliases()
    if old_names:
        caption += ". Older names, still accepted: " + ", ".join(
            f"{alias} = {name}" for alias, name in sorted(old_names.items()))
    emit(Listing("credit-assignment rules", [
        Column("rule"), Column("local"), Column("feedback", "B"),
        Column("regularizer", "R per layer"), Column("input"),
        Column("defaults", show=lambda d: ", ".join(
            f"{k}={v}" if isinstance(v, str) else f"{k}={v:g}" for k, v in d.items()) or "-"),
        Column("summary"), Column("reference")], rows, caption), args.format)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from catalogue.architectures import architecture, list_architectures

    # "axis": what a transfer varies across the family (depth, hidden units); "depth" (the
    # key kept for the depth families) is the model's value on it.
    rows = [{"model": n, "family": architecture(n).family, "axis": architecture(n).axis.axis,
             "depth": architecture(n).scale, "summary": architecture(n).summary}
            for n in list_architectures()]
    emit(Listing("architectures", [Column("model"), Column("family"), Column("axis"),
                                   Column("depth", "scale", right=True), Column("summary")],
                 rows), args.format)
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    from trainer.datasets import DATASETS

    rows = [{"dataset": name, "summary": source.summary} for name, source in
            sorted(DATASETS.items())]
    emit(Listing("datasets", [Column("dataset"), Column("summary")], rows), args.format)
    return 0


RULES = Command("rules", "list the rules: primitives, defaults, locality, reference",
                _no_arguments, run_rules, shared=("format",))
MODELS = Command("models", "list the architectures", _no_arguments, run_models,
                 shared=("format",))
DATASETS = Command("datasets", "list the datasets and where each reads its files",
                   _no_arguments, run_datasets, shared=("format",))
