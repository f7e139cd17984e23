"""A sweep's trials compared at matched training loss: rules and settings learn at different
speeds, so their gaps at the last epoch compare different stages of fit. Each completed trial
that measured the curvature along training (``--curvature --curvature-every N``, two epochs
or more) is interpolated at the training loss the most of them came down through
(``search.matched_loss.covering_level``); summary.md lists its loss gap and λ_max there and
their correlation across trials, and matched_loss.png draws one against the other.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.matched_loss import LOSS_KEY, Matched, covering_level, matched, points
from search.reports.common import axes_title, legend_outside, param_text, plt

GAP, LAMBDA, LAMBDA_REC = "loss_gap", "top_eigenvalue", "top_eigenvalue_recurrent"
KEYS = (GAP, LAMBDA, LAMBDA_REC)
LABELS = {GAP: "loss gap", LAMBDA: "λ_max", LAMBDA_REC: "λ_max W_rec"}


def _history(trial: FrozenTrial) -> list[dict[str, Any]]:
    rows = trial.user_attrs.get("history")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _measured(trial: FrozenTrial) -> int:
    """How many epochs of a completed trial measured the training loss the gaps match on."""
    if trial.state != TrialState.COMPLETE:
        return 0
    return len(points(_history(trial), LOSS_KEY))


def matched_trials(trials: list[FrozenTrial]) -> Matched | None:
    """The completed trials that measured along training, by number, at their covering
    level; None with fewer than two of them."""
    histories = {str(t.number): _history(t) for t in trials if _measured(t) >= 2}
    if len(histories) < 2:
        return None
    level = covering_level(histories)
    return None if level is None else matched(histories, level, keys=KEYS)


def _shown(at: Matched) -> list[str]:
    """The λ_max keys some trial has a value of at the level (W_rec's on recurrent models)."""
    return [k for k in (LAMBDA, LAMBDA_REC) if at.pairs(GAP, k)[0]]


def _corr_text(at: Matched, key: str) -> str:
    c = at.correlation(GAP, key)
    if c["pearson"] is None:
        return (f"{LABELS[key]}: not computable ({c['runs']} trials with both values; it "
                "needs 3 that differ)")
    return (f"{LABELS[key]}: Pearson {c['pearson']:+.2f}, Spearman {c['spearman']:+.2f} "
            f"({c['runs']} trials)")


def matched_lines(trials: list[FrozenTrial], names: list[str]) -> list[str]:
    """summary.md's section: the level, each trial's parameters (``names``, in order), gap
    and λ_max there, and the correlations; one line saying why when fewer than two trials
    measured along training, nothing when none measured at all (as the other measures)."""
    at = matched_trials(trials)
    if at is None:
        some = sum(_measured(t) > 0 for t in trials)
        if not some:
            return []
        along = sum(_measured(t) >= 2 for t in trials)
        return [(f"_No generalisation at matched training loss: it needs two completed "
                 f"trials that measured the curvature at two epochs or more (`--curvature "
                 f"--curvature-every N`); {along} of the {some} that measured did._"), ""]
    by_number = {str(t.number): t for t in trials}
    shown = _shown(at)
    covered = len(at.pairs(GAP, GAP)[0])
    lines = ["## Generalisation at matched training loss", "",
             (f"Trials matched at training loss **{at.level:.4g}** (`{LOSS_KEY}`: eval "
              f"mode, on a fixed training subset), the lowest the most of them came down "
              f"through ({covered} of {len(at.values)}); each value is interpolated linearly "
              "between the two measured epochs around it, `-` where a trial never crossed it. "
              "Gap = val loss − training loss."), "",
             "| trial | parameters | " + " | ".join(f"{LABELS[k]} @ L" for k in (GAP, *shown))
             + " |", "|---|---|" + "---|" * (1 + len(shown))]
    for run, values in at.values.items():
        params = by_number[run].params
        short = ", ".join(f"{n}={param_text(params[n])}" for n in names if n in params)
        lines.append(f"| {run} | {short or '-'} | "
                     + " | ".join(_value_text(values.get(k)) for k in (GAP, *shown)) + " |")
    lines += ["", "Correlation of the gap across trials with "
              + "; with ".join(_corr_text(at, k) for k in shown) + ".", ""]
    return lines


def _value_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def matched_loss_figure(trials: list[FrozenTrial], context: list[str]) -> plt.Figure | None:
    """The loss gap against λ_max at the matched training loss, one point per trial that has
    both, labelled by its number; None with fewer than two such trials."""
    at = matched_trials(trials)
    if at is None:
        return None
    both = {run: v for run, v in at.values.items()
            if v.get(GAP) is not None and v.get(LAMBDA) is not None}
    if len(both) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter([v[LAMBDA] for v in both.values()], [v[GAP] for v in both.values()], s=30,
               zorder=2, label=f"completed trial at the matched loss ({len(both)})")
    for run, v in both.items():
        ax.annotate(f"#{run}", (v[LAMBDA], v[GAP]), textcoords="offset points",
                    xytext=(4, 3), fontsize=8)
    ax.set_xlabel(f"top eigenvalue of the true loss's Hessian at training loss {at.level:.4g}")
    ax.set_ylabel("loss gap (val − training loss, eval mode) at the same loss")
    missing = len(at.values) - len(both)
    axes_title(ax, f"generalisation gap vs curvature at matched training loss {at.level:.4g}",
               *context, f"gap vs {_corr_text(at, LAMBDA)}",
               f"not shown: {missing} trials that never came down through it" if missing
               else "")
    legend_outside(ax, below=True)
    return fig
