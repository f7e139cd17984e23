"""The report's figures and tables, drawn from small real Optuna studies in SQLite that hold
trials as the recorder writes them (user attributes, per-epoch history, intermediate values),
failed and pruned ones included.

Figures are checked by what they show, read off the matplotlib Figure each figure function
returns: the points of every marker set against the stored trials, axis ranges and scales,
the reference lines (chance, 90°), failures on their own row, titles that name the data; the
written files by their names, their PNG "Title" and the Markdown's numbers and versions."""

from __future__ import annotations

import csv
import math
import random
import statistics
import subprocess
import sys

import matplotlib.colors
import optuna
import pytest
from matplotlib.collections import PathCollection
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from search import reports
from search.cli import main
from search.provenance import describe
from search.reports.common import FAILED_ROW, LOW_ROW
from search.reports.robustness import robustness_context
from search.summaries import summarize_robustness

LOG = FloatDistribution(1e-6, 10.0, log=True)
SWEEP_SPACE = {"alpha": LOG, "beta": LOG, "sigma": FloatDistribution(0.01, 10.0, log=True)}
EPOCHS = 4
VERSIONS = {"creditsweep": "0.1.0", "torch": "2.14.1", "ray": "2.60.0", "optuna": "5.1.0",
            "hyperopt": "0.3.0", "commit": "0123456789abcdef0123456789abcdef01234567+dirty"}
RECORDED = ("Recorded with creditsweep 0.1.0, torch 2.14.1, ray 2.60.0, optuna 5.1.0, "
            "hyperopt 0.3.0 (commit 0123456789ab+dirty).")


def _history(final: float, epochs: int, rng: random.Random) -> list[dict]:
    """Per-epoch rows as the recorder keeps them, val top-1 rising to ``final``."""
    return [{"epoch": e, "val_top1": final * (0.55 + 0.45 * e / epochs) + rng.uniform(-.01, .01),
             "train_loss": 2.3 / e, "wall_time": 1.0 * e} for e in range(1, epochs + 1)]


def _trial(state: TrialState, value: float | None, params: dict, history: list[dict],
           attrs: dict | None = None) -> optuna.trial.FrozenTrial:
    status = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "stopped",
              TrialState.FAIL: "diverged"}[state]
    user = {"status": status, "epochs_completed": len(history), "history": history,
            **(attrs or {})}
    if state == TrialState.FAIL:
        user.setdefault("fail_reason", "non-finite loss at epoch 2, step 3")
    return create_trial(state=state, value=value, params=params,
                        distributions={k: SWEEP_SPACE.get(k, LOG) for k in params},
                        user_attrs=user,
                        intermediate_values={r["epoch"]: r["val_top1"] for r in history})


def make_sweep(url: str, name: str = "weight_mirror.resnet8.digits") -> optuna.Study:
    """A weight-mirror sweep of 24 trials whose value follows sigma: 16 complete, 5 failed
    (3 after an epoch, with B's plan; 2 before any, without), 3 pruned."""
    rng = random.Random(3)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for key, value in {"kind": "sweep", "rule": "weight_mirror", "arch": "resnet8",
                       "dataset": "digits", "epochs": EPOCHS, "seed": 0,
                       "searcher": "tpe", "versions": VERSIONS}.items():
        study.set_user_attr(key, value)
    for i in range(24):
        params = {"alpha": 10 ** rng.uniform(-6, 1), "beta": 10 ** rng.uniform(-6, 1),
                  "sigma": 10 ** rng.uniform(-2, 1)}
        value = 0.62 + 0.28 * math.exp(-(math.log10(params["sigma"]) - 0.2) ** 2)
        plan = {"relaxations_min": 10 ** rng.uniform(-1, 1.5),
                "stability_ratio_max": rng.uniform(0.05, 1.4)}
        if i in (3, 9, 15):
            trial = _trial(TrialState.FAIL, None, params, _history(0.3, 1, rng), plan)
        elif i in (6, 19):
            trial = _trial(TrialState.FAIL, None, params, [],
                           {"fail_reason": "non-finite loss at epoch 1, step 2"})
        elif i in (11, 21):
            trial = _trial(TrialState.PRUNED, None, params, _history(value - .05, 2, rng), plan)
        elif i == 13:  # stopped after one poor epoch: below the completed trials' range
            trial = _trial(TrialState.PRUNED, None, params, _history(0.2, 1, rng), plan)
        else:
            history = _history(value, EPOCHS, rng)
            trial = _trial(TrialState.COMPLETE, max(r["val_top1"] for r in history), params,
                           history, plan)
        study.add_trial(trial)
    return study


