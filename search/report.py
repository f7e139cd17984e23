"""PNG plots and Markdown of a sweep study, of one or more transfer studies (figures, or a
method x depth table) and of a robustness study.

Every figure names what it was drawn from: the dataset, epochs, seeds and how many trials
completed, failed or stopped (its title; the PNG's "Title" text carries the same words). An
accuracy axis has the dataset's chance level on it, an angle axis the 90 degrees a random B
gives. Failed trials are never dropped without a word: they are marked, or the figure says
how many it leaves out and why.

Every file is written to a temporary file in the output folder and renamed into place, so a
report never writes through a symbolic link planted in the folder (the rename replaces the
link itself) and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import matplotlib

matplotlib.use("Agg")  # headless: reports are files
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from optuna.distributions import BaseDistribution, CategoricalDistribution  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from catalogue.errors import UsageError  # noqa: E402
from catalogue.rule import RULES  # noqa: E402
from catalogue.training import describe_option, tunable_options  # noqa: E402
from search.beyond_accuracy import LABELS, MEASURES, any_measured  # noqa: E402
from search.storage import ranked_complete, single_direction  # noqa: E402
from search.transfer import DEFAULTS_SOURCE, baseline_study_of, depth_of, summarize  # noqa: E402

# Chance level (1 / number of classes) of the datasets creditsweep trains on: the floor an
# accuracy axis is read against.
CHANCE = {"digits": 0.1, "mnist": 0.1, "fashion_mnist": 0.1, "cifar10": 0.1,
          "imagenet": 0.001}
RANDOM_B_ANGLE = 90.0  # degrees: a random B is almost orthogonal to W in high dimension
FAILED_ROW, LOW_ROW = 0.035, 0.10  # axes fractions: rows for marks that have no value

def parameter_label(rule: str | None, name: str) -> str:
    """What a tuned parameter means, from the catalogue: 'weight of decay', 'peak learning
    rate of W'; a parameter neither the rule nor the trainer knows is just 'parameter'."""
    try:
        if rule in RULES and name in RULES.get(rule).defaults:
            return RULES.get(rule).describe_parameter(name)
        return describe_option(name)
    except UsageError:
        return "parameter"


def parameter_order(rule: str | None, names: set[str]) -> list[str]:
    """The rule's metaparameters in declaration order, then training options, then others."""
    declared = list(RULES.get(rule).metaparameters) if rule in RULES else []
    order = declared + list(tunable_options())
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def output_folder(out: Path) -> Path:
    """The folder a report writes into, made if missing (``check_output_folder`` first)."""
    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out {out}: a part of the path is a file, not a folder") from None
    except PermissionError:
        raise UsageError(f"--out {out}: no permission to make that folder") from None
    return out


def check_output_folder(out: Path) -> None:
    """Refuse, before anything is read or written, an --out that is a file or a symbolic
    link (a link planted where the user expects a folder sends the report elsewhere)."""
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link (to {os.readlink(out)}): name the "
                         "folder itself")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: name a folder (it is made if "
                         "missing)")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """Write a new file beside ``path`` and rename it over ``path``: ``os.replace`` replaces
    a symbolic link itself, never its target. Returns the file's name."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide a report from others
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(exc, IsADirectoryError):
            raise UsageError(f"cannot write {path}: a folder of that name is in the "
                             "way") from None
        raise
    return path.name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_text(path: Path, lines: list[str]) -> str:
    return write_atomic(path, lambda fh: fh.write(("\n".join(lines) + "\n").encode()))


def _save(fig: plt.Figure, path: Path) -> str:
    """Write ``fig`` as a PNG whose "Title" text is the figure's title (what a test or an
    image viewer reads without looking at the pixels)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    metadata = {"Title": figure_title(fig), "Software": "creditsweep report"}
    try:  # bbox_inches: a legend outside the axes stays whole
        return write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=120,
                                                         bbox_inches="tight",
                                                         metadata=metadata))
    finally:
        plt.close(fig)


def figure_title(fig: plt.Figure) -> str:
    """The figure's title: its suptitle, else its first axes' title."""
    if fig.get_suptitle():
        return fig.get_suptitle()
    return next((ax.get_title() for ax in fig.axes if ax.get_title()), "")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# --- what every figure says --------------------------------------------------------------------

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def chance_level(dataset: str | None) -> float | None:
    """1 / number of classes of a dataset creditsweep knows; None for any other."""
    return CHANCE.get(dataset) if isinstance(dataset, str) else None


