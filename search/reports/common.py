"""What every report shares: where it writes and how, and what every figure says.

Every file is written to a temporary file in the output folder and renamed into place, so a
report never writes through a symbolic link planted in the folder (the rename replaces the
link itself) and a reader never sees half a file. Every figure's title names the data,
epochs, seeds and counts it was drawn from (``data_line``, ``trial_counts``); an accuracy
axis carries the dataset's chance level (``chance_line``), an angle axis the 90 degrees a
random B gives (``random_angle_line``); trials without a value sit on a row of their own
(``failed_row``) instead of being dropped or drawn at 0.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import matplotlib

matplotlib.use("Agg")  # headless: reports are files
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from catalogue.errors import UsageError  # noqa: E402
from catalogue.rule import RULES  # noqa: E402
from catalogue.training import describe_option, tunable_options  # noqa: E402
from search.beyond_accuracy import HEADERS, MEASURES, significant  # noqa: E402
from search.provenance import describe  # noqa: E402

# Chance level (1 / number of classes) of the datasets creditsweep trains on: the floor an
# accuracy axis is read against.
CHANCE = {"digits": 0.1, "mnist": 0.1, "fashion_mnist": 0.1, "cifar10": 0.1,
          "imagenet": 0.001}
RANDOM_B_ANGLE = 90.0  # degrees: a random B is almost orthogonal to W in high dimension
FAILED_ROW, LOW_ROW = 0.035, 0.10  # axes fractions: rows for marks that have no value


# --- parameters ------------------------------------------------------------------------------

def parameter_label(rule: str | None, name: str) -> str:
    """What a tuned parameter means, from the catalogue: 'weight of decay', 'peak learning
    rate of W'; a parameter neither the rule nor the trainer knows is just 'parameter'."""
    try:
        if rule in RULES and name in RULES.get(rule).metaparameters:
            return RULES.get(rule).describe_parameter(name)
        return describe_option(name)
    except UsageError:
        return "parameter"


def parameter_order(rule: str | None, names: set[str]) -> list[str]:
    """The rule's metaparameters in declaration order, then training options, then others."""
    declared = list(RULES.get(rule).metaparameters) if rule in RULES else []
    order = declared + list(tunable_options())
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


# --- files -----------------------------------------------------------------------------------

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


def write_text(path: Path, lines: list[str]) -> str:
    return write_atomic(path, lambda fh: fh.write(("\n".join(lines) + "\n").encode()))


def save(fig: plt.Figure, path: Path) -> str:
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


def image_links(images: list[str]) -> list[str]:
    """Markdown that shows each written figure."""
    return [f"![{Path(img).stem}]({img})" for img in images]


# --- text ------------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def param_text(value: Any) -> str:
    """A parameter for a table: numbers to 3 significant digits, a categorical choice as is."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plural(n: Any, word: str) -> str | None:
    return None if n is None else f"{n} {word}{'' if n == 1 else 's'}"


def measure_headers(prefix: str = "") -> str:
    """The header cells ``measure_cells`` fills, e.g. 'λ_max | λ_max·‖W‖² | gen. gap'."""
    return " | ".join(f"{prefix}{HEADERS[key]}" for key in MEASURES)


def measure_cells(row: dict[str, Any], prefix: str = "") -> str:
    """'λ_max ± spread | gap ± spread' of a summary row (``prefix``: 'backprop_' for its
    baseline), for a Markdown table."""
    return " | ".join(f"{significant(row.get(f'{prefix}{key}'))} ± "
                      f"{significant(row.get(f'{prefix}{key}_std'))}" for key in MEASURES)


def versions_lines(studies: Iterable[optuna.Study]) -> list[str]:
    """What produced the studies (``search.provenance``) as a Markdown paragraph of one line
    and a blank one: once when they agree, else per study. Studies that recorded nothing
    (another tool's, an older creditsweep's) are left out; none at all: no lines."""
    records = [(s.study_name, s.user_attrs.get("versions")) for s in studies]
    records = [(name, r) for name, r in records if r]
    if not records:
        return []
    if all(r == records[0][1] for _, r in records):
        return [f"Recorded with {describe(records[0][1])}.", ""]
    return ["Recorded with " + "; ".join(f"{describe(r)} (`{name}`)" for name, r in records)
            + ".", ""]


# --- what every figure says ------------------------------------------------------------------

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


def _seeds_text(attrs: dict[str, Any]) -> str | None:
    """A study's seeds: several per setting ('3 seeds'), or a sweep's one seed ('seed 0')."""
    if attrs.get("seeds") is not None:
        return plural(attrs["seeds"], "seed")
    if attrs.get("seed") is not None:
        return f"seed {attrs['seed']}"
    return None


def data_line(attrs: dict[str, Any]) -> str:
    """'digits · 4 epochs · seed 0' from a study's attributes (what another tool's study
    lacks is left out)."""
    parts = [attrs.get("dataset"),
             plural(attrs.get("epochs"), "epoch"),
             _seeds_text(attrs)]
    return " · ".join(str(p) for p in parts if p)


def axes_title(ax: Axes, what: str, *context: str) -> None:
    """A title that says what is plotted, then from what (data, epochs, seeds, counts)."""
    ax.set_title("\n".join([what, *[c for c in context if c]]), fontsize=10)


def figure_suptitle(fig: plt.Figure, what: str, *context: str) -> None:
    fig.suptitle("\n".join([what, *[c for c in context if c]]), fontsize=11)


def value_limits(values: Iterable[float], below: float = 0.2, above: float = 0.08
                 ) -> tuple[float, float] | None:
    """y-limits fitted to the completed trials' values, with a band of ``below`` x their span
    under them for the row of failed trials (which have no value: drawing them at 0 squeezed
    the real values into a sliver). None without a finite value."""
    values = [float(v) for v in values if finite(v)]
    if not values:
        return None
    lo, hi = min(values), max(values)
    span = hi - lo or max(abs(hi) * 0.05, 0.01)
    return lo - below * span, hi + above * span


def mark_row(ax: Axes, xs: list[float], height: float, **style: Any) -> None:
    """Marks at data ``xs`` on a fixed height of the axes (``height``, a fraction of it): for
    trials that have no value to stand at."""
    if xs:
        ax.scatter(xs, [height] * len(xs), transform=ax.get_xaxis_transform(), clip_on=False,
                   zorder=3, **style)
        # Marks off the data transform do not widen the x-range by themselves.
        ax.update_datalim([(x, 0.0) for x in xs if finite(x)], updatey=False)
        ax.autoscale_view(scaley=False)


def failed_row(ax: Axes, xs: list[float], colors: list[str] | None = None) -> None:
    mark_row(ax, xs, FAILED_ROW, marker="x", s=36, color=colors or "tab:red",
             label=f"failed / diverged ({len(xs)}), no value: drawn on the bottom row")


def chance_line(ax: Axes, dataset: str | None) -> None:
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


def random_angle_line(ax: Axes) -> None:
    ax.axhline(RANDOM_B_ANGLE, color="dimgrey", linestyle=":", linewidth=1.2,
               label="90°: a random B (no alignment)")


def legend_outside(ax: Axes, below: bool = False) -> None:
    """The legend beside the axes (below them where a colour bar takes the side): never
    over the data."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, fontsize=8,
                  frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