def _transfer_run(role: str, target: str, seed: int, value: float | None,
                  source_trial: int | None, layers: int, curvature: bool = False
                  ) -> optuna.trial.FrozenTrial:
    attrs = {"role": role, "target_arch": target, "seed": seed, "source_trial": source_trial,
             "run_key": f"{role}|{target}|{source_trial}|{seed}",
             "status": "completed" if value is not None else "diverged",
             "diagnostics_per_layer": {f"layer{i}": {"weight_angle": 80.0 - 3 * i + seed}
                                       for i in range(layers)}}
    if role == "transferred":
        attrs.update(source_study="weight_mirror.resnet8.digits", metaparameters={"alpha": .1})
    if value is None:
        return create_trial(state=TrialState.FAIL, user_attrs=attrs)
    if curvature:
        top = layers * (2.0 if role == "transferred" else 1.0) + seed
        attrs.update(top_eigenvalue=top, top_eigenvalue_scaled=100.0 * top - seed,
                     generalization_gap=0.01 * layers + 0.001 * seed)
    return create_trial(value=value, user_attrs=attrs, intermediate_values={1: value})


# Transferred val top-1 per (rule, target), one value per seed; None: that seed diverged.
TRANSFERRED = {
    "weight_mirror": {"resnet8": [0.71, 0.69, 0.73], "resnet14": [0.66, 0.61, 0.64],
                      "resnet20": [None, None, None]},
    "symmetric_alignment": {"resnet8": [0.80, 0.82, 0.79], "resnet14": [0.83, 0.81, 0.84],
                            "resnet20": [0.85, None, None]},
}
BACKPROP = {"resnet8": [0.81, 0.83, 0.80], "resnet14": [0.84, 0.85, 0.83],
            "resnet20": [0.86, 0.84, 0.87]}
DEPTH_LAYERS = {"resnet8": 8, "resnet14": 14, "resnet20": 20}
TRANSFERS = ("transfer.weight_mirror.resnet8.digits",
             "transfer.symmetric_alignment.defaults.digits")


def make_transfer(url: str, rule: str, seeds: int = 3, curvature: bool = False
                  ) -> optuna.Study:
    """A transfer study as ``transfer`` records it, with its own backprop runs; ``seeds``
    fewer than 3 keeps the first seeds' values."""
    source = "resnet8" if rule == "weight_mirror" else "defaults"
    study = optuna.create_study(study_name=f"transfer.{rule}.{source}.digits", storage=url,
                                direction="maximize")
    for key, value in {"kind": "transfer", "rule": rule, "arch": source, "dataset": "digits",
                       "source_study": f"{rule}.{source}.digits", "targets": list(BACKPROP),
                       "epochs": EPOCHS, "seeds": seeds, "top_k": 1, "select": "best",
                       "versions": VERSIONS}.items():
        study.set_user_attr(key, value)
    for target, values in TRANSFERRED[rule].items():
        for seed, value in enumerate(values[:seeds]):
            study.add_trial(_transfer_run("transferred", target, seed, value, 7,
                                          DEPTH_LAYERS[target], curvature))
            study.add_trial(_transfer_run("backprop", target, seed, BACKPROP[target][seed],
                                          None, DEPTH_LAYERS[target], curvature))
    return study


# Val top-1 per (rule, noise variance) and seed; None: that seed diverged.
NOISY = {("symmetric_alignment", 0.0): [0.80, 0.81], ("symmetric_alignment", 1e-2): [0.77, 0.78],
         ("symmetric_alignment", 1e-1): [None, None],
         ("backprop", 0.0): [0.84, 0.85], ("backprop", 1e-2): [0.81, 0.83],
         ("backprop", 1e-1): [0.52, 0.50]}


def make_robustness(url: str) -> optuna.Study:
    study = optuna.create_study(study_name="robustness.resnet8.digits", storage=url,
                                direction="maximize")
    for key, value in {"kind": "robustness", "arch": "resnet8", "dataset": "digits",
                       "rules": ["symmetric_alignment", "backprop"], "noise": [0.0, 1e-2, 1e-1],
                       "seeds": 2, "epochs": EPOCHS, "versions": VERSIONS}.items():
        study.set_user_attr(key, value)
    for (rule, noise), values in NOISY.items():
        for seed, value in enumerate(values):
            attrs = {"rule": rule, "noise": noise, "seed": seed, "run_key": f"{rule}|{noise}|{seed}"}
            if value is None:
                study.add_trial(create_trial(state=TrialState.FAIL,
                                             user_attrs={**attrs, "status": "diverged"}))
            else:
                study.add_trial(create_trial(value=value, user_attrs={
                    **attrs, "status": "completed", "top_eigenvalue": 10.0 * (1 + noise) + seed,
                    "top_eigenvalue_scaled": 5.0 + seed, "generalization_gap": 0.02 + noise}))
    return study


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep of ``make_sweep``, made once: figures only read it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sweep') / 'sweep.db'}"
    return url, make_sweep(url)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    reports.plt.close("all")