def trial_counts(trials: Iterable[FrozenTrial], noun: str = "trials") -> str:
    """'12 trials: 8 complete, 2 failed, 2 pruned' (a state no trial is in is left out)."""
    trials = list(trials)
    counts = [(sum(t.state == state for t in trials), word)
              for state, word in ((TrialState.COMPLETE, "complete"), (TrialState.FAIL, "failed"),
                                  (TrialState.PRUNED, "pruned"), (TrialState.RUNNING, "running"),
                                  (TrialState.WAITING, "waiting"))]
    shown = ", ".join(f"{n} {word}" for n, word in counts if n)
    total = f"{len(trials)} {noun[:-1] if len(trials) == 1 else noun}"
    return f"{total}: {shown}" if shown else total


def _plural(n: Any, word: str) -> str | None:
    return None if n is None else f"{n} {word}{'' if n == 1 else 's'}"


def _seeds_text(attrs: dict[str, Any]) -> str | None:
    """A study's seeds: several per setting ('3 seeds'), or a sweep's one seed ('seed 0')."""
    if attrs.get("seeds") is not None:
        return _plural(attrs["seeds"], "seed")
    if attrs.get("seed") is not None:
        return f"seed {attrs['seed']}"
    return None


def data_line(attrs: dict[str, Any]) -> str:
    """'digits · 4 epochs · seed 0' from a study's attributes (what another tool's study
    lacks is left out)."""
    parts = [attrs.get("dataset"),
             _plural(attrs.get("epochs"), "epoch"),
             _seeds_text(attrs)]
    return " · ".join(str(p) for p in parts if p)


def _title(ax: Axes, what: str, *context: str) -> None:
    """A title that says what is plotted, then from what (data, epochs, seeds, counts)."""
    ax.set_title("\n".join([what, *[c for c in context if c]]), fontsize=10)


def _suptitle(fig: plt.Figure, what: str, *context: str) -> None:
    fig.suptitle("\n".join([what, *[c for c in context if c]]), fontsize=11)


def value_limits(values: Iterable[float], below: float = 0.2, above: float = 0.08
                 ) -> tuple[float, float] | None:
    """y-limits fitted to the completed trials' values, with a band of ``below`` x their span
    under them for the row of failed trials (which have no value: drawing them at 0 squeezed
    the real values into a sliver). None without a finite value."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    span = hi - lo or max(abs(hi) * 0.05, 0.01)
    return lo - below * span, hi + above * span


def _row(ax: Axes, xs: list[float], row: float, **style: Any) -> None:
    """Marks at data ``xs`` on a fixed height of the axes (``row``, a fraction of it): for
    trials that have no value to stand at."""
    if xs:
        ax.scatter(xs, [row] * len(xs), transform=ax.get_xaxis_transform(), clip_on=False,
                   zorder=3, **style)
        # Marks off the data transform do not widen the x-range by themselves.
        ax.update_datalim([(x, 0.0) for x in xs if _finite(x)], updatey=False)
        ax.autoscale_view(scaley=False)


def _failed_row(ax: Axes, xs: list[float], colors: list[str] | None = None) -> None:
    _row(ax, xs, FAILED_ROW, marker="x", s=36, color=colors or "tab:red",
         label=f"failed / diverged ({len(xs)}), no value: drawn on the bottom row")


def _chance_line(ax: Axes, dataset: str | None) -> None:
    """The dataset's chance level; with fixed y-limits that leave it out, the legend says
    so rather than the axis stretching to it."""
    chance = chance_level(dataset)
    if chance is None:
        return
    lo, hi = ax.get_ylim()
    label = f"chance (1/{round(1 / chance)} classes = {chance:g})"
    if not ax.get_autoscaley_on() and not lo <= chance <= hi:
        label += ": outside the range shown"
    ax.axhline(chance, color="dimgrey", linestyle=":", linewidth=1.2, label=label)


def _random_angle_line(ax: Axes) -> None:
    ax.axhline(RANDOM_B_ANGLE, color="dimgrey", linestyle=":", linewidth=1.2,
               label="90°: a random B (no alignment)")


def _legend_outside(ax: Axes, below: bool = False) -> None:
    """The legend beside the axes (below them where a colour bar takes the side): never
    over the data."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, fontsize=8,
                  frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


