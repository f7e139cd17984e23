"""The report's figures and table, drawn from small real Optuna studies in SQLite that hold
trials as the recorder writes them (user attributes, per-epoch history, intermediate values),
failed and pruned ones included: what each figure shows, its axis ranges and titles, and the
method x depth table's numbers against the stored trials."""

from __future__ import annotations

import csv
import math
import random
import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from search import report
from search.cli import main

LOG = FloatDistribution(1e-6, 10.0, log=True)
SWEEP_SPACE = {"alpha": LOG, "beta": LOG, "sigma": FloatDistribution(0.01, 10.0, log=True)}
EPOCHS = 4


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
                       "searcher": "tpe"}.items():
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
                  source_trial: int | None, layers: int) -> optuna.trial.FrozenTrial:
    attrs = {"role": role, "target_arch": target, "seed": seed, "source_trial": source_trial,
             "run_key": f"{role}|{target}|{source_trial}|{seed}",
             "status": "completed" if value is not None else "diverged",
             "diagnostics_per_layer": {f"layer{i}": {"weight_angle": 80.0 - 8 * i + seed}
                                       for i in range(layers)}}
    if role == "transferred":
        attrs.update(source_study="weight_mirror.resnet8.digits", metaparameters={"alpha": .1})
    if value is None:
        return create_trial(state=TrialState.FAIL, user_attrs=attrs)
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


def make_transfer(url: str, rule: str, seeds: int = 3) -> optuna.Study:
    """A transfer study as ``transfer`` records it, with its own backprop runs; ``seeds``
    fewer than 3 keeps the first seeds' values."""
    source = "resnet8" if rule == "weight_mirror" else "defaults"
    study = optuna.create_study(study_name=f"transfer.{rule}.{source}.digits", storage=url,
                                direction="maximize")
    for key, value in {"kind": "transfer", "rule": rule, "arch": source, "dataset": "digits",
                       "source_study": f"{rule}.{source}.digits", "targets": list(BACKPROP),
                       "epochs": EPOCHS, "seeds": seeds, "top_k": 1, "select": "best"}.items():
        study.set_user_attr(key, value)
    for target, values in TRANSFERRED[rule].items():
        for seed, value in enumerate(values[:seeds]):
            study.add_trial(_transfer_run("transferred", target, seed, value, 7,
                                          DEPTH_LAYERS[target]))
            study.add_trial(_transfer_run("backprop", target, seed, BACKPROP[target][seed],
                                          None, DEPTH_LAYERS[target]))
    return study


def make_robustness(url: str) -> optuna.Study:
    study = optuna.create_study(study_name="robustness.resnet8.digits", storage=url,
                                direction="maximize")
    for key, value in {"kind": "robustness", "arch": "resnet8", "dataset": "digits",
                       "rules": ["symmetric_alignment", "backprop"], "noise": [0.0, 1e-2],
                       "seeds": 2, "epochs": EPOCHS}.items():
        study.set_user_attr(key, value)
    for rule, base in (("symmetric_alignment", 0.8), ("backprop", 0.84)):
        for noise in (0.0, 1e-2):
            for seed in range(2):
                study.add_trial(create_trial(value=base - 3 * noise + 0.01 * seed, user_attrs={
                    "rule": rule, "noise": noise, "seed": seed, "status": "completed",
                    "run_key": f"{rule}|{noise}|{seed}"}))
    return study


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"


def _image(path) -> Image.Image:
    """A real PNG of some size and content: PIL decodes it, not a blank canvas."""
    assert path.stat().st_size > 10_000, path
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 300
        assert len(img.convert("L").getcolors(maxcolors=256) or range(256)) > 20
        return img


def _names_its_data(title: str, *words: str) -> None:
    for word in ("digits", f"{EPOCHS} epochs", *words):
        assert word in title, (word, title)