# --- reading a figure ------------------------------------------------------------------------

def _labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def _marks(ax, label: str) -> PathCollection:
    """The one marker set whose legend label starts with ``label``."""
    found = [c for c in ax.collections if c.get_label().startswith(label)]
    assert len(found) == 1, (label, [c.get_label() for c in ax.collections])
    return found[0]


def _xy(marks: PathCollection) -> tuple[list[float], list[float]]:
    offsets = marks.get_offsets()
    return [float(x) for x in offsets[:, 0]], [float(y) for y in offsets[:, 1]]


def _on_row(ax, marks: PathCollection, height: float) -> None:
    """The marks sit at ``height`` of the axes, whatever the data range: a row of their own."""
    assert marks.get_offset_transform() is ax.get_xaxis_transform()
    assert _xy(marks)[1] == pytest.approx([height] * len(marks.get_offsets()))


def _line(ax, label: str):
    found = [line for line in ax.get_lines() if line.get_label().startswith(label)]
    assert len(found) == 1, (label, [line.get_label() for line in ax.get_lines()])
    return found[0]


def _chance(ax):
    line = _line(ax, "chance")
    assert list(line.get_ydata()) == [0.1, 0.1]  # 1/10 classes of digits, across the axes
    return line


def _errorbar(ax, label: str) -> tuple[list[float], list[float]]:
    """x and y of the errorbar series labelled ``label``."""
    found = [c for c in ax.containers if c.get_label() == label]
    assert len(found) == 1, (label, [c.get_label() for c in ax.containers])
    line = found[0].lines[0]
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


def _names_its_data(title: str, *words: str) -> None:
    for word in ("digits", f"{EPOCHS} epochs", *words):
        assert word in title, (word, title)