# --- sweep study -------------------------------------------------------------------------------

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
        return [t for t in self.trials if t.state == TrialState.COMPLETE and _finite(t.value)]

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

    @property
    def value_label(self) -> str:
        objective = self.attrs.get("objective")
        if objective:
            return f"{objective} of the best val top-1 per architecture"
        return "best validation top-1 (fraction)" if "rule" in self.attrs else "objective value"

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
        values = [v for v in trial.intermediate_values.values() if _finite(v)]
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
    (when the trials recorded B's plan, ``--curvature``), architectures.png and summary.md."""
    single_direction(study)  # another tool's multi-objective study: one line, before any file
    output_folder(out)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    importances, note = param_importances(study)
    view = SweepView(study, trials, importances)
    figures = {"history.png": history_figure, "slices.png": slice_figure,
               "curves.png": curves_figure, "scatter.png": scatter_figure,
               "importance.png": importance_figure, "relaxations.png": relaxation_figure,
               "curvature.png": curvature_figure, "architectures.png": architectures_figure}
    written = []
    for name, draw in figures.items():
        fig = draw(view)
        if fig is not None:
            written.append(_save(fig, out / name))
    written.append(_study_markdown(study, trials, written, note, out / "summary.md"))
    return written


def _param_text(value: Any) -> str:
    """A parameter for a table: numbers to 3 significant digits, a categorical choice as is."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


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
    _row(ax, [x for x, _ in outside], LOW_ROW, marker="v", s=24, color="grey",
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
    _failed_row(ax, [t.number for t in view.failed])
    if view.accuracy:
        _chance_line(ax, view.dataset)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial number")
    ax.set_ylabel(view.value_label)
    _title(ax, "search history: value per trial and best so far", *view.context)
    _legend_outside(ax)
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
    if not (_finite(low) and _finite(high)) or high <= low:
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
    _suptitle(fig, f"{view.value_label} against each searched parameter, {order}",
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
    _failed_row(ax, [x_of(t.params[name]) for t in view.failed if name in t.params])
    if view.accuracy:
        _chance_line(ax, view.dataset)
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
    _title(ax, f"{which}, coloured by {view.value_label}", *view.context)
    _legend_outside(ax, below=True)
    return fig


def importance_figure(view: SweepView) -> plt.Figure | None:
    if not view.importances:
        return None
    fig, ax = plt.subplots(figsize=(7, max(3.5, 1.6 + 0.45 * len(view.importances))))
    names = list(view.importances)[::-1]
    ax.barh(names, [view.importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance (fANOVA, fraction of the variance of {view.value_label})")
    _title(ax, "parameter importance", *view.context)
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
        _chance_line(ax, view.dataset)
    epochs = sorted({x for points in curves.values() for x, _ in points})
    if len(epochs) <= 12:  # whole epochs, also for a single one (not a 0.96-1.04 axis)
        ax.set_xticks(epochs, [f"{e:g}" for e in epochs])
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(epochs[0] - 0.3, epochs[-1] + 0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (fraction)" if "rule" in view.attrs
                  else "intermediate value")
    without = [t for t in view.trials if not curves[t.number]]
    note = (f"{len(without)} trials recorded no epoch (failed before their first ended): "
            "no curve" if without else "")
    _title(ax, f"learning curves, the best {len(best)} highlighted", *view.context, note)
    _legend_outside(ax)
    return fig


def trial_curve(trial: FrozenTrial) -> list[tuple[float, float]]:
    """(epoch, val top-1) per epoch: from the trial's recorded history, else from Optuna's
    intermediate values (another tool's study); only finite values."""
    rows = trial.user_attrs.get("history")
    points = []
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict):
                points.append((row.get("epoch_overall", row.get("epoch")), row.get("val_top1")))
    if not points:
        points = list(trial.intermediate_values.items())
    return sorted((float(x), float(y)) for x, y in points if _finite(x) and _finite(y))


def architectures_figure(view: SweepView, top: int = 10) -> plt.Figure | None:
    """A transfer-aware sweep's top trials: each one's val top-1 on every architecture, and
    the objective that ranked them (None for a sweep on one architecture)."""
    study = view.study
    archs = study.user_attrs.get("archs") or []
    ranked = [t for t in ranked_complete(study) if t.user_attrs.get("val_top1_by_arch")][:top]
    if not archs or not ranked:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(ranked) * len(archs) ** 0.5 + 2), 4.5))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        ax.bar([r + (i - (len(archs) - 1) / 2) * width for r in range(len(ranked))],
               [t.user_attrs["val_top1_by_arch"].get(arch, 0.0) for t in ranked], width,
               label=arch)
    ax.scatter(range(len(ranked)), [t.value for t in ranked], color="black", marker="_",
               s=300, zorder=3, label=f"objective ({study.user_attrs.get('objective')})")
    _chance_line(ax, view.dataset)
    ax.set_xticks(range(len(ranked)), [f"#{t.number}" for t in ranked])
    ax.set_xlabel("trial, best first")
    ax.set_ylabel("best val top-1 (diverged: 0)")
    _title(ax, "top trials on each architecture", *view.context)
    _legend_outside(ax)
    return fig


