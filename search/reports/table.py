"""The method x depth table of transfer studies (``report --table``): one row per rule,
backprop first, one column per target architecture, each cell the reported setting's mean
val top-1 ± std over seeds, as table.md and table.csv.

Apart from the transfer figures because it answers another question (one number per rule
and depth, to cite) and must never let one of two differing backprop baselines stand for
both.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from search.reports.common import (
    output_folder,
    plural,
    trial_counts,
    versions_lines,
    write_atomic,
    write_text,
)
from search.reports.transfer import TransferSet
from search.specs import DEFAULTS_SOURCE
from search.summaries import depth_of


@dataclass(frozen=True)
class TableCell:
    """One rule on one target: mean and spread of val top-1 over the completed seeds of the
    setting the summary reports; ``runs`` 0 when nothing ran there."""

    mean: float | None
    std: float | None
    seeds: int
    runs: int

    def text(self) -> str:
        """Percent, BioTorch style: '70.0 ± 1.6'; one seed has no spread to show."""
        if self.mean is None:
            return "every seed diverged" if self.runs else "-"
        if self.seeds == 1:
            return f"{100 * self.mean:.1f} ± n/a (1 seed)"
        return f"{100 * self.mean:.1f} ± {100 * (self.std or 0.0):.1f}"


Column = tuple[str, str]  # (dataset, target architecture)


def method_table(group: TransferSet) -> tuple[list[Column], list[tuple[str, dict[Column,
                                                                                 TableCell]]]]:
    """Columns (targets, ordered by their family's axis: depth, hidden units; per dataset)
    and rows (backprop first, then each
    study's rule) of the reported settings' val top-1 over seeds."""
    rules: list[tuple[str, dict[Column, TableCell]]] = []
    baselines: list[tuple[str, Any, dict[Column, TableCell]]] = []
    for study, summary in zip(group.studies, group.summaries):
        dataset = str(study.user_attrs.get("dataset"))
        cells, backprop = {}, {}
        for row in summary["rows"]:
            column = (dataset, row["target"])
            setting = (row.get("settings") or {}).get(str(row.get("best_source_trial")), {})
            cells[column] = TableCell(row["mean"], row["std"], row.get("completed") or 0,
                                      setting.get("runs", 0))
            completed = row.get("backprop_completed") or 0
            backprop[column] = TableCell(row["backprop_mean"], row["backprop_std"], completed,
                                         completed)
        rules.append((summary["rule"], cells))
        baselines.append((study.study_name, (summary["epochs"], summary["seeds"]), backprop))
    columns = sorted({c for _, cells in rules for c in cells}, key=_column_order(group))
    return columns, _backprop_rows(baselines) + _unique_labels(rules, group.studies)


def _column_order(group: TransferSet) -> Callable[[Column], tuple]:
    datasets = group.datasets
    return lambda c: (datasets.index(c[0]) if c[0] in datasets else len(datasets),
                      depth_of(c[1]) is None, depth_of(c[1]) or 0, c[1])


def _backprop_rows(baselines: list[tuple[str, Any, dict[Column, TableCell]]]
                   ) -> list[tuple[str, dict[Column, TableCell]]]:
    """Backprop rows: studies with the same epochs and seeds whose baselines agree wherever
    both have one (a shared baseline study, or the same runs) share a row; other baselines
    get a row each, named by their studies, so no number is silently chosen over another.
    One row, plainly 'backprop', when all agree."""
    groups: list[tuple[list[str], Any, dict[Column, TableCell]]] = []
    for name, schedule, cells in baselines:
        cells = {c: cell for c, cell in cells.items() if cell.mean is not None}
        group = next((g for g in groups if g[1] == schedule and all(
            g[2][c] == cell for c, cell in cells.items() if c in g[2])), None)
        if group is None:
            groups.append(([name], schedule, dict(cells)))
        else:
            group[0].append(name)
            group[2].update(cells)
    if len(groups) == 1:
        return [("backprop", groups[0][2])] if groups[0][2] else []
    return [(f"backprop (baseline of {', '.join(names)})", cells)
            for names, _, cells in groups]


def _unique_labels(rows: list[tuple[str, dict[Column, TableCell]]],
                   studies: list[optuna.Study]) -> list[tuple[str, dict[Column, TableCell]]]:
    """A rule that several studies transferred is named with each study."""
    labels = [label for label, _ in rows]
    return [(label if labels.count(label) == 1 else f"{label} ({study.study_name})", cells)
            for (label, cells), study in zip(rows, studies)]


def _column_label(column: Column, several_datasets: bool) -> str:
    return f"{column[0]}/{column[1]}" if several_datasets else column[1]


def table_report(studies: list[optuna.Study], out: Path, storage: Any = None) -> list[str]:
    """table.md and table.csv: rules x target architectures (x datasets when the studies
    span several), each cell the reported setting's mean val top-1 ± std over seeds."""
    output_folder(out)
    group = TransferSet.load(studies, storage)
    columns, rows = method_table(group)
    several = len(group.datasets) > 1
    labels = [_column_label(c, several) for c in columns]
    return [write_text(out / "table.md", _table_markdown(group, labels, columns, rows)),
            write_atomic(out / "table.csv", lambda fh: fh.write(
                _table_csv(labels, columns, rows).encode()))]


def _table_markdown(group: TransferSet, labels: list[str], columns: list[Column],
                    rows: list[tuple[str, dict[Column, TableCell]]]) -> list[str]:
    context = group.context()
    axis = group.axis
    by = "depth" if axis.axis == "depth" else axis.label
    lines = [f"# Validation top-1 % by rule and {by}", "",
             f"Mean ± std over seeds of each rule's reported setting ({context[0]}); "
             "backprop trained with the same seeds and schedule.", "",
             "| rule | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(
            cells.get(c, TableCell(None, None, 0, 0)).text() for c in columns) + " |")
    lines += ["", "Studies:", ""]
    for study, summary in zip(group.studies, group.summaries):
        source = ("its official defaults" if study.user_attrs.get("arch") == DEFAULTS_SOURCE
                  else f"settings of `{summary['source_study']}` (--select "
                       f"{summary['select']})")
        lines.append(f"- `{study.study_name}`: {summary['rule']}, {source}, "
                     f"{plural(summary['seeds'], 'seed')}, "
                     f"{plural(summary['epochs'], 'epoch')} on "
                     f"{study.user_attrs.get('dataset')}; "
                     f"{trial_counts(study.get_trials(deepcopy=False), 'runs')}"
                     + (f"; PARTIAL: {summary['missing_runs']} of {summary['planned_runs']} "
                        "planned runs missing" if summary.get("missing_runs") else ""))
    lines += ["", *versions_lines(group.studies)]
    lines += ["`--select best` reports, per target, the setting with the best mean there "
              "(an optimistic bound); `--select robust` one setting chosen on the source."]
    return lines


def _table_csv(labels: list[str], columns: list[Column],
               rows: list[tuple[str, dict[Column, TableCell]]]) -> str:
    """The same table, machine-readable: per column the mean and std (fractions) and the
    completed seeds; empty where there is no value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rule"] + [f"{label}_{part}" for label in labels
                                for part in ("mean", "std", "seeds")])
    for label, cells in rows:
        values: list[Any] = [_csv_text(label)]
        for column in columns:
            cell = cells.get(column, TableCell(None, None, 0, 0))
            values += ["" if cell.mean is None else repr(cell.mean),
                       "" if cell.mean is None or cell.seeds < 2 else repr(cell.std),
                       cell.seeds]
        writer.writerow(values)
    return buf.getvalue()


def _csv_text(text: str) -> str:
    """Text a spreadsheet would run as a formula is quoted."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text
