"""What every command shares: the Command unit, the shared flags, and help that shows defaults.

A command is one small unit: its arguments and its ``run``. Flags several commands take come
from parent parsers built here (``--storage``, ``--format``, ``--debug``, and the execution
flags), so each is declared, documented and defaulted once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from catalogue.errors import UsageError
from search.urls import STORAGE_HELP

FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    shared: tuple[str, ...] = ()  # parent parsers: "storage", "format", "execution"
    description: str = ""
    runs_ray: bool = False  # starts or joins Ray (prepared before Ray is imported)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default: the value the code uses when the flag is
    left out (a flag may name it with ``shown_default`` when its parsed default is None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or action.default is argparse.SUPPRESS or action.required
                or not action.option_strings):
            return text
        shown = getattr(action, "shown_default", action.default)
        if isinstance(action, argparse._StoreTrueAction):
            shown = "off"
        if shown is None or shown == []:
            shown = "none"
        return f"{text} (default: {_show(shown)})"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str,
        shown_default: Any = None, **kwargs: Any) -> argparse.Action:
    """``add_argument`` that can name the default the code applies when the flag is absent."""
    action = parser.add_argument(*flags, **kwargs)
    if shown_default is not None:
        action.shown_default = shown_default  # type: ignore[attr-defined]
    return action


def storage_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add(p, "--storage", default=None, metavar="URL", help=STORAGE_HELP)
    return p


def format_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add(p, "--format", choices=FORMATS, default="table",
        help="output: a table for people, json or csv for programs")
    return p


def debug_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not hide a --debug given before it.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the full traceback of an error (default: off)")
    return p


def parse_assignments(items: list[str], flag: str) -> dict[str, float | str]:
    """NAME=VALUE pairs: a number, or a name (a rule's categorical option; binding the rule
    refuses it anywhere else)."""
    values: dict[str, float | str] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{flag} expects NAME=VALUE, got {item!r}")
        try:
            values[name.strip()] = float(raw)
        except ValueError:  # a rule's categorical option (the rule checks it), else an error
            if not raw.strip().isidentifier():
                raise UsageError(f"{flag} {item!r}: {raw!r} is not a number") from None
            values[name.strip()] = raw.strip()
    return values


def parse_numbers(items: list[str], flag: str,
                  names: bool = False) -> dict[str, int | float | str]:
    """NAME=VALUE pairs whose values are numbers: a whole number as an int (64, not 64.0, so
    that a count stays a count), anything else as a float; with ``names``, a value that is a
    name stays one (a model's activation). The owner of the names (an architecture, a
    dataset) checks them and their ranges."""
    values: dict[str, int | float | str] = {}
    for item in items:
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise UsageError(f"{flag} expects NAME=VALUE, got {item!r}")
        if name in values:
            raise UsageError(f"{flag} {name} is given twice")
        try:
            values[name] = int(raw)
        except ValueError:
            try:
                values[name] = float(raw)
            except ValueError:
                if not (names and raw.isidentifier()):
                    raise UsageError(f"{flag} {item!r}: {raw!r} is not a number") from None
                values[name] = raw
    return values


def comma_list(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise UsageError(f"{flag} expects a comma-separated list, got {text!r}")
    return items