def relaxation_figure(view: SweepView) -> plt.Figure | None:
    """Val top-1 against the fewest relaxation times any layer's B got (docs/design.md §7);
    B beyond its stability limit, failed and stopped trials marked, and the trials with no
    recorded plan counted in the title. None when no trial recorded a plan."""
    planned = [t for t in view.trials if _finite(t.user_attrs.get("relaxations_min"))]
    if not planned:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    floor = 1e-3  # an unstable B has negative relaxations: drawn at the floor

    def unstable(t: FrozenTrial) -> bool:
        return (t.user_attrs.get("stability_ratio_max") or 0) > 1

    def x_of(t: FrozenTrial) -> float:
        return floor if unstable(t) else max(floor, t.user_attrs["relaxations_min"])

    done = [t for t in planned if t.state == TrialState.COMPLETE and _finite(t.value)]
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
    _failed_row(ax, [x_of(t) for t in failed],
                ["tab:red" if unstable(t) else "black" for t in failed])
    ax.axvline(3.0, color="black", linestyle=":", label="3 relaxation times")
    if view.accuracy:
        _chance_line(ax, view.dataset)
    ax.set_xscale("log")
    ax.set_xlabel("relaxation times of the slowest layer's B (log scale)")
    ax.set_ylabel(view.value_label)
    numbers = {t.number for t in planned}
    _title(ax, "accuracy vs B's relaxation budget", *view.context,
           _unplanned_note([t for t in view.trials if t.number not in numbers]))
    _legend_outside(ax, below=True)
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
    measured = [t for t in view.done if _finite(t.user_attrs.get("top_eigenvalue"))
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
        _chance_line(ax, view.dataset)
    ax.set_xscale("log")
    ax.set_xlabel("top eigenvalue of the true loss's Hessian at the end (log scale)")
    ax.set_ylabel(view.value_label)
    unmeasured = len(view.trials) - len(measured)
    _title(ax, "accuracy vs loss curvature", *view.context,
           f"not shown: {unmeasured} trials that measured none (failed, stopped or not "
           "--curvature)" if unmeasured else "")
    _legend_outside(ax, below=True)
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
             f"pruned {counts['PRUNED']}).", ""]
    archs = attrs.get("archs") or []
    if archs:
        lines += [f"Each trial trained its setting on {', '.join(archs)}; its value is the "
                  f"**{attrs.get('objective')}** of their best val top-1 (a diverged "
                  "architecture counts 0).", ""]
    value = attrs.get("objective") or "val top-1"
    lines += [f"| rank | trial | {value} | " + "".join(f"{a} | " for a in archs)
              + " | ".join(names) + " |", "|---|---|---|" + "---|" * (len(archs) + len(names))]
    for rank, t in enumerate(done[:10], 1):
        by_arch = t.user_attrs.get("val_top1_by_arch") or {}
        lines.append(f"| {rank} | {t.number} | {t.value:.4f} | "
                     + "".join(f"{_fmt(by_arch.get(a))} | " for a in archs)
                     + " | ".join(_param_text(t.params.get(n)) for n in names) + " |")
    lines.append("")
    if note:
        lines += [f"_{note}_", ""]
    lines += [f"![{Path(img).stem}]({img})" for img in images]
    return _write_text(path, lines)


# --- transfer studies --------------------------------------------------------------------------

