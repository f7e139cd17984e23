"""One formatter for everything the command line lists: a table for people, json or csv.

A ``Listing`` names its columns once, in a stable order; json and csv carry the raw values
under those keys, the table shows them formatted. Every cell is plain text: a study name full
of console markup is printed as it is, never interpreted.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Column:
    key: str
    header: str = ""
    show: Callable[[Any], str] | None = None  # how the table shows a value
    right: bool = False


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
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


def emit(listing: Listing, fmt: str) -> None:
    if fmt == "json":
        data = listing.document if listing.document is not None else [
            {c.key: _jsonable(row.get(c.key)) for c in listing.columns} for row in listing.rows]
        print(json.dumps(data, default=str))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([c.key for c in listing.columns])
        for row in listing.rows:
            writer.writerow(["" if row.get(c.key) is None else _csv(row.get(c.key))
                             for c in listing.columns])
        sys.stdout.write(buf.getvalue())
    else:
        _table(listing)


def _csv(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def _table(listing: Listing) -> None:
    """Title and caption as plain lines (a narrow table would wrap them), the rows as a table."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for c in listing.columns:
        table.add_column(Text(c.header or c.key), justify="right" if c.right else "left")
    for row in listing.rows:
        table.add_row(*[Text((c.show or general)(row.get(c.key))) for c in listing.columns])
    console = Console(markup=False, emoji=False, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    console.print(Text(listing.title))
    if listing.rows:
        console.print(table)
    if listing.caption:
        console.print(Text(listing.caption))
