"""The report of a sweep study: what the search tried and found, one figure per question.

history.png (value per trial, best so far), slices.png (value against every searched
parameter), curves.png (val top-1 per epoch), scatter.png (the two most important
parameters), importance.png, relaxations.png (B's relaxation budget), curvature.png
(``--curvature``), matched_loss.png (gap vs λ_max at matched training loss, ``matched.py``),
architectures.png (a transfer-aware sweep) and summary.md. Every figure
reads the study through one ``SweepView``, so all of them rank parameters alike, share one
y-range rule and mark failed and stopped trials the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import optuna
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search.reports.common import (
    LOW_ROW,
    axes_title,
    chance_level,
    chance_line,
    data_line,
    failed_row,
    figure_suptitle,
    finite,
    fmt,
    image_links,
    legend_outside,
    mark_row,
    output_folder,
    param_text,
    parameter_label,
    parameter_order,
    plt,
    save,
    trial_counts,
    value_limits,
    versions_lines,
    write_text,
)
from catalogue.tasks import Task
from search.records import measures
from search.reports.matched import matched_lines, matched_loss_figure
from search.scores import axis_label, score_of, scores_by_arch, task_of_dataset
from search.storage import ranked_complete, single_direction


@dataclass
class SweepView:
    """A sweep study as its figures read it: the trials by state, what the value means, the
    parameters' order (by importance when known) and the lines that name its data."""

    study: optuna.Study
    trials: list[FrozenTrial]
    importances: dict[str, float] | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    @cached_property
    def maximize(self) -> bool:
        return single_direction(self.study) == optuna.study.StudyDirection.MAXIMIZE

    @cached_property
    def done(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE and finite(t.value)]

    @cached_property
    def failed(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.FAIL]

    @cached_property
    def pruned(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.PRUNED]

    @property
    def dataset(self) -> str | None:
        return self.attrs.get("dataset")

    @property
    def accuracy(self) -> bool:
        """The value is an accuracy on a known dataset (a transfer-aware sweep's ``gap`` is
        a mean minus a spread: no chance level applies)."""
        return chance_level(self.dataset) is not None and \
            self.attrs.get("objective") in (None, "mean", "min")

    @cached_property
    def task(self) -> Task:
        """The dataset's task, whose score the trials maximized."""
        return task_of_dataset(self.dataset)

    @property
    def value_label(self) -> str:
        objective = self.attrs.get("objective")
        if objective:
            return f"{objective} of the best {self.task.score_label} per architecture"
        return f"best {axis_label(self.task)}" if "rule" in self.attrs else "objective value"

    @property
    def context(self) -> list[str]:
        """Two title lines: rule, architecture, data, epochs, seed; then the trial counts."""
        arch = f" on {self.attrs['arch']}" if self.attrs.get("arch") else ""
        what = (f"{self.attrs['rule']}{arch}" if "rule" in self.attrs
                else f"study {self.study.study_name}")
        return [" · ".join(p for p in (what, data_line(self.attrs)) if p),
                trial_counts(self.trials)]

    def stopped_value(self, trial: FrozenTrial) -> float | None:
        """A pruned trial's best reported value before it was stopped."""
        values = [v for v in trial.intermediate_values.values() if finite(v)]
        if not values:
            return None
        return max(values) if self.maximize else min(values)

    @cached_property
    def parameters(self) -> dict[str, BaseDistribution]:
        """Every searched parameter (failed trials' included) and its distribution."""
        dists: dict[str, BaseDistribution] = {}
        for t in self.trials:
            for name, dist in t.distributions.items():
                dists.setdefault(name, dist)
        return dists

    @cached_property
    def ordered(self) -> list[str]:
        """Searched parameters, most important first when importances are known, else in
        the rule's declaration order."""
        names = parameter_order(self.attrs.get("rule"), set(self.parameters))
        if self.importances:
            names.sort(key=lambda n: -self.importances.get(n, -1.0))  # stable: unranked last
        return names


