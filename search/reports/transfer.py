"""The report of one or more transfer studies: how settings tuned on one architecture fare
at other depths, against backprop trained the same way.

accuracy_vs_depth.png, layer_angles.png, curvature_vs_depth.png (``--curvature``) and
summary.md. ``TransferSet`` reads the studies (their summaries and shared baseline studies)
once, for these figures and for the method x depth table (``search.reports.table``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.axes import Axes
from optuna.trial import TrialState

from search.beyond_accuracy import LABELS, MEASURES, any_measured
from search.reports.common import (
    axes_title,
    chance_line,
    data_line,
    figure_suptitle,
    fmt,
    image_links,
    legend_outside,
    measure_cells,
    measure_headers,
    output_folder,
    plt,
    random_angle_line,
    save,
    trial_counts,
    versions_lines,
    write_text,
)
from catalogue.architectures import Family
from search.scores import axis_label, task_of_dataset
from search.summaries import axis_of, baseline_study_of, summarize_transfer


@dataclass
class TransferSet:
    """Transfer studies read together: each one's summary and shared baseline study."""

    studies: list[optuna.Study]
    summaries: list[dict[str, Any]]
    baselines: list[optuna.Study | None]

    @classmethod
    def load(cls, studies: list[optuna.Study], storage: Any = None) -> TransferSet:
        baselines = [baseline_study_of(s, storage) if storage else None for s in studies]
        summaries = [summarize_transfer(s, baselines=b) for s, b in zip(studies, baselines)]
        return cls(studies, summaries, baselines)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(str(s.user_attrs.get("dataset")) for s in self.studies))

    @property
    def dataset(self) -> str | None:
        """The one dataset every study trained on (None when they differ)."""
        return self.datasets[0] if len(self.datasets) == 1 else None

    @property
    def axis(self) -> Family:
        """The transfer axis the studies' targets share (depth, hidden units)."""
        return axis_of([r["target"] for s in self.summaries for r in s["rows"]])

    @property
    def axis_title(self) -> str:
        """The x axis: the depth families' wording, else the family's own label."""
        axis = self.axis
        return "network depth (layers)" if axis.axis == "depth" else axis.label

    @property
    def score_label(self) -> str:
        """The y axis: the score of the studies' task (top-1 when their datasets differ)."""
        return axis_label(task_of_dataset(self.dataset))

    def context(self) -> list[str]:
        """Title lines: data, epochs and seeds (once when shared, else per rule), then the
        runs of each study and of each shared baseline study."""
        shared = {"dataset": self.datasets}
        for key in ("epochs", "seeds"):
            shared[key] = list(dict.fromkeys(s[key] for s in self.summaries))
        common = {k: v[0] for k, v in shared.items() if len(v) == 1}
        runs = []
        for study, summary in zip(self.studies, self.summaries):
            own = {k: summary.get(k) for k in ("epochs", "seeds") if k not in common}
            if "dataset" not in common:
                own["dataset"] = study.user_attrs.get("dataset")
            extra = f" ({data_line(own)})" if own else ""
            missing = (f", {summary['missing_runs']} of {summary['planned_runs']} planned "
                       "missing" if summary.get("missing_runs") else "")
            runs.append(f"{summary['rule']}{extra}: "
                        f"{trial_counts(study.get_trials(deepcopy=False), 'runs')}{missing}")
        for baseline in dict.fromkeys(b for b in self.baselines if b is not None):
            runs.append(f"backprop in {baseline.study_name}: "
                        f"{trial_counts(baseline.get_trials(deepcopy=False), 'runs')}")
        return [data_line(common), "; ".join(runs)]


def transfer_report(studies: list[optuna.Study], out: Path, storage: Any = None) -> list[str]:
    """accuracy_vs_depth.png, layer_angles.png, curvature_vs_depth.png (with ``--curvature``)
    and summary.md over one or more rules (``storage``: where shared baseline studies are
    found)."""
    output_folder(out)
    group = TransferSet.load(studies, storage)
    written = [save(accuracy_depth_figure(group), out / "accuracy_vs_depth.png"),
               save(layer_angle_figure(group), out / "layer_angles.png")]
    curvature = curvature_depth_figure(group)
    if curvature is not None:
        written.append(save(curvature, out / "curvature_vs_depth.png"))
    written.append(_transfer_markdown(group, written, out / "summary.md"))
    return written


