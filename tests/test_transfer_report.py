"""Transfer studies end-to-end (real Ray, real SQLite) and the reports drawn from them."""

import json
import statistics

import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from dbstate import sqlite_digest
from search.cli import main
from search.execution import Execution
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


def _png_ok(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    with Image.open(path) as img:
        assert img.size[0] > 400 and img.size[1] > 300
        assert len(img.convert("L").getcolors(maxcolors=256)) > 20  # not a blank canvas


def test_reports(source_db, ray_dir, tmp_path, capsys):
    root, url = source_db
    curvature = {"curvature": True, "curvature_batches": 1, "curvature_steps": 6}
    summary = run_transfer(TransferSpec(rule="weight_mirror", source="resnet8",
                                        targets=["resnet8"], seeds=2, storage=url,
                                        name="t-report", train=curvature),
                           progress=lambda line: None)
    out = tmp_path / "transfer-report"
    assert main(["report", "--transfer", "t-report", "--out", str(out), "--storage", url]) == 0
    for name in ("accuracy_vs_depth.png", "layer_angles.png", "curvature_vs_depth.png"):
        _png_ok(out / name)
    study = optuna.load_study(study_name="t-report", storage=url)
    bp = [t.value for t in study.trials if t.user_attrs["role"] == "backprop"]
    md = (out / "summary.md").read_text()
    assert f"{statistics.fmean(bp):.4f} ± {statistics.stdev(bp):.4f}" in md
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
    for name in ("history.png", "scatter.png", "importance.png", "relaxations.png"):
        _png_ok(out / name)
    source = optuna.load_study(study_name="weight_mirror.resnet8.digits", storage=url)
    md = (out / "summary.md").read_text()
    assert f"| 1 | {source.best_trial.number} | {source.best_value:.4f} |" in md


@pytest.mark.parametrize("args,match", [
    (["--source", "resnet20"], "no source study 'weight_mirror.resnet20.digits'; no sweep "
                               "of weight_mirror on resnet20 here"),
    (["--source", "resnet8", "--source-study", "empty"], "is not a creditsweep sweep"),
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


def test_transfer_needs_source_or_defaults(source_db, capsys):
    root, url = source_db
    assert main(["transfer", "--rule", "weight_mirror", "--targets", "resnet8",
                 "--storage", url]) == 2
    assert "either --source" in capsys.readouterr().err


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
