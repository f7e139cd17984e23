"""Transfer studies end-to-end (real Ray, real SQLite) and the reports drawn from them: the
figures checked by what they show of the stored runs (see tests/test_figures.py for every
figure on hand-made studies)."""

import json
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from dbstate import sqlite_digest
from search import reports
from search.cli import main
from search.execution import Execution
from search.provenance import describe, provenance
from search.sweep import SweepSpec, run_sweep
from search.transfer import TransferSpec, run_transfer, summarize


@pytest.fixture(scope="module")
def source_db(tmp_path_factory, ray_session):
    """A 3-trial weight-mirror sweep on resnet8 (1 epoch): the source of the transfers."""
    root = tmp_path_factory.mktemp("transfer")
    url = f"sqlite:///{root / 'sweeps.db'}"
    run_sweep(SweepSpec(rule="weight_mirror", arch="resnet8", trials=3, epochs=1, storage=url,
                        execution=Execution(ray_dir=str(root / "ray"))),
              progress=lambda line: None)
    return root, url


def _expected(trials, target, role, source_trial=None):
    values = [t.value for t in trials if t.user_attrs["target_arch"] == target
              and t.user_attrs["role"] == role and t.state == TrialState.COMPLETE
              and (role == "backprop" or t.user_attrs["source_trial"] == source_trial)]
    return values