def study_report(study: optuna.Study, out: Path) -> list[str]:
    """history.png, slices.png, curves.png (when trials recorded epochs), scatter.png (two
    parameters or more), importance.png (when computable), relaxations.png and curvature.png
    (when the trials recorded B's plan, ``--curvature``), matched_loss.png (two trials or more
    measured the curvature along training), architectures.png and summary.md."""
    single_direction(study)  # another tool's multi-objective study: one line, before any file
    output_folder(out)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    importances, note = param_importances(study)
    view = SweepView(study, trials, importances)
    figures = {"history.png": history_figure, "slices.png": slice_figure,
               "curves.png": curves_figure, "scatter.png": scatter_figure,
               "importance.png": importance_figure, "relaxations.png": relaxation_figure,
               "curvature.png": curvature_figure, "architectures.png": architectures_figure,
               "matched_loss.png": lambda v: matched_loss_figure(v.trials, v.context)}
    written = []
    for name, draw in figures.items():
        fig = draw(view)
        if fig is not None:
            written.append(save(fig, out / name))
    written.append(_study_markdown(study, trials, written, note, out / "summary.md"))
    return written


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """Optuna's fANOVA importances, computed once so that every figure ranks the parameters
    alike (the forest is random); None and the reason when not computable."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2 or not complete[0].params:
        return None, "parameter importance needs at least two completed trials with parameters"
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (RuntimeError, ValueError) as exc:
        return None, f"parameter importance not computable: {exc}"


def _pruned_marks(ax: Axes, view: SweepView, trials: list[FrozenTrial],
                  x_of: Callable[[FrozenTrial], float], limits: tuple[float, float] | None
                  ) -> None:
    """Pruned trials at the best value they reported, hollow; those outside the completed
    trials' range on a row of their own above the failures."""
    inside, outside = [], []
    for t in trials:
        value = view.stopped_value(t)
        fits = value is not None and (limits is None or limits[0] <= value <= limits[1])
        (inside if fits else outside).append((x_of(t), value))
    if inside:
        ax.scatter([x for x, _ in inside], [v for _, v in inside], s=22, facecolors="none",
                   edgecolors="grey", zorder=2,
                   label=f"stopped early ({len(inside)}), at its best value")
    mark_row(ax, [x for x, _ in outside], LOW_ROW, marker="v", s=24, color="grey",
             label=f"stopped early ({len(outside)}), value outside the range: drawn on a row")


def history_figure(view: SweepView) -> plt.Figure:
    """Value per trial on the completed trials' own range, the best so far as a step line,
    failures on a row of their own at the bottom and pruned trials hollow."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    done = view.done
    limits = value_limits(t.value for t in done)
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], s=18, zorder=2,
                   label=f"completed ({len(done)})")
    _best_so_far(ax, view)
    if limits:
        ax.set_ylim(*limits)
    _pruned_marks(ax, view, view.pruned, lambda t: t.number, limits)
    failed_row(ax, [t.number for t in view.failed])
    if view.accuracy:
        chance_line(ax, view.dataset)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial number")
    ax.set_ylabel(view.value_label)
    axes_title(ax, "search history: value per trial and best so far", *view.context)
    legend_outside(ax)
    return fig


def _best_so_far(ax: Axes, view: SweepView) -> None:
    """The running best over completed trials, as steps, carried to the last trial."""
    better = max if view.maximize else min
    best, xs, ys = None, [], []
    for t in view.done:
        best = t.value if best is None else better(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if not xs:
        return
    last = max(t.number for t in view.trials)
    if last > xs[-1]:
        xs.append(last)
        ys.append(ys[-1])
    ax.step(xs, ys, where="post", color="tab:orange", zorder=1, label="best so far")


def _coordinate(dist: BaseDistribution | None) -> Callable[[Any], float]:
    """Where a parameter's value sits on an axis: a categorical choice at its index."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        return lambda v: float(choices.index(v)) if v in choices else math.nan
    return lambda v: float(v)


def _searched_range(dist: BaseDistribution | None) -> tuple[float, float] | None:
    """The distribution's range with a 4 % margin (in log space for a log one)."""
    if isinstance(dist, CategoricalDistribution):
        return -0.5, len(dist.choices) - 0.5
    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if not (finite(low) and finite(high)) or high <= low:
        return None
    if getattr(dist, "log", False) and low > 0:
        factor = (high / low) ** 0.04
        return low / factor, high * factor
    margin = 0.04 * (high - low)
    return low - margin, high + margin