def _depth_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((r for r in summary["rows"] if r["depth"] is not None),
                  key=lambda r: r["depth"])


def accuracy_depth_figure(group: TransferSet) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, 6))
    baseline: dict[int, tuple[float, float]] = {}
    for summary in group.summaries:
        rows = [r for r in _depth_rows(summary) if r["mean"] is not None]
        ax.errorbar([r["depth"] for r in rows], [r["mean"] for r in rows],
                    yerr=[r["std"] for r in rows], marker="o", capsize=3,
                    label=f"{summary['rule']} (transferred from {summary['source_study']})")
        color = ax.get_lines()[-1].get_color() if ax.get_lines() else None
        _seeds_short(ax, rows, summary.get("seeds"), color)
        lost = [r["depth"] for r in _depth_rows(summary)
                if r["mean"] is None and r["diverged_fraction"]]
        if lost:  # every seed diverged: mark it along the bottom axis
            ax.scatter(lost, [0.03] * len(lost), marker="x", s=80, color=color,
                       transform=ax.get_xaxis_transform(), clip_on=False,
                       label=f"{summary['rule']}: every seed diverged")
        retuned = [r for r in rows if r["retuned"] is not None]
        if retuned:
            ax.scatter([r["depth"] for r in retuned], [r["retuned"] for r in retuned],
                       marker="*", s=90, label=f"{summary['rule']} re-tuned on the target")
        for r in _depth_rows(summary):
            if r["backprop_mean"] is not None:
                baseline.setdefault(r["depth"], (r["backprop_mean"], r["backprop_std"]))
    if baseline:
        depths = sorted(baseline)
        ax.errorbar(depths, [baseline[d][0] for d in depths],
                    yerr=[baseline[d][1] for d in depths], color="black", linestyle="--",
                    marker="s", capsize=3, label="backprop")
    chance_line(ax, group.dataset)
    depths = sorted({r["depth"] for s in group.summaries for r in _depth_rows(s)})
    if depths:
        ax.set_xticks(depths)
    ax.set_xlabel(group.axis_title)
    ax.set_ylabel(f"{group.score_label}, mean ± std over seeds")
    axes_title(ax, f"accuracy vs. {group.axis.axis}: transferred settings and backprop",
               *group.context())
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=1,
              frameon=False)  # below the axes: never over the data
    return fig


def _seeds_short(ax: Axes, rows: list[dict[str, Any]], seeds: int | None,
                 color: Any) -> None:
    """A mean over fewer seeds than the study ran (the others diverged) says how many."""
    for r in rows:
        if seeds and r.get("completed") is not None and r["completed"] < seeds:
            ax.annotate(f"{r['completed']}/{seeds} seeds", (r["depth"], r["mean"]),
                        textcoords="offset points", xytext=(-4, -14), ha="right", fontsize=7,
                        color=color)