@dataclass
class TransferSet:
    """Transfer studies read together: each one's summary and shared baseline study."""

    studies: list[optuna.Study]
    summaries: list[dict[str, Any]]
    baselines: list[optuna.Study | None]

    @classmethod
    def load(cls, studies: list[optuna.Study], storage: Any = None) -> TransferSet:
        baselines = [baseline_study_of(s, storage) if storage else None for s in studies]
        return cls(studies, [summarize(s, baselines=b) for s, b in zip(studies, baselines)],
                   baselines)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(str(s.user_attrs.get("dataset")) for s in self.studies))

    @property
    def dataset(self) -> str | None:
        """The one dataset every study trained on (None when they differ)."""
        return self.datasets[0] if len(self.datasets) == 1 else None

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
    written = [_save(accuracy_depth_figure(group), out / "accuracy_vs_depth.png"),
               _save(layer_angle_figure(group), out / "layer_angles.png")]
    curvature = curvature_depth_figure(group)
    if curvature is not None:
        written.append(_save(curvature, out / "curvature_vs_depth.png"))
    written.append(_transfer_markdown(group.summaries, written, out / "summary.md"))
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
    _chance_line(ax, group.dataset)
    depths = sorted({r["depth"] for s in group.summaries for r in _depth_rows(s)})
    if depths:
        ax.set_xticks(depths)
    ax.set_xlabel("network depth (layers)")
    ax.set_ylabel("validation top-1 (fraction), mean ± std over seeds")
    _title(ax, "accuracy vs. depth: transferred settings and backprop", *group.context())
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
    _random_angle_line(ax)
    ax.set_xlabel("relative layer position (0 = first layer, 1 = classifier)")
    ax.set_ylabel("weight angle ∠(W, B) (°), mean over runs")
    _title(ax, "per-layer weight angle at the end of training, by depth", *group.context())
    ax.set_ylim(0, 95)
    _legend_outside(ax)
    return fig


def curvature_depth_figure(group: TransferSet) -> plt.Figure | None:
    """Top Hessian eigenvalue and generalisation gap against depth, per rule and for backprop
    (mean ± std over the seeds that measured them). None when no run used ``--curvature``."""
    summaries = group.summaries
    if not any(any_measured(s["rows"], ("", "backprop_")) for s in summaries):
        return None
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 4.8), layout="constrained")
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
        if key == "top_eigenvalue":
            ax.set_yscale("log")
        ax.set_xticks(sorted({r["depth"] for s in summaries for r in _depth_rows(s)}))
        ax.set_xlabel("network depth (layers)")
        ax.set_ylabel(f"{LABELS[key]}\nmean ± std over seeds")
        ax.legend(fontsize=8)
    _suptitle(fig, "loss curvature and generalisation at the end of training, by depth",
              *group.context())
    return fig


def _measure_cells(row: dict[str, Any], prefix: str = "") -> str:
    return " | ".join(f"{_sig(row.get(f'{prefix}{key}'))} ± {_sig(row.get(f'{prefix}{key}_std'))}"
                      for key in MEASURES)


