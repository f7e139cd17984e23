"""Table columns for what ``--curvature`` measured, shared by the study summaries."""

from __future__ import annotations

from search.beyond_accuracy import HEADERS, MEASURES, any_measured, significant
from search.cli.output import Column


def measure_columns(rows: list[dict], prefixes: tuple[str, ...] = ("",)) -> list[Column]:
    """Columns for what ``--curvature`` measured, only when some run measured it."""
    if not any_measured(rows, prefixes):
        return []
    return [Column(f"{prefix}{key}", f"{'backprop ' if prefix else ''}{HEADERS[key]}",
                   show=significant, right=True) for key in MEASURES for prefix in prefixes]
