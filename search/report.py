"""PNG plots and a Markdown summary of a sweep study or of one or more transfer studies.

Every file is written to a temporary file in the output folder and renamed into place, so a
report never writes through a symbolic link planted in the folder (the rename replaces the
link itself) and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import matplotlib

matplotlib.use("Agg")  # headless: reports are files
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from catalogue.errors import UsageError  # noqa: E402
from catalogue.rule import RULES  # noqa: E402
from catalogue.training import describe_option, tunable_options  # noqa: E402
from search.beyond_accuracy import LABELS, MEASURES, any_measured  # noqa: E402
from search.storage import ranked_complete, single_direction  # noqa: E402
from search.transfer import baseline_study_of, summarize  # noqa: E402


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
    fig.tight_layout()
    try:  # bbox_inches: a legend outside the axes stays whole
        return write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=120,
                                                         bbox_inches="tight"))
    finally:
        plt.close(fig)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# --- sweep study -------------------------------------------------------------------------------

def study_report(study: optuna.Study, out: Path) -> list[str]:
    """history.png, scatter.png, importance.png (when computable), relaxations.png and
    curvature.png (when the trials recorded B's plan, ``--curvature``) and summary.md."""
    single_direction(study)  # another tool's multi-objective study: one line, before any file
    output_folder(out)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    written = [_history_plot(study, trials, out / "history.png")]
    scatter = _scatter_plot(study, trials, out / "scatter.png")
    if scatter:
        written.append(scatter)
    importance, note = _importance_plot(study, out / "importance.png")
    if importance:
        written.append(importance)
    relaxation = _relaxation_plot(study, trials, out / "relaxations.png")
    if relaxation:
        written.append(relaxation)
    curvature = _curvature_plot(study, trials, out / "curvature.png")
    if curvature:
        written.append(curvature)
    across = _architectures_plot(study, out / "architectures.png")
    if across:
        written.append(across)
    written.append(_study_markdown(study, trials, written, note, out / "summary.md"))
    return written


def _param_text(value: Any) -> str:
    """A parameter for a table: numbers to 3 significant digits, a categorical choice as is."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def _history_plot(study: optuna.Study, trials: list, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    ax.scatter([t.number for t in done], [t.value for t in done], s=18, label="completed trial")
    better = max if single_direction(study) == optuna.study.StudyDirection.MAXIMIZE else min
    best, xs, ys = None, [], []
    for t in done:
        best = t.value if best is None else better(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if failed:
        ax.scatter(failed, [0.0] * len(failed), marker="x", color="tab:red",
                   label=f"failed / diverged ({len(failed)})")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        ax.scatter([t.number for t in pruned],
                   [max(t.intermediate_values.values(), default=0.0) for t in pruned],
                   marker=".", color="grey", label="stopped early")
    ax.set_xlabel("trial number")
    objective = study.user_attrs.get("objective")
    ax.set_ylabel(f"{objective} of the best val top-1 per architecture" if objective
                  else "best validation top-1 (fraction)")
    ax.set_title(f"search history: {study.study_name}")
    if all(0.0 <= t.value <= 1.0 for t in done):  # an accuracy; another tool's may not be
        ax.set_ylim(-0.03, 1.03)
    ax.legend(loc="center right")  # failures sit at 0, the best values near 1
    return _save(fig, path)


def _architectures_plot(study: optuna.Study, path: Path, top: int = 10) -> str | None:
    """A transfer-aware sweep's top trials: each one's val top-1 on every architecture, and
    the objective that ranked them (None for a sweep on one architecture)."""
    archs = study.user_attrs.get("archs") or []
    ranked = [t for t in ranked_complete(study) if t.user_attrs.get("val_top1_by_arch")][:top]
    if not archs or not ranked:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(ranked) * len(archs) ** 0.5 + 2), 4))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        ax.bar([r + (i - (len(archs) - 1) / 2) * width for r in range(len(ranked))],
               [t.user_attrs["val_top1_by_arch"].get(arch, 0.0) for t in ranked], width,
               label=arch)
    ax.scatter(range(len(ranked)), [t.value for t in ranked], color="black", marker="_",
               s=300, zorder=3, label=f"objective ({study.user_attrs.get('objective')})")
    ax.set_xticks(range(len(ranked)), [f"#{t.number}" for t in ranked])
    ax.set_xlabel("trial, best first")
    ax.set_ylabel("best val top-1 (diverged: 0)")
    ax.set_title(f"top trials on each architecture: {study.study_name}")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def _scatter_plot(study: optuna.Study, trials: list, path: Path) -> str | None:
    names = parameter_order(study.user_attrs.get("rule"),
                            {n for t in trials for n in t.params})
    if len(names) < 2:
        return None
    x_name, y_name = names[:2]
    fig, ax = plt.subplots(figsize=(6, 5))
    done = [t for t in trials if t.state == TrialState.COMPLETE and
            {x_name, y_name} <= set(t.params)]
    failed = [t for t in trials if t.state == TrialState.FAIL and
              {x_name, y_name} <= set(t.params)]
    if done:
        points = ax.scatter([t.params[x_name] for t in done], [t.params[y_name] for t in done],
                            c=[t.value for t in done], cmap="viridis", s=30)
        fig.colorbar(points, ax=ax, label="best validation top-1 (fraction)")
    if failed:
        ax.scatter([t.params[x_name] for t in failed], [t.params[y_name] for t in failed],
                   marker="x", color="tab:red", label=f"failed / diverged ({len(failed)})")
        ax.legend(loc="best")
    for set_scale, set_label, name in ((ax.set_xscale, ax.set_xlabel, x_name),
                                       (ax.set_yscale, ax.set_ylabel, y_name)):
        dist = next((t.distributions[name] for t in trials if name in t.distributions), None)
        log = dist is not None and getattr(dist, "log", False)
        if log:
            set_scale("log")
        set_label(f"{name} ({parameter_label(study.user_attrs.get('rule'), name)}, "
                  f"{'log' if log else 'linear'} scale)")
    ax.set_title(f"metaparameters: {study.study_name}")
    return _save(fig, path)


def _relaxation_plot(study: optuna.Study, trials: list, path: Path) -> str | None:
    """Val top-1 against the fewest relaxation times any layer's B got (docs/design.md §7);
    trials whose B was beyond its stability limit are marked. None without recorded plans."""
    planned = [t for t in trials if t.user_attrs.get("relaxations_min") is not None]
    if not planned:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    floor = 1e-3  # an unstable B has negative relaxations: drawn at the floor
    stable = [t for t in planned if (t.user_attrs.get("stability_ratio_max") or 0) <= 1]
    unstable = [t for t in planned if t not in stable]
    done = [t for t in stable if t.state == TrialState.COMPLETE]
    if done:
        points = ax.scatter([max(floor, t.user_attrs["relaxations_min"]) for t in done],
                            [t.value for t in done], s=24,
                            c=[t.user_attrs.get("stability_ratio_max") or 0 for t in done],
                            cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(points, ax=ax, label="peak lr_B·λ / stability limit")
    failed = [t for t in stable if t.state != TrialState.COMPLETE]
    if failed:
        ax.scatter([max(floor, t.user_attrs["relaxations_min"]) for t in failed],
                   [0.0] * len(failed), marker="x", color="grey", label="failed or stopped")
    if unstable:
        ax.scatter([floor] * len(unstable), [t.value or 0.0 for t in unstable], marker="x",
                   color="tab:red", label=f"B beyond its stability limit ({len(unstable)})")
    ax.axvline(3.0, color="black", linestyle=":", label="3 relaxation times")
    ax.set_xscale("log")
    ax.set_xlabel("relaxation times of the slowest layer's B (log scale)")
    ax.set_ylabel("best validation top-1 (fraction)")
    ax.set_title(f"accuracy vs B's relaxation budget: {study.study_name}")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _curvature_plot(study: optuna.Study, trials: list, path: Path) -> str | None:
    """Val top-1 against the true loss's top Hessian eigenvalue at the end of each trial
    (``--curvature``), coloured by its generalisation gap. None when no trial measured it."""
    measured = [t for t in trials if t.state == TrialState.COMPLETE
                and isinstance(t.user_attrs.get("top_eigenvalue"), (int, float))
                and t.user_attrs["top_eigenvalue"] > 0]
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = ax.scatter([t.user_attrs["top_eigenvalue"] for t in measured],
                        [t.value for t in measured], s=28, cmap="viridis",
                        c=[t.user_attrs.get("generalization_gap") or 0.0 for t in measured])
    fig.colorbar(points, ax=ax, label="generalisation gap (train − val top-1, eval mode)")
    ax.set_xscale("log")
    ax.set_xlabel("top eigenvalue of the true loss's Hessian at the end (log scale)")
    ax.set_ylabel("best validation top-1 (fraction)")
    ax.set_title(f"accuracy vs loss curvature: {study.study_name}")
    return _save(fig, path)


def _importance_plot(study: optuna.Study, path: Path) -> tuple[str | None, str]:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2 or not complete[0].params:
        return None, "parameter importance needs at least two completed trials with parameters"
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return None, f"parameter importance not computable: {exc}"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, fraction of variance of val top-1)")
    ax.set_title(f"parameter importance: {study.study_name}")
    return _save(fig, path), ""


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

def transfer_report(studies: list[optuna.Study], out: Path, storage: Any = None) -> list[str]:
    """accuracy_vs_depth.png, layer_angles.png and summary.md over one or more rules
    (``storage``: where shared baseline studies are found)."""
    output_folder(out)
    summaries = [summarize(s, baselines=baseline_study_of(s, storage) if storage else None)
                 for s in studies]
    written = [_accuracy_plot(summaries, out / "accuracy_vs_depth.png"),
               _layer_angle_plot(studies, out / "layer_angles.png")]
    curvature = _curvature_depth_plot(summaries, out / "curvature_vs_depth.png")
    if curvature:
        written.append(curvature)
    written.append(_transfer_markdown(summaries, written, out / "summary.md"))
    return written


def _depth_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((r for r in summary["rows"] if r["depth"] is not None),
                  key=lambda r: r["depth"])


def _accuracy_plot(summaries: list[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(8, 6))
    baseline: dict[int, tuple[float, float]] = {}
    for summary in summaries:
        rows = [r for r in _depth_rows(summary) if r["mean"] is not None]
        ax.errorbar([r["depth"] for r in rows], [r["mean"] for r in rows],
                    yerr=[r["std"] for r in rows], marker="o", capsize=3,
                    label=f"{summary['rule']} (transferred from {summary['source_study']})")
        color = ax.get_lines()[-1].get_color() if ax.get_lines() else None
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
    depths = sorted({r["depth"] for s in summaries for r in _depth_rows(s)})
    if depths:
        ax.set_xticks(depths)
    ax.set_xlabel("network depth (layers)")
    ax.set_ylabel("validation top-1 (fraction), mean ± std over seeds")
    ax.set_title("accuracy vs. depth")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=1,
              frameon=False)  # below the axes: never over the data
    return _save(fig, path)


def _layer_angle_plot(studies: list[optuna.Study], path: Path) -> str:
    """Weight angle per layer (layer position 0 = input, 1 = output), one line per target."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for study in studies:
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
            ax.plot(xs, mean, marker=".", label=f"{study.user_attrs.get('rule')} {target}")
    ax.set_xlabel("relative layer position (0 = first layer, 1 = classifier)")
    ax.set_ylabel("weight angle ∠(W, B) (degrees)")
    ax.set_title("per-layer weight angle at the end of training, by depth")
    ax.set_ylim(0, 95)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _curvature_depth_plot(summaries: list[dict[str, Any]], path: Path) -> str | None:
    """Top Hessian eigenvalue and generalisation gap against depth, per rule and for backprop
    (mean ± std over the seeds that measured them). None when no run used ``--curvature``."""
    if not any(any_measured(s["rows"], ("", "backprop_")) for s in summaries):
        return None
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 4.5))
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
        ax.set_xlabel("network depth (layers)")
        ax.set_ylabel(f"{LABELS[key]}, mean ± std")
        ax.legend(fontsize=8)
    fig.suptitle("loss curvature and generalisation at the end of training, by depth")
    return _save(fig, path)


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