def _parameter_axis(ax: Axes, which: str, name: str, dist: BaseDistribution | None,
                    rule: str | None) -> None:
    """Scale (log where the space is log), range (the whole searched range, so one sees
    where in it the trials fell), ticks (a categorical one's choices) and label."""
    log = bool(getattr(dist, "log", False))
    categorical = isinstance(dist, CategoricalDistribution)
    if log:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    limits = _searched_range(dist)
    if limits:
        (ax.set_xlim if which == "x" else ax.set_ylim)(*limits)
    if categorical:
        choices = [str(c) for c in dist.choices]
        (ax.set_xticks if which == "x" else ax.set_yticks)(range(len(choices)), choices)
    scale = "log" if log else "categorical" if categorical else "linear"
    label = f"{name} ({parameter_label(rule, name)}, {scale} scale)"
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(label, fontsize=9)


# Slices are drawn here rather than by optuna.visualization.matplotlib.plot_slice: that one
# plots completed trials only (failures cannot be marked), orders its panels alphabetically
# (not by importance), shares no y-range rule with history.png and switches matplotlib's
# global style to ggplot for every later figure. Its log x-axes are kept here: a parameter
# searched on a log scale is drawn on one.
def slice_figure(view: SweepView, columns: int = 3) -> plt.Figure | None:
    """Value against each searched parameter, one panel each, most important first; the
    y-range is the completed trials', failures sit on the bottom row at their value of the
    parameter, points are coloured by trial number (how the search moved)."""
    names = view.ordered
    if not names:
        return None
    cols = min(columns, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols + 1.2, 3.6 * rows + 0.9),
                             sharey=True, squeeze=False, layout="constrained")
    limits = value_limits(t.value for t in view.done)
    norm = Normalize(0, max([t.number for t in view.trials] + [1]))
    for ax, name in zip(axes.flat, names):
        _slice_panel(ax, view, name, limits, norm)
    for ax in axes.flat[len(names):]:
        fig.delaxes(ax)
    shown = [ax for ax in axes.flat[:len(names)]]
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=shown,
                       label="trial number (completed trials)")
    bar.ax.yaxis.get_major_locator().set_params(integer=True)
    handles, labels = shown[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8,
                   frameon=False)
    order = "most important first (fANOVA)" if view.importances else "in declaration order"
    figure_suptitle(fig, f"{view.value_label} against each searched parameter, {order}",
                    *view.context)
    return fig


def _slice_panel(ax: Axes, view: SweepView, name: str, limits: tuple[float, float] | None,
                 norm: Normalize) -> None:
    dist = view.parameters.get(name)
    x_of = _coordinate(dist)
    done = [t for t in view.done if name in t.params]
    ax.scatter([x_of(t.params[name]) for t in done], [t.value for t in done], s=22,
               c=[t.number for t in done], cmap="viridis", norm=norm, zorder=2,
               label=f"completed ({len(done)})")
    if limits:
        ax.set_ylim(*limits)
    _pruned_marks(ax, view, [t for t in view.pruned if name in t.params],
                  lambda t: x_of(t.params[name]), limits)
    failed_row(ax, [x_of(t.params[name]) for t in view.failed if name in t.params])
    if view.accuracy:
        chance_line(ax, view.dataset)
    _parameter_axis(ax, "x", name, dist, view.attrs.get("rule"))
    if view.importances and name in view.importances:
        ax.set_title(f"{name}: importance {view.importances[name]:.2f}", fontsize=9)
    else:
        ax.set_title(name, fontsize=9)
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel(view.value_label, fontsize=9)


