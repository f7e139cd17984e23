"""The report of a robustness study: each rule's accuracy as noise is added to B's updates.

accuracy_vs_noise.png, curvature_by_rule.png (``--curvature``) and summary.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

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
    save,
    trial_counts,
    versions_lines,
    write_text,
)
from search.specs import BACKPROP_NOISE_HELP
from search.summaries import summarize_robustness


def robustness_context(study: optuna.Study, summary: dict[str, Any]) -> list[str]:
    """Title lines: architecture, data, epochs, seeds; then the runs by state."""
    missing = (f", {summary['missing_runs']} of {summary['planned_runs']} planned missing"
               if summary.get("missing_runs") else "")
    return [" · ".join(p for p in (str(summary.get("arch")), data_line(summary)) if p),
            trial_counts(study.get_trials(deepcopy=False), "runs") + missing]


def robustness_report(study: optuna.Study, out: Path) -> list[str]:
    """accuracy_vs_noise.png, curvature_by_rule.png (with ``--curvature``) and summary.md of
    a robustness study."""
    output_folder(out)
    summary = summarize_robustness(study)
    context = robustness_context(study, summary)
    written = [save(noise_figure(summary, context), out / "accuracy_vs_noise.png")]
    measured = any_measured(summary["rows"])
    if measured:
        written.append(save(curvature_rule_figure(summary, context),
                            out / "curvature_by_rule.png"))
    lines = [f"# Robustness to noisy B updates: `{study.study_name}`", "",
             f"{summary['arch']} on {summary['dataset']}, {summary['epochs']} epochs, "
             f"{summary['seeds']} seeds. {BACKPROP_NOISE_HELP}.", "",
             *versions_lines([study]),
             "| rule | noise variance | val top-1 (mean ± std) | worst seed | vs no noise | "
             "diverged |" + (f" {measure_headers()} |" if measured else ""),
             "|---|---|---|---|---|---|" + ("---|" * len(MEASURES) if measured else "")]
    for r in summary["rows"]:
        lines.append(f"| {r['rule']} | {r['noise']:g} | {fmt(r['mean'])} ± {fmt(r['std'])} | "
                     f"{fmt(r['worst'])} | {fmt(r['drop'])} | "
                     f"{fmt(r['diverged_fraction'], 2)} |"
                     + (f" {measure_cells(r)} |" if measured else ""))
    lines += ["", *image_links(written)]
    return written + [write_text(out / "summary.md", lines)]


def noise_figure(summary: dict[str, Any], context: list[str]) -> plt.Figure:
    """Val top-1 per rule against the variance of the noise added to B (0 drawn a decade
    left of the smallest variance), with the chance level."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    noise = sorted({r["noise"] for r in summary["rows"]})
    positive = [v for v in noise if v > 0]
    # 0 has no place on a log axis: draw it one decade left of the smallest variance.
    zero_at = min(positive) / 10 if positive else 1.0
    for rule in dict.fromkeys(r["rule"] for r in summary["rows"]):
        rows = [r for r in summary["rows"] if r["rule"] == rule and r["mean"] is not None]
        xs = [r["noise"] if r["noise"] > 0 else zero_at for r in rows]
        ax.errorbar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o",
                    capsize=3, label=rule, linestyle="--" if rule == "backprop" else "-")
        lost = [r["noise"] if r["noise"] > 0 else zero_at for r in summary["rows"]
                if r["rule"] == rule and r["mean"] is None]
        if lost:
            ax.scatter(lost, [0.03] * len(lost), marker="x", s=70,
                       transform=ax.get_xaxis_transform(), clip_on=False,
                       label=f"{rule}: every seed diverged")
    chance_line(ax, summary.get("dataset"))
    ax.set_xscale("log")
    ax.set_xticks([zero_at, *positive])
    ax.set_xticklabels(["0", *[f"{v:g}" for v in positive]])
    ax.minorticks_off()
    ax.set_xlabel("variance v of the noise added to B after each step (B += lr·ξ, ξ ~ N(0, v))")
    ax.set_ylabel("validation top-1 (fraction), mean ± std over seeds")
    axes_title(ax, "robustness to noisy B updates", *context)
    legend_outside(ax)
    return fig


def curvature_rule_figure(summary: dict[str, Any], context: list[str]) -> plt.Figure:
    """Top Hessian eigenvalue (alone and times ‖W‖²) and generalisation gap per rule, one marker per noise variance
    (mean ± std over the seeds that measured them)."""
    rules = list(dict.fromkeys(r["rule"] for r in summary["rows"]))
    noise = sorted({r["noise"] for r in summary["rows"]})
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5.5 * len(MEASURES), 4.8),
                             layout="constrained")
    width = 0.6 / max(1, len(noise))
    for ax, key in zip(axes, MEASURES):
        for j, v in enumerate(noise):
            rows = [(i, r) for i, rule in enumerate(rules) for r in summary["rows"]
                    if r["rule"] == rule and r["noise"] == v and r.get(key) is not None]
            if rows:
                ax.errorbar([i - 0.3 + width * (j + 0.5) for i, _ in rows],
                            [r[key] for _, r in rows], yerr=[r[f"{key}_std"] for _, r in rows],
                            marker="o", linestyle="none", capsize=3,
                            label=f"update-noise variance {v:g}")
        ax.set_xticks(range(len(rules)))
        ax.set_xticklabels(rules, rotation=30, ha="right", fontsize=8)
        if key.startswith("top_eigenvalue"):
            ax.set_yscale("log")
        ax.set_ylabel(f"{LABELS[key]}\nmean ± std over seeds")
        if len(noise) > 1:
            ax.legend(fontsize=8)
    figure_suptitle(fig, "loss curvature and generalisation by rule", *context)
    return fig