# --- robustness studies ------------------------------------------------------------------------

def robustness_report(study: optuna.Study, out: Path) -> list[str]:
    """accuracy_vs_noise.png and summary.md of a robustness study."""
    from search.specs import BACKPROP_NOISE_HELP
    from search.robustness import summarize as summarize_robustness

    output_folder(out)
    summary = summarize_robustness(study)
    fig, ax = plt.subplots(figsize=(7.5, 5))
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
    ax.set_xscale("log")
    ax.set_xticks([zero_at, *positive])
    ax.set_xticklabels(["0", *[f"{v:g}" for v in positive]])
    ax.set_xlabel("variance v of the noise added to B after each step (B += lr·ξ, ξ ~ N(0, v))")
    ax.set_ylabel("validation top-1 (fraction), mean ± std over seeds")
    ax.set_title(f"robustness to noisy B updates: {summary['arch']} on {summary['dataset']}")
    ax.legend(fontsize=8)
    written = [_save(fig, out / "accuracy_vs_noise.png")]
    measured = any_measured(summary["rows"])
    if measured:
        written.append(_curvature_rule_plot(summary, out / "curvature_by_rule.png"))
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


def _curvature_rule_plot(summary: dict[str, Any], path: Path) -> str:
    """Top Hessian eigenvalue and generalisation gap per rule, one marker per noise variance
    (mean ± std over the seeds that measured them)."""
    rules = list(dict.fromkeys(r["rule"] for r in summary["rows"]))
    noise = sorted({r["noise"] for r in summary["rows"]})
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 4.5))
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
        ax.set_ylabel(f"{LABELS[key]}, mean ± std")
        if len(noise) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"loss curvature and generalisation by rule: {summary['arch']} on "
                 f"{summary['dataset']}, {summary['seeds']} seeds")
    return _save(fig, path)
