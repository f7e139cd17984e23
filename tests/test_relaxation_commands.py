"""The rules that settle and phaseless alignment through every command a user runs: a sweep
with --curvature, a transfer across MLP depths, a robustness study, and their reports."""

import json

import optuna
import pytest

from search.cli import main

pytestmark = pytest.mark.slow
SMALL = ["--epochs", "1", "--train-subset", "256", "--val-subset", "128"]


def test_a_sweep_with_curvature_then_a_transfer_across_depths_and_the_reports(
        ray_session, ray_dir, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["sweep", "--rule", "dynamic_inversion", "--arch", "mlp", "--trials", "1",
                 "--storage", url, "--curvature", "--curvature-batches", "1",
                 "--curvature-steps", "4", "--set", "solver=steady", *SMALL]) == 0
    said = capsys.readouterr().err
    assert "B's plan does not apply: " in said  # said once, at the end, not per trial
    assert not any(line.startswith("[") and "B not applicable" in line
                   for line in said.splitlines())
    study = optuna.load_study(study_name="dynamic_inversion.mlp.digits", storage=url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done, [t.user_attrs.get("fail_reason") for t in study.trials]
    for t in done:
        assert t.user_attrs["train_config"]["metaparameters"]["solver"] == "steady"
        assert t.user_attrs["top_eigenvalue"] > 0  # --curvature on the true loss
        assert 0 <= t.user_attrs["update_angle_mean"] < 90
        assert t.user_attrs["relaxation_residual"] >= 0
        assert t.user_attrs["feedback_plan"]["verdict"] == "not applicable"
    # Its best settings transfer to deeper MLPs, the source's architecture read from the study.
    assert main(["transfer", "--rule", "dynamic_inversion", "--source-study",
                 "dynamic_inversion.mlp.digits", "--targets", "mlp4", "--seeds", "1",
                 "--storage", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["target"], r["depth"]) for r in rows] == [("mlp4", 4)]
    assert rows[0]["mean"] is not None and rows[0]["backprop_mean"] is not None
    out = tmp_path / "report"
    assert main(["report", "--study", "dynamic_inversion.mlp.digits", "--storage", url,
                 "--out", str(out)]) == 0
    assert "alpha" in (out / "summary.md").read_text()  # the swept options are its columns
    assert main(["report", "--transfer", "transfer.dynamic_inversion.mlp.digits", "--storage",
                 url, "--out", str(tmp_path / "transfer")]) == 0
    capsys.readouterr()


def test_robustness_runs_a_transported_relaxation_rule_and_pal(ray_session, ray_dir, tmp_path,
                                                               capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["robustness", "--rules", "predictive_coding,phaseless_alignment", "--arch",
                 "mlp", "--noise", "1e-2", "--seeds", "1", "--storage", url,
                 "--format", "json", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = {(r["rule"], r["noise"]): r for r in summary["rows"]}
    assert set(rows) == {(r, 1e-2) for r in ("predictive_coding", "phaseless_alignment")}
    study = optuna.load_study(study_name="robustness.mlp.digits", storage=url)
    mechanism = {t.user_attrs["rule"]: t.user_attrs["mechanism"] for t in study.trials}
    assert mechanism == {"predictive_coding": "transported copy of W",
                         "phaseless_alignment": "B"}
    pc = [t for t in study.trials if t.user_attrs["rule"] == "predictive_coding"]
    assert all(t.user_attrs["train_config"]["copy_weights"] for t in pc)
    out = tmp_path / "report"
    assert main(["report", "--robustness", "robustness.mlp.digits", "--storage", url,
                 "--out", str(out)]) == 0
    assert (out / "accuracy_vs_noise.png").exists()