def test_study_report_draws_every_figure_and_names_its_data(url, tmp_path):
    make_sweep(url)
    out = tmp_path / "report"
    assert main(["report", "--study", "weight_mirror.resnet8.digits", "--storage", url,
                 "--out", str(out)]) == 0
    for name in ("history.png", "slices.png", "curves.png", "scatter.png", "importance.png",
                 "relaxations.png"):
        title = _image(out / name).text["Title"]
        _names_its_data(title, "seed 0", "24 trials: 16 complete, 5 failed, 3 pruned")
        assert "weight_mirror on resnet8" in title
        assert name in (out / "summary.md").read_text()
    # relaxations.png says which trials it leaves out, and why.
    assert "not shown: 2 trials with no recorded plan for B (2 failed" in \
        _image(out / "relaxations.png").text["Title"]


def test_history_range_is_the_completed_trials_and_failures_sit_on_a_row(url):
    study = make_sweep(url)
    view = report.SweepView(study, study.trials)
    done = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    lo, hi = report.value_limits(done)
    assert 0.0 < lo < min(done) and max(done) < hi < 1.0
    assert report.value_limits([]) is None
    assert report.value_limits([0.5]) == pytest.approx((0.5 - 0.2 * 0.025, 0.5 + 0.08 * 0.025))
    fig = report.history_figure(view)
    ax = fig.axes[0]
    assert ax.get_ylim() == pytest.approx((lo, hi))  # the failures' 0 is not in it
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("failed / diverged (5)") for label in labels)
    stopped = [view.stopped_value(t) for t in study.trials if t.state == TrialState.PRUNED]
    inside = sum(lo <= v <= hi for v in stopped)
    assert 0 < inside < len(stopped)  # the study has pruned trials on both sides
    assert f"stopped early ({inside}), at its best value" in labels
    assert any(label.startswith(f"stopped early ({len(stopped) - inside}), value outside")
               for label in labels)  # drawn on a row of their own, not stretching the axis
    assert any("chance" in label and "outside the range" in label for label in labels)
    step = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    assert max(step.get_ydata()) == pytest.approx(max(done))
    assert step.get_xdata()[-1] == 23  # carried to the last trial
    report.plt.close(fig)


def test_every_searched_parameter_has_a_slice_ordered_by_importance(url):
    study = make_sweep(url)
    importances, _ = report.param_importances(study)
    view = report.SweepView(study, study.trials, importances)
    fig = report.slice_figure(view)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    names = [ax.get_xlabel().split()[0] for ax in panels]
    assert sorted(names) == ["alpha", "beta", "sigma"]
    assert names == sorted(importances, key=importances.get, reverse=True)
    assert names[0] == "sigma"  # the value follows sigma alone
    for ax in panels:
        assert ax.get_xscale() == "log"  # every parameter was searched on a log scale
        assert ax.get_ylim()[0] > 0.3  # the completed range, not the failures' 0
    report.plt.close(fig)
    scatter = report.scatter_figure(view)
    assert scatter.axes[0].get_xlabel().startswith("sigma")  # the most important first
    report.plt.close(scatter)


def test_curves_draw_every_trial_with_the_best_highlighted(url):
    study = make_sweep(url)
    fig = report.curves_figure(report.SweepView(study, study.trials))
    ax = fig.axes[0]
    best = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: -t.value)[:3]
    labels = [line.get_label() for line in ax.get_lines()]
    for t in best:
        assert f"trial {t.number} (value {t.value:.4g})" in labels
    # 16 completed + 3 pruned + 3 failed with an epoch, and the chance line.
    assert len(ax.get_lines()) == 16 + 3 + 3 + 1
    assert "2 trials recorded no epoch" in ax.get_title()
    report.plt.close(fig)