def scatter_figure(view: SweepView) -> plt.Figure | None:
    """The two most important parameters (or the first two declared) against each other,
    coloured by value; failed trials marked. None with fewer than two parameters."""
    if len(view.ordered) < 2:
        return None
    x_name, y_name = view.ordered[:2]
    x_of, y_of = _coordinate(view.parameters[x_name]), _coordinate(view.parameters[y_name])
    fig, ax = plt.subplots(figsize=(7, 5.5))
    both = {x_name, y_name}
    done = [t for t in view.done if both <= set(t.params)]
    if done:
        points = ax.scatter([x_of(t.params[x_name]) for t in done],
                            [y_of(t.params[y_name]) for t in done],
                            c=[t.value for t in done], cmap="viridis", s=30, zorder=2)
        fig.colorbar(points, ax=ax, label=view.value_label)
    pruned = [t for t in view.pruned if both <= set(t.params)]
    if pruned:
        ax.scatter([x_of(t.params[x_name]) for t in pruned],
                   [y_of(t.params[y_name]) for t in pruned], s=30, facecolors="none",
                   edgecolors="grey", label=f"stopped early ({len(pruned)})")
    failed = [t for t in view.failed if both <= set(t.params)]
    if failed:
        ax.scatter([x_of(t.params[x_name]) for t in failed],
                   [y_of(t.params[y_name]) for t in failed], marker="x", color="tab:red",
                   label=f"failed / diverged ({len(failed)})")
    rule = view.attrs.get("rule")
    _parameter_axis(ax, "x", x_name, view.parameters[x_name], rule)
    _parameter_axis(ax, "y", y_name, view.parameters[y_name], rule)
    which = ("the two most important parameters" if view.importances
             else "the first two parameters")
    axes_title(ax, f"{which}, coloured by {view.value_label}", *view.context)
    legend_outside(ax, below=True)
    return fig


def importance_figure(view: SweepView) -> plt.Figure | None:
    if not view.importances:
        return None
    fig, ax = plt.subplots(figsize=(7, max(3.5, 1.6 + 0.45 * len(view.importances))))
    names = list(view.importances)[::-1]
    ax.barh(names, [view.importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance (fANOVA, fraction of the variance of {view.value_label})")
    axes_title(ax, "parameter importance", *view.context)
    return fig


def curves_figure(view: SweepView, top: int = 3) -> plt.Figure | None:
    """Val top-1 per epoch of every trial: the best few in colour, the other completed grey,
    stopped ones dotted, failed ones faint red ending in an x. None when no trial recorded
    an epoch."""
    curves = {t.number: trial_curve(t) for t in view.trials}
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    best = [t.number for t in sorted(view.done, key=lambda t: t.value,
                                     reverse=view.maximize)[:top]]
    faint = {"alpha": 0.45, "linewidth": 0.9, "marker": ".", "markersize": 3}  # 1 epoch: a dot
    styles = {TrialState.COMPLETE: {"color": "grey", **faint},
              TrialState.PRUNED: {"color": "grey", "linestyle": ":", **faint},
              TrialState.FAIL: {"color": "tab:red", **faint, "alpha": 0.3}}
    names = {TrialState.COMPLETE: "other completed", TrialState.PRUNED: "stopped early",
             TrialState.FAIL: "failed / diverged (x: last epoch before it)"}
    for state, style in styles.items():
        drawn = [t for t in view.trials if t.state == state and curves[t.number]
                 and t.number not in best]
        for i, t in enumerate(drawn):
            xs, ys = zip(*curves[t.number])
            ax.plot(xs, ys, label=f"{names[state]} ({len(drawn)})" if i == 0 else None,
                    **style)
            if state == TrialState.FAIL:
                ax.scatter(xs[-1:], ys[-1:], marker="x", color="tab:red", alpha=0.6, s=20)
    for number in best:
        trial = next(t for t in view.done if t.number == number)
        if curves[number]:
            xs, ys = zip(*curves[number])
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=2, zorder=3,
                    label=f"trial {number} (value {trial.value:.4g})")
    if "rule" in view.attrs:  # val top-1 whatever the objective: chance applies
        chance_line(ax, view.dataset)
    epochs = sorted({x for points in curves.values() for x, _ in points})
    if len(epochs) <= 12:  # whole epochs, also for a single one (not a 0.96-1.04 axis)
        ax.set_xticks(epochs, [f"{e:g}" for e in epochs])
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(epochs[0] - 0.3, epochs[-1] + 0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(axis_label(view.task) if "rule" in view.attrs else "intermediate value")
    without = [t for t in view.trials if not curves[t.number]]
    note = (f"{len(without)} trials recorded no epoch (failed before their first ended): "
            "no curve" if without else "")
    axes_title(ax, f"learning curves, the best {len(best)} highlighted", *view.context, note)
    legend_outside(ax)
    return fig


def trial_curve(trial: FrozenTrial) -> list[tuple[float, float]]:
    """(epoch, val top-1) per epoch: from the trial's recorded history, else from Optuna's
    intermediate values (another tool's study); only finite values."""
    rows = trial.user_attrs.get("history")
    points = []
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict):
                points.append((row.get("epoch_overall", row.get("epoch")), score_of(row)))
    if not points:
        points = list(trial.intermediate_values.items())
    return sorted((float(x), float(y)) for x, y in points if finite(x) and finite(y))


def architectures_figure(view: SweepView, top: int = 10) -> plt.Figure | None:
    """A transfer-aware sweep's top trials: each one's val top-1 on every architecture, and
    the objective that ranked them (None for a sweep on one architecture)."""
    study = view.study
    archs = study.user_attrs.get("archs") or []
    ranked = [t for t in ranked_complete(study) if scores_by_arch(t.user_attrs)][:top]
    if not archs or not ranked:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(ranked) * len(archs) ** 0.5 + 2), 4.5))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        ax.bar([r + (i - (len(archs) - 1) / 2) * width for r in range(len(ranked))],
               [scores_by_arch(t.user_attrs).get(arch, 0.0) for t in ranked], width,
               label=arch)
    ax.scatter(range(len(ranked)), [t.value for t in ranked], color="black", marker="_",
               s=300, zorder=3, label=f"objective ({study.user_attrs.get('objective')})")
    chance_line(ax, view.dataset)
    ax.set_xticks(range(len(ranked)), [f"#{t.number}" for t in ranked])
    ax.set_xlabel("trial, best first")
    ax.set_ylabel(f"best {view.task.score_label} (diverged: 0)")
    axes_title(ax, "top trials on each architecture", *view.context)
    legend_outside(ax)
    return fig


