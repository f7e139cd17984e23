"""One formatter for everything the command line lists: a table for people, json or csv.

A ``Listing`` names its columns once, in a stable order; json and csv carry the raw values
under those keys, the table shows them formatted. Names come from other tools' studies too,
so nothing in them is obeyed: a table shows console markup as text and control or bidi
characters escaped (``\\u202e``); csv quotes a cell a spreadsheet would run as a formula; json
is strict (NaN and infinities are null), which every parser reads.
"""

from __future__ import annotations

import os

import csv
import io
import json
import math
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Column:
    key: str
    header: str = ""
    show: Callable[[Any], str] | None = None  # how the table shows a value
    right: bool = False
    squeeze: bool = False  # one line, cut with an ellipsis to what the terminal leaves it


@dataclass
class Listing:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    caption: str = ""
    document: Any = None  # printed by --format json instead of the rows, when given


def number(digits: int = 4, signed: bool = False) -> Callable[[Any], str]:
    def show(value: Any) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
        return str(value)
    return show


def general(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    """Strict JSON: a non-finite number is null, at any depth (json.dumps would write NaN,
    which most parsers reject)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def emit(listing: Listing, fmt: str) -> None:
    if fmt == "json":
        data = listing.document if listing.document is not None else [
            {c.key: row.get(c.key) for c in listing.columns} for row in listing.rows]
        print(json.dumps(_jsonable(data), default=str, allow_nan=False))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([_csv(c.key) for c in listing.columns])
        for row in listing.rows:
            writer.writerow(["" if row.get(c.key) is None else _csv(row.get(c.key))
                             for c in listing.columns])
        sys.stdout.write(buf.getvalue())
    else:
        _table(listing)


# A cell starting with one of these is a formula to a spreadsheet (CSV injection) ...
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ... unless it is a plain number written as text, or the "-" of an empty field.
_INERT = re.compile(r"-|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _csv(value: Any) -> Any:
    """A cell as csv carries it: numbers as they are, a structure as JSON, text that a
    spreadsheet would evaluate behind a single quote (OWASP's escape)."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(_jsonable(value), default=str, allow_nan=False)
    if isinstance(value, str) and value.startswith(_FORMULA_START) \
            and not _INERT.fullmatch(value):
        return "'" + value
    return value


# Besides Cc (controls) and Cf (bidi overrides and isolates, zero-width characters): the
# line and paragraph separators, and lone surrogates (an undecodable name).
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def printable(text: str) -> str:
    """``text`` with every control, format (bidi override, zero-width) or separator
    character written as its escape (``\\u202e``): a name must not reorder or hide what a
    terminal shows around it."""
    return "".join(_escape(c) if unicodedata.category(c) in _ESCAPED_CATEGORIES else c
                   for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _console(**kwargs: Any) -> Any:
    """Rich's console, except that a closed pipe (``| head -1``) raises BrokenPipeError for
    the command line to end with 141, where rich would exit 1 as if the command failed."""
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return PipeConsole(**kwargs)


def _table(listing: Listing) -> None:
    """Title and caption as plain lines (a narrow table would wrap them), the rows as a table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cells = [[printable((c.show or general)(row.get(c.key))) for c in listing.columns]
             for row in listing.rows]
    headers = [printable(c.header or c.key) for c in listing.columns]
    console = _console(markup=False, emoji=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 200)  # a pipe: as wide as it takes
    squeezed = [i for i, c in enumerate(listing.columns) if c.squeeze]

    def build(room: int | None) -> Any:
        table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                      show_edge=False)
        for c, header in zip(listing.columns, headers):
            # Beside a squeezed column (a failure's reason) every other column keeps its
            # width and the squeezed one gets what the terminal leaves, cut with an ellipsis.
            table.add_column(Text(header), justify="right" if c.right else "left",
                             no_wrap=bool(squeezed), overflow="ellipsis" if c.squeeze else "fold",
                             max_width=room if c.squeeze else None)
        for row in cells:
            table.add_row(*[Text(cell) for cell in row])
        return table

    table = build(None)
    if squeezed:
        from rich.measure import Measurement

        room = max(len(r[squeezed[0]]) for r in cells) if cells else 12
        for _ in range(4):  # the squeezed column gives up what the table overflows by
            wide = Measurement.get(console, console.options.update_width(10**6), table).maximum
            if wide <= console.width or room <= 12:
                break
            room = max(12, room - (wide - console.width))
            table = build(room)
    console.print(Text(printable(listing.title)))
    if listing.rows:
        console.print(table)
    for line in listing.caption.split("\n") if listing.caption else []:  # each line escaped
        console.print(Text(printable(line)))