def _sig(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _transfer_markdown(summaries: list[dict[str, Any]], images: list[str], path: Path) -> str:
    lines = ["# Transfer across depths", ""]
    for s in summaries:
        measured = any_measured(s["rows"], ("", "backprop_"))
        extra = (" λ_max | gen. gap | backprop λ_max | backprop gen. gap |" if measured else "")
        lines += [f"## {s['rule']}: `{s['study']}`", "",
                  f"Best settings of `{s['source_study']}`, {s['seeds']} seeds, {s['epochs']} "
                  "epochs per run.", "",
                  "| target | depth | val top-1 (mean ± std) | backprop | gap to backprop | "
                  "diverged | re-tuned |" + extra,
                  "|---|---|---|---|---|---|---|" + "---|" * (4 if measured else 0)]
        for r in s["rows"]:
            cells = (f" {_measure_cells(r)} | {_measure_cells(r, 'backprop_')} |"
                     if measured else "")
            lines.append(
                f"| {r['target']} | {_fmt(r['depth'])} | {_fmt(r['mean'])} ± {_fmt(r['std'])} "
                f"| {_fmt(r['backprop_mean'])} ± {_fmt(r['backprop_std'])} | "
                f"{_fmt(r['gap_to_backprop'])} | {_fmt(r['diverged_fraction'], 2)} | "
                f"{_fmt(r['retuned'])} |" + cells)
        lines.append("")
    lines += [f"![{Path(img).stem}]({img})" for img in images]
    return _write_text(path, lines)


# --- method x depth table ----------------------------------------------------------------------

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
    """Columns (targets, ordered by depth, per dataset) and rows (backprop first, then each
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
    return [_write_text(out / "table.md", _table_markdown(group, labels, columns, rows)),
            write_atomic(out / "table.csv", lambda fh: fh.write(
                _table_csv(labels, columns, rows).encode()))]


def _table_markdown(group: TransferSet, labels: list[str], columns: list[Column],
                    rows: list[tuple[str, dict[Column, TableCell]]]) -> list[str]:
    context = group.context()
    lines = ["# Validation top-1 % by rule and depth", "",
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
                     f"{_plural(summary['seeds'], 'seed')}, "
                     f"{_plural(summary['epochs'], 'epoch')} on "
                     f"{study.user_attrs.get('dataset')}; "
                     f"{trial_counts(study.get_trials(deepcopy=False), 'runs')}"
                     + (f"; PARTIAL: {summary['missing_runs']} of {summary['planned_runs']} "
                        "planned runs missing" if summary.get("missing_runs") else ""))
    lines += ["", "`--select best` reports, per target, the setting with the best mean there "
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


# --- robustness studies ------------------------------------------------------------------------

def robustness_context(study: optuna.Study, summary: dict[str, Any]) -> list[str]:
    """Title lines: architecture, data, epochs, seeds; then the runs by state."""
    missing = (f", {summary['missing_runs']} of {summary['planned_runs']} planned missing"
               if summary.get("missing_runs") else "")
    return [" · ".join(p for p in (str(summary.get("arch")), data_line(summary)) if p),
            trial_counts(study.get_trials(deepcopy=False), "runs") + missing]


def robustness_report(study: optuna.Study, out: Path) -> list[str]:
    """accuracy_vs_noise.png, curvature_by_rule.png (with ``--curvature``) and summary.md of
    a robustness study."""
    from search.specs import BACKPROP_NOISE_HELP
    from search.robustness import summarize as summarize_robustness

    output_folder(out)
    summary = summarize_robustness(study)
    context = robustness_context(study, summary)
    written = [_save(noise_figure(summary, context), out / "accuracy_vs_noise.png")]
    measured = any_measured(summary["rows"])
    if measured:
        written.append(_save(curvature_rule_figure(summary, context),
                             out / "curvature_by_rule.png"))
    lines = [f"# Robustness to noisy B updates: `{study.study_name}`", "",
             f"{summary['arch']} on {summary['dataset']}, {summary['epochs']} epochs, "
             f"{summary['seeds']} seeds. {BACKPROP_NOISE_HELP}.", "",
             "| rule | noise variance | val top-1 (mean ± std) | worst seed | vs no noise | "
             "diverged |" + (" λ_max | gen. gap |" if measured else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if measured else "")]
    for r in summary["rows"]:
        lines.append(f"| {r['rule']} | {r['noise']:g} | {_fmt(r['mean'])} ± {_fmt(r['std'])} | "
                     f"{_fmt(r['worst'])} | {_fmt(r['drop'])} | "
                     f"{_fmt(r['diverged_fraction'], 2)} |"
                     + (f" {_measure_cells(r)} |" if measured else ""))
    lines += [""] + [f"![{Path(img).stem}]({img})" for img in written]
    return written + [_write_text(out / "summary.md", lines)]


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
    _chance_line(ax, summary.get("dataset"))
    ax.set_xscale("log")
    ax.set_xticks([zero_at, *positive])
    ax.set_xticklabels(["0", *[f"{v:g}" for v in positive]])
    ax.minorticks_off()
    ax.set_xlabel("variance v of the noise added to B after each step (B += lr·ξ, ξ ~ N(0, v))")
    ax.set_ylabel("validation top-1 (fraction), mean ± std over seeds")
    _title(ax, "robustness to noisy B updates", *context)
    _legend_outside(ax)
    return fig


def curvature_rule_figure(summary: dict[str, Any], context: list[str]) -> plt.Figure:
    """Top Hessian eigenvalue and generalisation gap per rule, one marker per noise variance
    (mean ± std over the seeds that measured them)."""
    rules = list(dict.fromkeys(r["rule"] for r in summary["rows"]))
    noise = sorted({r["noise"] for r in summary["rows"]})
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 4.8), layout="constrained")
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
        if key == "top_eigenvalue":
            ax.set_yscale("log")
        ax.set_ylabel(f"{LABELS[key]}\nmean ± std over seeds")
        if len(noise) > 1:
            ax.legend(fontsize=8)
    _suptitle(fig, "loss curvature and generalisation by rule", *context)
    return fig