def relaxation_figure(view: SweepView) -> plt.Figure | None:
    """Val top-1 against the fewest relaxation times any layer's B got (docs/design.md §7);
    B beyond its stability limit, failed and stopped trials marked, and the trials with no
    recorded plan counted in the title. None when no trial recorded a plan."""
    planned = [t for t in view.trials if finite(t.user_attrs.get("relaxations_min"))]
    if not planned:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    floor = 1e-3  # an unstable B has negative relaxations: drawn at the floor

    def unstable(t: FrozenTrial) -> bool:
        return (t.user_attrs.get("stability_ratio_max") or 0) > 1

    def x_of(t: FrozenTrial) -> float:
        return floor if unstable(t) else max(floor, t.user_attrs["relaxations_min"])

    done = [t for t in planned if t.state == TrialState.COMPLETE and finite(t.value)]
    limits = value_limits(t.value for t in done)
    stable = [t for t in done if not unstable(t)]
    if stable:
        points = ax.scatter([x_of(t) for t in stable], [t.value for t in stable], s=24,
                            c=[t.user_attrs.get("stability_ratio_max") or 0 for t in stable],
                            cmap="viridis", vmin=0, vmax=1, zorder=2,
                            label=f"completed ({len(stable)})")
        fig.colorbar(points, ax=ax, label="peak lr_B·λ / stability limit")
    beyond = [t for t in done if unstable(t)]
    if beyond:
        ax.scatter([floor] * len(beyond), [t.value for t in beyond], marker="D", s=26,
                   color="tab:red", label=f"completed, B beyond its stability limit "
                                          f"({len(beyond)}), drawn at the left edge")
    if limits:
        ax.set_ylim(*limits)
    _pruned_marks(ax, view, [t for t in planned if t.state == TrialState.PRUNED], x_of, limits)
    failed = [t for t in planned if t.state == TrialState.FAIL]
    failed_row(ax, [x_of(t) for t in failed],
               ["tab:red" if unstable(t) else "black" for t in failed])
    ax.axvline(3.0, color="black", linestyle=":", label="3 relaxation times")
    if view.accuracy:
        chance_line(ax, view.dataset)
    ax.set_xscale("log")
    ax.set_xlabel("relaxation times of the slowest layer's B (log scale)")
    ax.set_ylabel(view.value_label)
    numbers = {t.number for t in planned}
    axes_title(ax, "accuracy vs B's relaxation budget", *view.context,
               _unplanned_note([t for t in view.trials if t.number not in numbers]))
    legend_outside(ax, below=True)
    return fig