@pytest.mark.slow
def test_transfer_end_to_end_and_reuse(source_db, ray_dir, capsys):
    root, url = source_db
    spec = TransferSpec(rule="weight_mirror", source="resnet8", targets=["resnet8", "resnet14"],
                        top_k=2, seeds=2, storage=url, retune=2)
    summary = run_transfer(spec, progress=lambda line: None)
    study = optuna.load_study(study_name="transfer.weight_mirror.resnet8.digits", storage=url)
    trials = study.get_trials()
    assert len(trials) == 2 * 2 * (2 + 1)  # targets x seeds x (top-k settings + backprop)
    source = optuna.load_study(study_name="weight_mirror.resnet8.digits", storage=url)
    best_two = sorted((t for t in source.trials if t.state == TrialState.COMPLETE),
                      key=lambda t: -t.value)[:2]
    for target in ("resnet8", "resnet14"):
        for seed in (0, 1):
            runs = [t for t in trials if t.user_attrs["target_arch"] == target
                    and t.user_attrs["seed"] == seed]
            roles = sorted(t.user_attrs["role"] for t in runs)
            assert roles == ["backprop", "transferred", "transferred"]
            assert {t.user_attrs["source_trial"] for t in runs
                    if t.user_attrs["role"] == "transferred"} == {t.number for t in best_two}
            for t in runs:
                if t.user_attrs["role"] == "transferred":
                    assert t.user_attrs["source_study"] == "weight_mirror.resnet8.digits"
                    src = next(s for s in best_two if s.number == t.user_attrs["source_trial"])
                    assert t.user_attrs["metaparameters"] == pytest.approx(src.params)
    # The summary equals what the stored trials say.
    for row in summary["rows"]:
        bp = _expected(trials, row["target"], "backprop")
        assert row["backprop_mean"] == pytest.approx(statistics.fmean(bp))
        assert row["backprop_std"] == pytest.approx(statistics.stdev(bp))
        chosen = _expected(trials, row["target"], "transferred", row["best_source_trial"])
        assert row["mean"] == pytest.approx(statistics.fmean(chosen))
        assert row["gap_to_backprop"] == pytest.approx(row["mean"] - row["backprop_mean"])
        others = [statistics.fmean(v) for n in (t.number for t in best_two)
                  if (v := _expected(trials, row["target"], "transferred", n))]
        assert row["mean"] == pytest.approx(max(others))
        retuned = optuna.load_study(study_name=f"weight_mirror.{row['target']}.digits",
                                    storage=url)
        assert row["retuned"] == pytest.approx(retuned.best_value)
    assert len(optuna.load_study(study_name="weight_mirror.resnet14.digits",
                                 storage=url).trials) == 2
    # --select robust: one setting for every target, chosen on the source (resnet8) by the
    # best worst-seed accuracy; the rows report it, not each target's best.
    robust = summarize(study, "robust")
    on_source = {n: min(_expected(trials, "resnet8", "transferred", n))
                 for n in (t.number for t in best_two)}
    assert robust["selected_trial"] == max(on_source, key=on_source.get)
    for row in robust["rows"]:
        chosen = _expected(trials, row["target"], "transferred", robust["selected_trial"])
        assert row["best_source_trial"] == robust["selected_trial"]
        assert row["mean"] == pytest.approx(statistics.fmean(chosen))
        assert row["worst"] == pytest.approx(min(chosen))
    # Re-running reuses every finished run (and the re-tuning sweeps).
    lines = []
    run_transfer(spec, progress=lines.append)
    assert len(study.get_trials()) == 12
    assert lines[0].startswith("every run trains under source study "
                               "weight_mirror.resnet8.digits's configuration: dataset digits")
    assert lines[1].endswith("0 runs to do, 12 reused")
    assert len(optuna.load_study(study_name="weight_mirror.resnet14.digits",
                                 storage=url).trials) == 2
    # transfer-summary prints the same numbers.
    assert main(["transfer-summary", "transfer.weight_mirror.resnet8.digits", "--storage", url,
                 "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["mean"] for r in printed["rows"]] == [r["mean"] for r in summary["rows"]]


def _errorbar(ax, label):
    """x and y of the errorbar series labelled ``label``."""
    found = [c for c in ax.containers if c.get_label().startswith(label)]
    assert len(found) == 1, (label, [c.get_label() for c in ax.containers])
    return list(found[0].lines[0].get_xdata()), list(found[0].lines[0].get_ydata())


@pytest.mark.slow
def test_reports(source_db, ray_dir, tmp_path, capsys):
    root, url = source_db
    curvature = {"curvature": True, "curvature_batches": 1, "curvature_steps": 6}
    summary = run_transfer(TransferSpec(rule="weight_mirror", source="resnet8",
                                        targets=["resnet8"], seeds=2, storage=url,
                                        name="t-report", train=curvature),
                           progress=lambda line: None)
    out = tmp_path / "transfer-report"
    assert main(["report", "--transfer", "t-report", "--out", str(out), "--storage", url]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_depth.png", "curvature_vs_depth.png", "layer_angles.png", "summary.md"]
    study = optuna.load_study(study_name="t-report", storage=url)
    bp = [t.value for t in study.trials if t.user_attrs["role"] == "backprop"]
    md = (out / "summary.md").read_text()
    assert f"{statistics.fmean(bp):.4f} ± {statistics.stdev(bp):.4f}" in md
    recorded = f"Recorded with {describe(provenance())}."
    assert recorded in md.splitlines() and "torch " in recorded
    # The figures show the stored runs: accuracy and curvature at resnet8's depth (8), for
    # the rule and for backprop; one angle per layer, averaged over the completed runs.
    group = reports.TransferSet.load([study])
    row = summary["rows"][0]
    ax = reports.accuracy_depth_figure(group).axes[0]
    assert _errorbar(ax, "weight_mirror") == ([8], [pytest.approx(row["mean"])])
    assert _errorbar(ax, "backprop") == ([8], [pytest.approx(statistics.fmean(bp))])
    assert [line.get_ydata()[0] for line in ax.get_lines()
            if line.get_label().startswith("chance")] == [0.1]
    assert "digits · 1 epoch · 2 seeds" in ax.get_title()
    eigen, scaled, gap = reports.curvature_depth_figure(group).axes
    assert _errorbar(eigen, "weight_mirror") == ([8], [pytest.approx(row["top_eigenvalue"])])
    assert _errorbar(scaled, "weight_mirror") == (
        [8], [pytest.approx(row["top_eigenvalue_scaled"])])
    assert _errorbar(gap, "backprop") == (
        [8], [pytest.approx(row["backprop_generalization_gap"])])
    ax = reports.layer_angle_figure(group).axes[0]
    transferred = [t for t in study.trials if t.user_attrs["role"] == "transferred"
                   and t.state == TrialState.COMPLETE]
    angles = [[v["weight_angle"] for v in t.user_attrs["diagnostics_per_layer"].values()]
              for t in transferred]
    line = next(line for line in ax.get_lines() if line.get_label().startswith(
        f"weight_mirror resnet8 ({len(transferred)} completed runs)"))
    assert len(line.get_xdata()) == len(angles[0]) > 1
    assert list(line.get_ydata()) == pytest.approx([statistics.fmean(a) for a in zip(*angles)],
                                                   nan_ok=True)
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_label().startswith("90°")
            ] == [90]
    reports.plt.close("all")
    # Curvature per rule and depth: the means over the stored runs, for the rule and backprop.
    row = summary["rows"][0]
    for role, prefix in (("transferred", ""), ("backprop", "backprop_")):
        runs = [t for t in study.trials if t.user_attrs["role"] == role
                and (role == "backprop" or t.user_attrs["source_trial"] == row["best_source_trial"])]
        for key in ("top_eigenvalue", "generalization_gap"):
            values = [t.user_attrs[key] for t in runs]
            assert len(values) == 2 and row[f"{prefix}{key}"] == pytest.approx(
                statistics.fmean(values))
        assert all(t.user_attrs["top_eigenvalue"] > 0 for t in runs)
    assert "λ_max" in md and f"{row['top_eigenvalue']:.3g} ± " in md
    capsys.readouterr()
    assert main(["transfer-summary", "t-report", "--storage", url, "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "backprop_top_eigenvalue" in header.split(",") and "generalization_gap" in header
    out = tmp_path / "study-report"
    assert main(["report", "--study", "weight_mirror.resnet8.digits", "--out", str(out),
                 "--storage", url]) == 0
    written = {p.name for p in out.iterdir()}
    assert {"history.png", "slices.png", "curves.png", "scatter.png", "importance.png",
            "relaxations.png", "summary.md"} <= written
    source = optuna.load_study(study_name="weight_mirror.resnet8.digits", storage=url)
    md = (out / "summary.md").read_text()
    assert f"| 1 | {source.best_trial.number} | {source.best_value:.4f} |" in md
    assert recorded in md.splitlines()
    # history.png: every completed trial at its value, the best so far ending at the best.
    done = sorted((t for t in source.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.number)
    ax = reports.history_figure(reports.SweepView(source, source.trials)).axes[0]
    points = next(c for c in ax.collections if c.get_label().startswith("completed"))
    assert list(points.get_offsets()[:, 0]) == [t.number for t in done]
    assert list(points.get_offsets()[:, 1]) == pytest.approx([t.value for t in done])
    best = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    assert best.get_ydata()[-1] == pytest.approx(source.best_value)
    assert "weight_mirror on resnet8" in ax.get_title() and "digits · 1 epoch" in ax.get_title()
    # curves.png: the recorded epoch of every trial that ran one.
    ax = reports.curves_figure(reports.SweepView(source, source.trials)).axes[0]
    assert list(ax.get_xticks()) == [1]
    reports.plt.close("all")


@pytest.mark.slow
@pytest.mark.parametrize("args,match", [
    (["--source", "resnet20"], "no source study 'weight_mirror.resnet20.digits'; no sweep "
                               "of weight_mirror on resnet20 here"),
    (["--source", "resnet8", "--source-study", "empty"], "is not a creditsweep sweep"),
    (["--source", "resnet14", "--source-study", "weight_mirror.resnet8.digits"],
     "--source resnet14: source study 'weight_mirror.resnet8.digits' was swept on resnet8"),
    (["--targets", "resnet8,resnet9"], "unknown architecture 'resnet9'"),
    (["--top-k", "50"], "--top-k 50 but source study"),
    (["--seeds", "0"], "--seeds must be at least 1"),
])
def test_transfer_bad_input(source_db, args, match, capsys):
    root, url = source_db
    if "empty" in args:
        optuna.create_study(study_name="empty", storage=url, load_if_exists=True)
    before = sqlite_digest(url)
    base = {"--rule": "weight_mirror", "--source": "resnet8", "--targets": "resnet14"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["transfer", "--storage", url, "--name", "never"]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert sqlite_digest(url) == before
    assert "never" not in [s.study_name for s in optuna.get_all_study_summaries(url)]


@pytest.mark.slow
def test_transfer_official_defaults_needs_no_source(source_db, ray_dir):
    root, url = source_db
    summary = run_transfer(TransferSpec(rule="symmetric_alignment", source=None,
                                        targets=["resnet8"], seeds=1, epochs=1, storage=url,
                                        defaults=True), progress=lambda line: None)
    study = optuna.load_study(study_name="transfer.symmetric_alignment.defaults.digits",
                              storage=url)
    runs = {t.user_attrs["role"]: t for t in study.trials}
    assert set(runs) == {"backprop", "transferred"}
    assert runs["transferred"].user_attrs["metaparameters"] == {"alpha": 1e-3, "beta": 2e-3}
    assert summary["rows"][0]["backprop_mean"] == runs["backprop"].value


@pytest.mark.slow
def test_transfer_needs_source_or_defaults(source_db, capsys):
    root, url = source_db
    assert main(["transfer", "--rule", "weight_mirror", "--targets", "resnet8",
                 "--storage", url]) == 2
    assert "either --source" in capsys.readouterr().err


@pytest.mark.slow
def test_robust_selection_chooses_on_the_source_and_transfers_only_that(source_db, ray_dir):
    """Every top-k setting runs on the source (resnet8, not a target here); only the one with
    the best worst seed there runs on the target."""
    root, url = source_db
    summary = run_transfer(TransferSpec(rule="weight_mirror", source="resnet8",
                                        targets=["mlp"], top_k=2, seeds=2, epochs=1,
                                        storage=url, name="t-robust", select="robust"),
                           progress=lambda line: None)
    study = optuna.load_study(study_name="t-robust", storage=url)
    trials = study.trials
    on_source = [t for t in trials if t.user_attrs["target_arch"] == "resnet8"]
    assert len(on_source) == 2 * 2 and {t.user_attrs["role"] for t in on_source} == {
        "transferred"}
    worst = {n: min(_expected(trials, "resnet8", "transferred", n))
             for n in {t.user_attrs["source_trial"] for t in on_source}}
    chosen = max(worst, key=worst.get)
    assert study.user_attrs["selected_trial"] == summary["selected_trial"] == chosen
    on_target = [t for t in trials if t.user_attrs["target_arch"] == "mlp"]
    assert sorted((t.user_attrs["role"], t.user_attrs["source_trial"]) for t in on_target) \
        == sorted([("backprop", None)] * 2 + [("transferred", chosen)] * 2)
    assert summary["rows"][0]["best_source_trial"] == chosen


@pytest.mark.slow
def test_transfers_share_one_baseline_study(source_db, ray_dir, tmp_path, capsys):
    """Two rules' transfers with --baseline-study: backprop runs once per target and seed,
    and both summaries compare against those runs."""
    root, url = source_db
    for rule in ("symmetric_alignment", "activation_alignment"):
        run_transfer(TransferSpec(rule=rule, source=None, defaults=True, targets=["resnet8"],
                                  seeds=1, epochs=1, storage=url, name=f"shared-{rule}",
                                  baseline_study="bp-shared"), progress=lambda line: None)
    baseline = optuna.load_study(study_name="bp-shared", storage=url).trials
    assert [t.user_attrs["role"] for t in baseline] == ["backprop"]
    for rule in ("symmetric_alignment", "activation_alignment"):
        study = optuna.load_study(study_name=f"shared-{rule}", storage=url)
        assert [t.user_attrs["role"] for t in study.trials] == ["transferred"]
        assert main(["transfer-summary", f"shared-{rule}", "--storage", url,
                     "--format", "json"]) == 0
        row = json.loads(capsys.readouterr().out)["rows"][0]
        assert row["backprop_mean"] == baseline[0].value
        assert row["gap_to_backprop"] == pytest.approx(study.trials[0].value
                                                       - baseline[0].value)
    out = tmp_path / "shared-report"
    assert main(["report", "--transfer", "shared-symmetric_alignment", "--transfer",
                 "shared-activation_alignment", "--storage", url, "--out", str(out)]) == 0
    assert f"{baseline[0].value:.4f}" in (out / "summary.md").read_text()


def test_a_transfer_named_by_its_source_study_takes_the_source_architecture():
    """--source-study alone: the transfer study is named, and its arch recorded, after the
    architecture the source was swept on, not 'None'."""
    from search.transfer import _with_source_dataset

    source = optuna.create_study(study_name="ar", storage="sqlite:///:memory:")
    source.set_user_attr("arch", "mlp")
    source.set_user_attr("dataset", "digits")
    spec = TransferSpec(rule="activation_relaxation", source=None, source_study="ar",
                        targets=["mlp4"])
    resolved = _with_source_dataset(spec, source)
    assert resolved.source == "mlp" and resolved.dataset == "digits"
    assert resolved.study_name() == "transfer.activation_relaxation.mlp.digits"