def layer_angle_figure(group: TransferSet) -> plt.Figure:
    """Weight angle per layer (layer position 0 = input, 1 = output), one line per target,
    against the 90° a random B gives."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for study in group.studies:
        by_target: dict[str, list[list[float]]] = {}
        for t in study.get_trials(deepcopy=False):
            layers = t.user_attrs.get("diagnostics_per_layer")
            if t.state != TrialState.COMPLETE or t.user_attrs.get("role") != "transferred" \
                    or not layers:
                continue
            by_target.setdefault(t.user_attrs["target_arch"], []).append(
                [v["weight_angle"] for v in layers.values()])
        for target, runs in sorted(by_target.items(), key=lambda kv: len(kv[1][0])):
            n = len(runs[0])
            mean = [sum(r[i] for r in runs) / len(runs) for i in range(n)]
            xs = [i / max(1, n - 1) for i in range(n)]
            ax.plot(xs, mean, marker=".", label=f"{study.user_attrs.get('rule')} {target} "
                                                f"({len(runs)} completed runs)")
    random_angle_line(ax)
    ax.set_xlabel("relative layer position (0 = first layer, 1 = classifier)")
    ax.set_ylabel("weight angle ∠(W, B) (°), mean over runs")
    axes_title(ax, "per-layer weight angle at the end of training, by depth", *group.context())
    ax.set_ylim(0, 95)
    legend_outside(ax)
    return fig


def curvature_depth_figure(group: TransferSet) -> plt.Figure | None:
    """Top Hessian eigenvalue and generalisation gap against depth, per rule and for backprop
    (mean ± std over the seeds that measured them). None when no run used ``--curvature``."""
    summaries = group.summaries
    if not any(any_measured(s["rows"], ("", "backprop_")) for s in summaries):
        return None
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5.5 * len(MEASURES), 4.8),
                             layout="constrained")
    for ax, key in zip(axes, MEASURES):
        baseline: dict[int, tuple[float, float]] = {}
        for summary in summaries:
            rows = [r for r in _depth_rows(summary) if r.get(key) is not None]
            if rows:
                ax.errorbar([r["depth"] for r in rows], [r[key] for r in rows],
                            yerr=[r[f"{key}_std"] for r in rows], marker="o", capsize=3,
                            label=summary["rule"])
            for r in _depth_rows(summary):
                if r.get(f"backprop_{key}") is not None:
                    baseline.setdefault(r["depth"], (r[f"backprop_{key}"],
                                                     r[f"backprop_{key}_std"]))
        if baseline:
            depths = sorted(baseline)
            ax.errorbar(depths, [baseline[d][0] for d in depths],
                        yerr=[baseline[d][1] for d in depths], color="black", linestyle="--",
                        marker="s", capsize=3, label="backprop")
        if key.startswith("top_eigenvalue"):
            ax.set_yscale("log")
        ax.set_xticks(sorted({r["depth"] for s in summaries for r in _depth_rows(s)}))
        ax.set_xlabel(group.axis_title)
        ax.set_ylabel(f"{LABELS[key]}\nmean ± std over seeds")
        ax.legend(fontsize=8)
    figure_suptitle(fig, "loss curvature and generalisation at the end of training, by "
                    "depth", *group.context())
    return fig


def _transfer_markdown(group: TransferSet, images: list[str], path: Path) -> str:
    axis = group.axis.axis
    label = task_of_dataset(group.dataset).score_label
    lines = [f"# Transfer across {'depths' if axis == 'depth' else axis}", ""]
    for study, s in zip(group.studies, group.summaries):
        measured = any_measured(s["rows"], ("", "backprop_"))
        extra = (f" {measure_headers()} | {measure_headers('backprop ')} |" if measured else "")
        lines += [f"## {s['rule']}: `{s['study']}`", "",
                  f"Best settings of `{s['source_study']}`, {s['seeds']} seeds, {s['epochs']} "
                  "epochs per run.", "",
                  *versions_lines([study]),
                  f"| target | {axis} | {label} (mean ± std) | backprop | gap to backprop | "
                  "diverged | re-tuned |" + extra,
                  "|---|---|---|---|---|---|---|" + "---|" * (2 * len(MEASURES) if measured else 0)]
        for r in s["rows"]:
            cells = (f" {measure_cells(r)} | {measure_cells(r, 'backprop_')} |"
                     if measured else "")
            lines.append(
                f"| {r['target']} | {fmt(r['depth'])} | {fmt(r['mean'])} ± {fmt(r['std'])} "
                f"| {fmt(r['backprop_mean'])} ± {fmt(r['backprop_std'])} | "
                f"{fmt(r['gap_to_backprop'])} | {fmt(r['diverged_fraction'], 2)} | "
                f"{fmt(r['retuned'])} |" + cells)
        lines.append("")
    lines += image_links(images)
    return write_text(path, lines)
