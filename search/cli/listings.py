"""``creditsweep rules | models | datasets``: what can be named, from the catalogue.

``rules`` and ``models`` read only the torch-free catalogue, so they answer at once.
"""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.base import Command
from search.cli.output import Column, Listing, emit


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _rule_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("rule", nargs="?", help="list this rule's options: each one's range or "
                                           "choices and what it does")


def run_rule_options(name: str, output: str) -> int:
    """One rule's typed options (what ``--set NAME=VALUE`` takes), with their help."""
    from catalogue.rule import rule_declaration

    rule = rule_declaration(name)
    rows = [{"option": o.name, "values": o.describe(), "help": o.help} for o in rule.options]
    emit(Listing(f"{rule.name}: options (--set NAME=VALUE)", [
        Column("option"), Column("values"), Column("help")], rows,
        rule.summary if rows else f"{rule.summary} It has no options."), output)
    return 0


def run_rules(args: argparse.Namespace) -> int:
    from catalogue.primitives import PRIMITIVES
    from catalogue.rule import RULES, list_rules, rule_declaration

    if getattr(args, "rule", None):
        return run_rule_options(args.rule, args.format)
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
    import textwrap

    from catalogue.architectures import architecture, list_architectures

    rows, options = [], {}
    for name in list_architectures():
        arch = architecture(name)
        rows.append({"model": name, "family": arch.family,
                     "axis": arch.axis.axis, "scale": arch.scale, "inputs": list(arch.inputs),
                     "summary": arch.summary})
        if arch.settable:
            options[arch.family] = " ".join(f"{k}={o.describe()}"
                                            for k, o in arch.settable.items())
    caption = ["axis: what a transfer study varies in the family (depth: weight layers; "
               "hidden: units); scale: this model's value on it"]
    if options:
        caption.append("options (--model-option NAME=VALUE), by family:")
        for family, described in options.items():
            caption += textwrap.wrap(f"{family}: {described}", 96, subsequent_indent="  ")
    emit(Listing("architectures", [
        Column("model"), Column("family"),
        Column("axis"), Column("scale", right=True),
        Column("inputs", show=lambda kinds: ",".join(kinds)), Column("summary")], rows,
        "\n".join(caption)), args.format)
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    import textwrap

    from trainer.datasets import DATASETS
    from trainer.datasets.generated import describe_options

    rows, options = [], []
    for name, source in sorted(DATASETS.items()):
        spec = source.input_spec()
        rows.append({"dataset": name, "task": source.task, "input": _shape(spec),
                     "summary": source.summary,
                     "options": {k: d for k, (d, _) in source.options.items()}})
        if source.options:
            options += textwrap.wrap(f"{name}: {describe_options(source)}", 96,
                                     subsequent_indent="  ")
    caption = "\n".join(["generated sets' options (--dataset-option NAME=VALUE):", *options]
                        if options else [])
    emit(Listing("datasets", [Column("dataset"), Column("task"), Column("input"),
                              Column("summary")], rows, caption), args.format)
    return 0


def _shape(spec: Any) -> str:
    """An example's input, short: channels x size x size, steps x features, or features."""
    if spec.kind == "image":
        return f"{spec.channels}x{spec.size}x{spec.size} image"
    if spec.kind == "vector":
        return f"{spec.features} vector"
    return f"{spec.steps}x{spec.features} sequence"


RULES = Command("rules", "list the rules: primitives, defaults, locality, reference; or one "
                         "rule's options", _rule_argument, run_rules, shared=("format",))
MODELS = Command("models", "list the architectures", _no_arguments, run_models,
                 shared=("format",))
DATASETS = Command("datasets", "list the datasets and where each reads its files",
                   _no_arguments, run_datasets, shared=("format",))