def test_a_foreign_study_without_history_gets_no_curves(url, tmp_path):
    study = optuna.create_study(study_name="mini", storage=url, direction="minimize")
    for a in (5.0, 2.0, 7.0):
        study.add_trial(create_trial(value=a + 3, params={"a": a},
                                     distributions={"a": FloatDistribution(0, 10)}))
    out = tmp_path / "mini"
    assert main(["report", "--study", "mini", "--storage", url, "--out", str(out)]) == 0
    assert not (out / "curves.png").exists()
    title = _image(out / "slices.png").text["Title"]
    assert "study mini" in title and "3 trials: 3 complete" in title


def test_transfer_and_noise_figures_name_seeds_and_epochs_and_draw_references(url, tmp_path):
    for rule in ("weight_mirror", "symmetric_alignment"):
        make_transfer(url, rule)
    make_robustness(url)
    out = tmp_path / "transfer"
    assert main(["report", "--transfer", "transfer.weight_mirror.resnet8.digits",
                 "--transfer", "transfer.symmetric_alignment.defaults.digits",
                 "--storage", url, "--out", str(out)]) == 0
    for name in ("accuracy_vs_depth.png", "layer_angles.png"):
        _names_its_data(_image(out / name).text["Title"], "3 seeds",
                        "weight_mirror: 18 runs: 15 complete, 3 failed")
    group = report.TransferSet.load([optuna.load_study(study_name=n, storage=url) for n in (
        "transfer.weight_mirror.resnet8.digits", "transfer.symmetric_alignment.defaults.digits")])
    angles = report.layer_angle_figure(group).axes[0]
    assert any(line.get_ydata()[0] == 90 for line in angles.get_lines())
    accuracy = report.accuracy_depth_figure(group).axes[0]
    chance = [line for line in accuracy.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == 0.1
    report.plt.close("all")
    out = tmp_path / "noise"
    assert main(["report", "--robustness", "robustness.resnet8.digits", "--storage", url,
                 "--out", str(out)]) == 0
    _names_its_data(_image(out / "accuracy_vs_noise.png").text["Title"], "2 seeds",
                    "8 runs: 8 complete")


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
    assert main(["report", "--table", "--transfer", "transfer.weight_mirror.resnet8.digits",
                 "--transfer", "transfer.symmetric_alignment.defaults.digits",
                 "--storage", url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md"]
    lines = (out / "table.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| rule |"))
    assert header == "| rule | resnet8 | resnet14 | resnet20 |"  # by depth
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:]
            for line in lines[lines.index(header) + 2:] if line.startswith("| ")}
    assert list(rows) == ["backprop", "weight_mirror", "symmetric_alignment"]
    # Stored trials, read back from the database: the cells are their means over seeds.
    for name, rule in (("transfer.weight_mirror.resnet8.digits", "weight_mirror"),
                       ("transfer.symmetric_alignment.defaults.digits",
                        "symmetric_alignment")):
        trials = optuna.load_study(study_name=name, storage=url).trials
        for i, target in enumerate(BACKPROP):
            for role, row in (("transferred", rule), ("backprop", "backprop")):
                values = [t.value for t in trials if t.user_attrs["role"] == role
                          and t.user_attrs["target_arch"] == target]
                assert rows[row][i] == _cell(values), (row, target)
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
    make_transfer(url, "symmetric_alignment", seeds=1)
    out = tmp_path / "table"
    assert main(["report", "--table", "--transfer", "transfer.weight_mirror.resnet8.digits",
                 "--transfer", "transfer.symmetric_alignment.defaults.digits",
                 "--storage", url, "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in (out / "table.md").read_text().splitlines()
            if line.startswith("| backprop")]
    assert [r[0] for r in rows] == [
        "| backprop (baseline of transfer.weight_mirror.resnet8.digits)",
        "| backprop (baseline of transfer.symmetric_alignment.defaults.digits)"]
    assert rows[0][1] == _cell(BACKPROP["resnet8"])
    assert rows[1][1] == _cell(BACKPROP["resnet8"][:1]) == "81.0 ± n/a (1 seed)"