def _png_title(path) -> str:
    """The "Title" a written PNG carries (what an image viewer shows without the pixels)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.text["Title"]


def _by_state(study, state):
    return sorted((t for t in study.trials if t.state == state), key=lambda t: t.number)


SWEEP_CONTEXT = ("weight_mirror on resnet8", "seed 0",
                 "24 trials: 16 complete, 5 failed, 3 pruned")


# --- sweep study -----------------------------------------------------------------------------

@pytest.mark.slow
def test_study_report_writes_its_figures_and_versions(sweep, tmp_path):
    url, study = sweep
    out = tmp_path / "report"
    assert main(["report", "--study", study.study_name, "--storage", url, "--out",
                 str(out)]) == 0
    figures = ["curves.png", "history.png", "importance.png", "relaxations.png",
               "scatter.png", "slices.png"]  # no curvature or other architectures recorded
    assert sorted(p.name for p in out.iterdir()) == figures + ["summary.md"]
    view = reports.SweepView(study, study.trials)
    assert _png_title(out / "history.png") == reports.figure_title(
        reports.history_figure(view))
    for name in figures:
        _names_its_data(_png_title(out / name), *SWEEP_CONTEXT)
    md = (out / "summary.md").read_text()
    assert RECORDED in md.splitlines()
    for name in figures:
        assert f"]({name})" in md
    best = max(_by_state(study, TrialState.COMPLETE), key=lambda t: t.value)
    assert f"| 1 | {best.number} | {best.value:.4f} |" in md


def test_history_spans_the_completed_trials_with_failures_on_their_own_row(sweep):
    _, study = sweep
    view = reports.SweepView(study, study.trials)
    done = _by_state(study, TrialState.COMPLETE)
    failed = _by_state(study, TrialState.FAIL)
    lo, hi = reports.value_limits(t.value for t in done)
    assert 0.5 < lo < min(t.value for t in done) and max(t.value for t in done) < hi < 1.0
    ax = reports.history_figure(view).axes[0]
    assert ax.get_ylim() == pytest.approx((lo, hi))  # neither 0 nor chance stretches it
    assert _xy(_marks(ax, "completed (16)")) == (
        [t.number for t in done], pytest.approx([t.value for t in done]))
    marks = _marks(ax, "failed / diverged (5)")
    assert _xy(marks)[0] == [t.number for t in failed]
    _on_row(ax, marks, FAILED_ROW)
    # Pruned trials at their best reported value when inside the range, else on a row.
    stopped = {t.number: view.stopped_value(t) for t in _by_state(study, TrialState.PRUNED)}
    inside = {n: v for n, v in stopped.items() if lo <= v <= hi}
    assert 0 < len(inside) < len(stopped)
    hollow = _marks(ax, f"stopped early ({len(inside)}), at its best value")
    assert _xy(hollow) == (list(inside), pytest.approx(list(inside.values())))
    assert len(hollow.get_facecolor()) == 0
    below = _marks(ax, f"stopped early ({len(stopped) - len(inside)}), value outside")
    assert _xy(below)[0] == [n for n in stopped if n not in inside]
    _on_row(ax, below, LOW_ROW)
    assert "outside the range shown" in _chance(ax).get_label()
    step = _line(ax, "best so far")
    ys = list(step.get_ydata())
    assert ys == sorted(ys) and ys[-1] == pytest.approx(max(t.value for t in done))
    assert step.get_xdata()[-1] == 23  # carried to the last trial
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 23
    _names_its_data(ax.get_title(), *SWEEP_CONTEXT)
    assert reports.value_limits([]) is None
    assert reports.value_limits([0.5]) == pytest.approx((0.5 - 0.2 * 0.025, 0.5 + 0.08 * 0.025))


def test_every_searched_parameter_has_a_slice_ordered_by_importance(sweep):
    _, study = sweep
    importances, _ = reports.param_importances(study)
    view = reports.SweepView(study, study.trials, importances)
    fig = reports.slice_figure(view)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    names = [ax.get_xlabel().split()[0] for ax in panels]
    assert names == sorted(importances, key=importances.get, reverse=True)
    assert sorted(names) == ["alpha", "beta", "sigma"] and names[0] == "sigma"  # value ~ sigma
    done = _by_state(study, TrialState.COMPLETE)
    failed = _by_state(study, TrialState.FAIL)
    limits = reports.value_limits(t.value for t in done)
    for ax, name in zip(panels, names):
        assert ax.get_xscale() == "log"  # every parameter was searched on a log scale
        dist = SWEEP_SPACE[name]
        margin = (dist.high / dist.low) ** 0.04
        assert ax.get_xlim() == pytest.approx((dist.low / margin, dist.high * margin))
        assert ax.get_ylim() == pytest.approx(limits)
        assert _xy(_marks(ax, "completed (16)")) == (
            pytest.approx([t.params[name] for t in done]),
            pytest.approx([t.value for t in done]))
        marks = _marks(ax, "failed / diverged (5)")
        assert _xy(marks)[0] == pytest.approx([t.params[name] for t in failed])
        _on_row(ax, marks, FAILED_ROW)
        _chance(ax)
        assert ax.get_title().startswith(f"{name}: importance {importances[name]:.2f}")
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel().startswith("trial number")
    assert "most important first (fANOVA)" in fig.get_suptitle()
    _names_its_data(fig.get_suptitle(), *SWEEP_CONTEXT)


def test_scatter_and_importance_show_the_most_important_parameters(sweep):
    _, study = sweep
    importances, _ = reports.param_importances(study)
    view = reports.SweepView(study, study.trials, importances)
    first, second = sorted(importances, key=importances.get, reverse=True)[:2]
    fig = reports.scatter_figure(view)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith(first) and ax.get_ylabel().startswith(second)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    done = _by_state(study, TrialState.COMPLETE)
    colored = [c for c in ax.collections if not c.get_label() or c.get_label()[0] == "_"]
    assert len(colored) == 1
    assert _xy(colored[0]) == (pytest.approx([t.params[first] for t in done]),
                               pytest.approx([t.params[second] for t in done]))
    assert list(colored[0].get_array()) == pytest.approx([t.value for t in done])
    assert _xy(_marks(ax, "failed / diverged (5)"))[0] == pytest.approx(
        [t.params[first] for t in _by_state(study, TrialState.FAIL)])
    assert len(_marks(ax, "stopped early (3)").get_offsets()) == 3
    assert fig.axes[1].get_ylabel() == view.value_label  # the colour bar says what colour is
    _names_its_data(ax.get_title(), *SWEEP_CONTEXT)
    ax = reports.importance_figure(view).axes[0]
    bars = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
    assert bars == pytest.approx(importances)
    assert sum(bars.values()) == pytest.approx(1.0)
    _names_its_data(ax.get_title(), *SWEEP_CONTEXT)


def test_curves_draw_every_trial_that_ran_an_epoch_with_the_best_highlighted(sweep):
    _, study = sweep
    ax = reports.curves_figure(reports.SweepView(study, study.trials)).axes[0]
    done = _by_state(study, TrialState.COMPLETE)
    best = sorted(done, key=lambda t: -t.value)[:3]
    for t in best:
        line = _line(ax, f"trial {t.number} (value {t.value:.4g})")
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert list(line.get_ydata()) == pytest.approx(
            [r["val_top1"] for r in t.user_attrs["history"]])
    lines = ax.get_lines()
    red = [line for line in lines if matplotlib.colors.same_color(line.get_color(), "tab:red")]
    dotted = [line for line in lines if line.get_linestyle() == ":"
              and not line.get_label().startswith("chance")]
    # 16 completed (3 highlighted) + 3 pruned + 3 failed that ran an epoch, and chance.
    assert len(lines) == 16 + 3 + 3 + 1 and len(red) == 3 and len(dotted) == 3
    ends = [c for c in ax.collections if c.get_label()[:1] in ("", "_")]
    assert sorted(_xy(c)[0][0] for c in ends) == [1, 1, 1]  # each failure's x at its last epoch
    _chance(ax)
    assert ax.get_xlim() == pytest.approx((0.7, 4.3))
    assert list(ax.get_xticks()) == [1, 2, 3, 4]
    assert "2 trials recorded no epoch" in ax.get_title()
    _names_its_data(ax.get_title(), *SWEEP_CONTEXT)


def test_relaxations_place_every_planned_trial_and_count_the_others(sweep):
    _, study = sweep
    ax = reports.relaxation_figure(reports.SweepView(study, study.trials)).axes[0]
    planned = [t for t in study.trials if "relaxations_min" in t.user_attrs]
    assert len(planned) == 22
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(planned)
    beyond = [t for t in planned if t.state == TrialState.COMPLETE
              and t.user_attrs["stability_ratio_max"] > 1]
    stable = [t for t in planned if t.state == TrialState.COMPLETE and t not in beyond]
    assert beyond and stable
    assert _xy(_marks(ax, f"completed ({len(stable)})")) == (
        pytest.approx([t.user_attrs["relaxations_min"] for t in stable]),
        pytest.approx([t.value for t in stable]))
    marks = _marks(ax, f"completed, B beyond its stability limit ({len(beyond)})")
    assert _xy(marks)[0] == pytest.approx([1e-3] * len(beyond))  # at the left edge
    _on_row(ax, _marks(ax, "failed / diverged (3)"), FAILED_ROW)
    assert list(_line(ax, "3 relaxation times").get_xdata()) == [3.0, 3.0]
    assert ax.get_xscale() == "log"
    assert "not shown: 2 trials with no recorded plan for B (2 failed" in ax.get_title()
    _names_its_data(ax.get_title(), *SWEEP_CONTEXT)


def test_curvature_and_architectures_figures(url):
    study = optuna.create_study(study_name="weight_mirror.digits.multi", storage=url,
                                direction="maximize")
    for key, value in {"rule": "weight_mirror", "arch": "resnet8", "dataset": "digits",
                       "epochs": EPOCHS, "seed": 0, "objective": "min",
                       "archs": ["resnet8", "resnet14"]}.items():
        study.set_user_attr(key, value)
    by_arch = [{"resnet8": 0.8, "resnet14": 0.7}, {"resnet8": 0.9, "resnet14": 0.85},
               {"resnet8": 0.6, "resnet14": 0.75}]
    for i, accuracies in enumerate(by_arch):
        study.add_trial(create_trial(
            value=min(accuracies.values()), params={"alpha": 10.0 ** -i},
            distributions={"alpha": LOG},
            user_attrs={"val_top1_by_arch": accuracies, "top_eigenvalue": 10.0 ** (i + 1),
                        "generalization_gap": 0.01 * i}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"alpha": 1.0},
                                 distributions={"alpha": LOG}))
    view = reports.SweepView(study, study.trials)
    ax = reports.architectures_figure(view).axes[0]
    ranked = [1, 0, 2]  # trials by objective (min over architectures), best first
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"#{n}" for n in ranked]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([by_arch[n]["resnet8"] for n in ranked]
                                    + [by_arch[n]["resnet14"] for n in ranked])
    assert _xy(_marks(ax, "objective (min)"))[1] == pytest.approx(
        [min(by_arch[n].values()) for n in ranked])
    _chance(ax)
    fig = reports.curvature_figure(view)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert _xy(ax.collections[0]) == (pytest.approx([10.0, 100.0, 1000.0]),
                                      pytest.approx([0.7, 0.85, 0.6]))
    assert list(ax.collections[0].get_array()) == pytest.approx([0.0, 0.01, 0.02])
    assert "not shown: 1 trials that measured none" in ax.get_title()
    # No trial measured the curvature: no figure.
    assert reports.curvature_figure(reports.SweepView(study, study.trials[3:])) is None


def test_a_foreign_study_gets_no_curves_no_chance_and_no_versions(url, tmp_path):
    study = optuna.create_study(study_name="mini", storage=url, direction="minimize")
    for a in (5.0, 2.0, 7.0):
        study.add_trial(create_trial(value=a + 3, params={"a": a},
                                     distributions={"a": FloatDistribution(0, 10)}))
    out = tmp_path / "mini"
    assert main(["report", "--study", "mini", "--storage", url, "--out", str(out)]) == 0
    assert not (out / "curves.png").exists()
    view = reports.SweepView(study, study.trials)
    assert reports.curves_figure(view) is None
    ax = reports.slice_figure(view).axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim() == pytest.approx((-0.4, 10.4))
    assert not [line for line in ax.get_lines() if "chance" in line.get_label()]
    title = _png_title(out / "slices.png")
    assert "study mini" in title and "3 trials: 3 complete" in title
    assert "Versions not recorded" in (out / "summary.md").read_text()


# --- transfer studies ------------------------------------------------------------------------

def _transfer_set(url: str) -> reports.TransferSet:
    return reports.TransferSet.load([optuna.load_study(study_name=n, storage=url)
                                     for n in TRANSFERS])


def test_accuracy_vs_depth_shows_each_rule_backprop_and_what_diverged(url):
    for rule in ("weight_mirror", "symmetric_alignment"):
        make_transfer(url, rule)
    ax = reports.accuracy_depth_figure(_transfer_set(url)).axes[0]
    wm = TRANSFERRED["weight_mirror"]
    assert _errorbar(ax, "weight_mirror (transferred from weight_mirror.resnet8.digits)") == (
        [8, 14], pytest.approx([statistics.fmean(wm["resnet8"]),
                                statistics.fmean(wm["resnet14"])]))
    sa = TRANSFERRED["symmetric_alignment"]
    assert _errorbar(ax, "symmetric_alignment (transferred from "
                         "symmetric_alignment.defaults.digits)") == (
        [8, 14, 20], pytest.approx([statistics.fmean(sa["resnet8"]),
                                    statistics.fmean(sa["resnet14"]), 0.85]))
    assert _errorbar(ax, "backprop") == (
        [8, 14, 20], pytest.approx([statistics.fmean(v) for v in BACKPROP.values()]))
    lost = _marks(ax, "weight_mirror: every seed diverged")
    assert _xy(lost)[0] == [20]
    _on_row(ax, lost, 0.03)
    short = [t for t in ax.texts if t.get_text() == "1/3 seeds"]
    assert len(short) == 1 and short[0].xy == pytest.approx((20, 0.85))
    _chance(ax)
    assert list(ax.get_xticks()) == [8, 14, 20]
    _names_its_data(ax.get_title(), "3 seeds", "weight_mirror: 18 runs: 15 complete, 3 failed",
                    "symmetric_alignment: 18 runs: 16 complete, 2 failed")


def test_layer_angles_draw_one_line_per_target_against_90_degrees(url):
    for rule in ("weight_mirror", "symmetric_alignment"):
        make_transfer(url, rule)
    ax = reports.layer_angle_figure(_transfer_set(url)).axes[0]
    assert list(_line(ax, "90°").get_ydata()) == [90, 90]
    assert ax.get_ylim() == (0, 95)
    for rule, values in TRANSFERRED.items():
        for target, layers in DEPTH_LAYERS.items():
            seeds = [s for s, v in enumerate(values[target]) if v is not None]
            if not seeds:  # every run diverged: no angles to draw
                assert not [line for line in ax.get_lines()
                            if line.get_label().startswith(f"{rule} {target}")]
                continue
            line = _line(ax, f"{rule} {target} ({len(seeds)} completed runs)")
            assert list(line.get_xdata()) == pytest.approx(
                [i / (layers - 1) for i in range(layers)])  # first layer 0, classifier 1
            assert list(line.get_ydata()) == pytest.approx(
                [80.0 - 3 * i + statistics.fmean(seeds) for i in range(layers)])
    assert len(ax.get_lines()) == 5 + 1
    _names_its_data(ax.get_title(), "3 seeds")


def test_curvature_vs_depth_draws_the_measured_means(url):
    make_transfer(url, "weight_mirror", curvature=True)
    group = reports.TransferSet.load([optuna.load_study(study_name=TRANSFERS[0], storage=url)])
    fig = reports.curvature_depth_figure(group)
    eigen, scaled, gap = fig.axes
    assert eigen.get_yscale() == "log" and gap.get_yscale() == "linear"
    assert scaled.get_yscale() == "log" and "‖W‖²" in scaled.get_ylabel()
    assert _errorbar(scaled, "weight_mirror") == ([8, 14], pytest.approx([1699.0, 2899.0]))
    # Each seed's eigenvalue is 2 x layers + seed for a transferred run, layers + seed for
    # backprop; the mean over the completed seeds 0-2 adds 1.
    assert _errorbar(eigen, "weight_mirror") == ([8, 14], pytest.approx([17.0, 29.0]))
    assert _errorbar(eigen, "backprop") == ([8, 14, 20], pytest.approx([9.0, 15.0, 21.0]))
    assert _errorbar(gap, "backprop") == ([8, 14, 20], pytest.approx([0.081, 0.141, 0.201]))
    _names_its_data(fig.get_suptitle(), "3 seeds")
    make_transfer(url, "symmetric_alignment")  # without --curvature: no figure
    assert reports.curvature_depth_figure(reports.TransferSet.load(
        [optuna.load_study(study_name=TRANSFERS[1], storage=url)])) is None


def test_transfer_report_writes_its_figures_and_versions(url, tmp_path):
    for rule in ("weight_mirror", "symmetric_alignment"):
        make_transfer(url, rule)
    out = tmp_path / "transfer"
    assert main(["report", "--transfer", TRANSFERS[0], "--transfer", TRANSFERS[1],
                 "--storage", url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_depth.png",
                                                     "layer_angles.png", "summary.md"]
    for name in ("accuracy_vs_depth.png", "layer_angles.png"):
        _names_its_data(_png_title(out / name), "3 seeds",
                        "weight_mirror: 18 runs: 15 complete, 3 failed")
    lines = (out / "summary.md").read_text().splitlines()
    assert lines.count(RECORDED) == 2  # one per study's section
    assert f"| resnet14 | 14 | {statistics.fmean(TRANSFERRED['weight_mirror']['resnet14']):.4f}" \
        in "\n".join(lines)


# --- robustness studies ----------------------------------------------------------------------

def test_noise_figure_shows_each_rule_over_the_variances(url, tmp_path):
    study = make_robustness(url)
    summary = summarize_robustness(study)
    context = robustness_context(study, summary)
    ax = reports.noise_figure(summary, context).axes[0]
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == pytest.approx([1e-3, 1e-2, 1e-1])  # 0: a decade left
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.01", "0.1"]
    assert _errorbar(ax, "backprop") == ([pytest.approx(1e-3), 1e-2, 1e-1], pytest.approx(
        [statistics.fmean(NOISY[("backprop", v)]) for v in (0.0, 1e-2, 1e-1)]))
    assert _errorbar(ax, "symmetric_alignment") == ([pytest.approx(1e-3), 1e-2], pytest.approx(
        [statistics.fmean(NOISY[("symmetric_alignment", v)]) for v in (0.0, 1e-2)]))
    lost = _marks(ax, "symmetric_alignment: every seed diverged")
    assert _xy(lost)[0] == [0.1]
    _on_row(ax, lost, 0.03)
    _chance(ax)
    _names_its_data(ax.get_title(), "resnet8", "2 seeds", "12 runs: 10 complete, 2 failed")
    fig = reports.curvature_rule_figure(summary, context)
    eigen, scaled, gap = fig.axes
    assert eigen.get_yscale() == "log"
    assert _errorbar(scaled, "update-noise variance 0")[1] == pytest.approx([5.5, 5.5])
    assert [t.get_text() for t in eigen.get_xticklabels()] == ["symmetric_alignment",
                                                               "backprop"]
    # Per noise variance a series over the rules that measured there (seeds 0 and 1: +0.5).
    assert _errorbar(eigen, "update-noise variance 0")[1] == pytest.approx([10.5, 10.5])
    assert _errorbar(eigen, "update-noise variance 0.1")[1] == pytest.approx([11.5])
    assert _errorbar(gap, "update-noise variance 0.01")[1] == pytest.approx([0.03, 0.03])
    _names_its_data(fig.get_suptitle(), "2 seeds")
    out = tmp_path / "noise"
    assert main(["report", "--robustness", "robustness.resnet8.digits", "--storage", url,
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_noise.png",
                                                     "curvature_by_rule.png", "summary.md"]
    _names_its_data(_png_title(out / "accuracy_vs_noise.png"), "2 seeds")
    assert RECORDED in (out / "summary.md").read_text().splitlines()


# --- method x depth table --------------------------------------------------------------------

def _cell(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "every seed diverged"
    if len(done) == 1:
        return f"{100 * done[0]:.1f} ± n/a (1 seed)"
    return f"{100 * statistics.fmean(done):.1f} ± {100 * statistics.stdev(done):.1f}"


def test_table_cells_are_the_means_over_seeds_of_the_stored_trials(url, tmp_path, capsys):
    for rule in ("weight_mirror", "symmetric_alignment"):
        make_transfer(url, rule)
    out = tmp_path / "table"
    assert main(["report", "--table", "--transfer", TRANSFERS[0], "--transfer", TRANSFERS[1],
                 "--storage", url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md"]
    lines = (out / "table.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| rule |"))
    assert header == "| rule | resnet8 | resnet14 | resnet20 |"  # by depth
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:]
            for line in lines[lines.index(header) + 2:] if line.startswith("| ")}
    assert list(rows) == ["backprop", "weight_mirror", "symmetric_alignment"]
    # Stored trials, read back from the database: the cells are their means over seeds.
    for name, rule in zip(TRANSFERS, ("weight_mirror", "symmetric_alignment")):
        trials = optuna.load_study(study_name=name, storage=url).trials
        for i, target in enumerate(BACKPROP):
            for role, row in (("transferred", rule), ("backprop", "backprop")):
                values = [t.value for t in trials if t.user_attrs["role"] == role
                          and t.user_attrs["target_arch"] == target]
                assert rows[row][i] == _cell(values), (row, target)
    assert lines.count(RECORDED) == 1  # the studies agree: said once
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["rule"] for r in table] == list(rows)
    assert float(table[1]["resnet14_mean"]) == pytest.approx(
        statistics.fmean(TRANSFERRED["weight_mirror"]["resnet14"]))
    assert table[2]["resnet20_std"] == "" and table[2]["resnet20_seeds"] == "1"
    assert table[1]["resnet20_mean"] == ""  # every seed diverged


def test_table_needs_transfer_studies(url, tmp_path, capsys):
    make_sweep(url)
    assert main(["report", "--table", "--study", "weight_mirror.resnet8.digits",
                 "--storage", url, "--out", str(tmp_path / "t")]) == 2
    assert "--table" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_table_keeps_baselines_of_other_seeds_apart(url, tmp_path):
    """Backprop over 3 seeds and over 1 seed are different numbers: each gets its own row,
    named by its study, rather than one silently standing for both."""
    make_transfer(url, "weight_mirror")
    study = make_transfer(url, "symmetric_alignment", seeds=1)
    study.set_user_attr("versions", {**VERSIONS, "torch": "2.15.0"})
    out = tmp_path / "table"
    assert main(["report", "--table", "--transfer", TRANSFERS[0], "--transfer", TRANSFERS[1],
                 "--storage", url, "--out", str(out)]) == 0
    text = (out / "table.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| backprop")]
    assert [r[0] for r in rows] == [f"| backprop (baseline of {TRANSFERS[0]})",
                                    f"| backprop (baseline of {TRANSFERS[1]})"]
    assert rows[0][1] == _cell(BACKPROP["resnet8"])
    assert rows[1][1] == _cell(BACKPROP["resnet8"][:1]) == "81.0 ± n/a (1 seed)"
    # Studies recorded with different versions: each says its own.
    assert f"{describe(VERSIONS)} (`{TRANSFERS[0]}`)" in text
    assert "torch 2.15.0" in text and RECORDED not in text


def test_reading_reports_imports_no_ray():
    """``report`` starts at once: nothing on its path imports Ray (it took seconds)."""
    code = ("import sys, search.cli.report, search.reports, search.summaries; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