def _unplanned_note(trials: list[FrozenTrial]) -> str:
    """Why trials are missing from relaxations.png: B's plan is recorded with an epoch's
    results, so a trial that ended before its first epoch has none."""
    if not trials:
        return ""
    return (f"not shown: {len(trials)} trials with no recorded plan for B "
            f"({trial_counts(trials).split(': ', 1)[1]}; a run that ends before its first "
            "epoch records none)")


def curvature_figure(view: SweepView) -> plt.Figure | None:
    """Val top-1 against the true loss's top Hessian eigenvalue at the end of each trial
    (``--curvature``), coloured by its generalisation gap. None when no trial measured it."""
    measured = [t for t in view.done if finite(t.user_attrs.get("top_eigenvalue"))
                and t.user_attrs["top_eigenvalue"] > 0]
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    points = ax.scatter([t.user_attrs["top_eigenvalue"] for t in measured],
                        [t.value for t in measured], s=28, cmap="viridis",
                        c=[t.user_attrs.get("generalization_gap") or 0.0 for t in measured])
    fig.colorbar(points, ax=ax, label="generalisation gap (train − val top-1, eval mode)")
    ax.set_ylim(*value_limits((t.value for t in measured), below=0.08))
    if view.accuracy:
        chance_line(ax, view.dataset)
    ax.set_xscale("log")
    ax.set_xlabel("top eigenvalue of the true loss's Hessian at the end (log scale)")
    ax.set_ylabel(view.value_label)
    unmeasured = len(view.trials) - len(measured)
    axes_title(ax, "accuracy vs loss curvature", *view.context,
               f"not shown: {unmeasured} trials that measured none (failed, stopped or not "
               "--curvature)" if unmeasured else "")
    legend_outside(ax, below=True)
    return fig


def _study_markdown(study: optuna.Study, trials: list, images: list[str], note: str,
                    path: Path) -> str:
    attrs = study.user_attrs
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    done = ranked_complete(study)
    names = parameter_order(attrs.get("rule"), {n for t in trials for n in t.params})
    lines = [f"# Study `{study.study_name}`", "",
             f"rule **{attrs.get('rule')}**, architecture **{attrs.get('arch')}**, dataset "
             f"**{attrs.get('dataset')}**, {attrs.get('epochs')} epochs per trial.", "",
             f"Trials: {len(trials)} (complete {counts['COMPLETE']}, failed {counts['FAIL']}, "
             f"pruned {counts['PRUNED']}).", "",
             *(versions_lines([study]) or ["Versions not recorded (another tool's study, or "
                                           "one from before creditsweep kept them).", ""])]
    archs = attrs.get("archs") or []
    label = task_of_dataset(attrs.get("dataset")).score_label
    if archs:
        lines += [f"Each trial trained its setting on {', '.join(archs)}; its value is the "
                  f"**{attrs.get('objective')}** of their best {label} (a diverged "
                  "architecture counts 0).", ""]
    value = attrs.get("objective") or label
    lines += [f"| rank | trial | {value} | " + "".join(f"{a} | " for a in archs)
              + " | ".join(names) + " |", "|---|---|---|" + "---|" * (len(archs) + len(names))]
    for rank, t in enumerate(done[:10], 1):
        by_arch = scores_by_arch(t.user_attrs)
        lines.append(f"| {rank} | {t.number} | {t.value:.4f} | "
                     + "".join(f"{fmt(by_arch.get(a))} | " for a in archs)
                     + " | ".join(param_text(t.params.get(n)) for n in names) + " |")
    lines.append("")
    lines += _measure_lines(done[0] if done else None)
    lines += matched_lines(trials, names)
    if note:
        lines += [f"_{note}_", ""]
    lines += image_links(images)
    return write_text(path, lines)


def _measure_lines(best: FrozenTrial | None) -> list[str]:
    """What the best trial measured, one row per registered measure it holds."""
    if best is None:
        return []
    rows = [(m.label, m.of_trial(best.user_attrs)) for m in measures()]
    rows = [(label, value) for label, value in rows if value is not None]
    if not rows:
        return []
    return [f"The best trial ({best.number}) measured:", "", "| measure | value |", "|---|---|",
            *(f"| {label} | {value if isinstance(value, str) else f'{value:.4g}'} |"
              for label, value in rows), ""]
