"""Flags built from the dataclasses that own them: ``TrainConfig`` and ``Execution``.

Each field becomes one flag with the field's help and default, so ``train``, ``sweep`` and
``transfer`` accept the same training options from one source, and every command that runs
trials takes the same execution flags. A flag left out is not passed on: the dataclass's own
default applies, and the help says which it is.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from catalogue.training import TrainConfig, training_options
from search.cli.base import add, parse_numbers
from search.execution import Execution, execution_options

TRAINING = "_training_flags"  # Namespace attribute: the training fields this parser has
# TrainConfig's dict fields, each filled by a repeatable NAME=VALUE flag.
ASSIGNED = {
    "model_options": ("--model-option", "an architecture's option, e.g. --model-option "
                                        "hidden=64 (list: creditsweep models)"),
    "dataset_options": ("--dataset-option", "a generated dataset's option, e.g. "
                                            "--dataset-option delay_steps=700 (list: "
                                            "creditsweep datasets)"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None


def _parser_of(field: dataclasses.Field) -> dict[str, Any]:
    """argparse keywords for a field, from its annotation (postponed, so a string)."""
    kind = str(field.type).replace(" ", "")
    custom = field.metadata.get("parse")
    if custom is not None:
        return {"type": custom, "metavar": field.metadata.get("metavar")}
    if kind.startswith("bool"):
        return {"action": argparse.BooleanOptionalAction}
    if kind.startswith("tuple[float"):
        return {"type": _floats, "metavar": "X,Y,…"}
    metavar = field.metadata.get("metavar")
    if kind.startswith("int"):
        return {"type": int, "metavar": metavar or "N"}
    if kind.startswith("float"):
        return {"type": float, "metavar": metavar or "X"}
    choices = field.metadata.get("choices") or None
    return {"choices": choices} if choices else {"metavar": metavar or "NAME"}


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def add_training_options(parser: argparse.ArgumentParser, *,
                         defaults: dict[str, Any] | None = None,
                         required: tuple[str, ...] = (), omit: tuple[str, ...] = (),
                         shown: dict[str, str] | None = None) -> None:
    """One flag per training option. ``defaults`` are the command's own defaults (a sweep's
    main job); flags not among them default to None, meaning TrainConfig's default, unless
    ``shown`` says what else the command does when the flag is left out."""
    defaults, shown = defaults or {}, shown or {}
    group = parser.add_argument_group("training options")
    names = []
    for field in training_options():
        if field.name in omit:
            continue
        names.append(field.name)
        kwargs = _parser_of(field)
        if field.name in required:
            group.add_argument(_flag(field.name), required=True, help=field.metadata["help"],
                               **kwargs)
        elif field.name in defaults:
            add(group, _flag(field.name), default=defaults[field.name],
                help=field.metadata["help"], **kwargs)
        else:
            add(group, _flag(field.name), default=None,
                shown_default=shown.get(field.name, _default_of(field)),
                help=field.metadata["help"], **kwargs)
    for name, (flag, text) in ASSIGNED.items():
        if name not in omit:
            names.append(name)
            add(group, flag, dest=name, action="append", default=None, metavar="NAME=VALUE",
                shown_default=shown.get(name, "none"), help=text + "; repeat for more")
    parser.set_defaults(**{TRAINING: names})


def training_values(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The training options the user gave (flags left out are not included); the NAME=VALUE
    flags as the dicts TrainConfig holds (UsageError on a malformed one)."""
    values = {name: getattr(args, name) for name in getattr(args, TRAINING, [])
              if name not in exclude and getattr(args, name) is not None}
    for name, (flag, _) in ASSIGNED.items():
        if name in values:
            values[name] = parse_numbers(values[name], flag, names=name == "model_options")
    return values


def execution_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("execution (Ray resources)")
    for field in execution_options():
        add(group, _flag(field.name), default=field.default, help=field.metadata["help"],
            **_parser_of(field))
    return p


def execution_from_args(args: argparse.Namespace) -> Execution:
    return Execution(**{f.name: getattr(args, f.name) for f in execution_options()})


def train_config(values: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from flag values (unknown names are a bug, not user input)."""
    config = TrainConfig(**values)
    config.validate()
    return config
