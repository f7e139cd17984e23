"""Robustness studies: backprop's transported copy, a study end to end on a real Ray, the
summary and the report, and bad input."""

import json

import optuna
import pytest

import trainer
from dbstate import sqlite_digest
from search.cli import main
from search.specs import RobustnessSpec


def test_backprop_transported_copy_is_backprop_without_noise():
    spec = RobustnessSpec(rules=["backprop"], arch="mlp", epochs=2)
    plain = trainer.train(dict(rule="backprop", arch="mlp", epochs=2))
    copy = trainer.train({**spec.config_of("backprop", 0.0, 0), "arch": "mlp", "epochs": 2})
    for a, b in zip(plain.history, copy.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert copy.final["diagnostics"]["summary"]["weight_angle_max"] < 1e-3
    noisy = trainer.train({**spec.config_of("backprop", 1e-2, 0), "arch": "mlp", "epochs": 2})
    assert noisy.final["diagnostics"]["summary"]["weight_angle_mean"] > 1.0  # the copy drifts


def test_a_relaxation_rule_runs_its_transported_copy_which_is_the_rule_without_noise():
    """Activation relaxation's B is W (backward=exact) by default: the study runs it with
    backward=learned from B = W, which without noise trains exactly as B = W, and drifts from
    W under noise on B's updates."""
    spec = RobustnessSpec(rules=["activation_relaxation"], arch="mlp", epochs=1)
    spec.validate()
    config = spec.config_of("activation_relaxation", 0.0, 0)
    assert config["copy_weights"] and config["metaparameters"] == {"backward": "learned"}
    small = dict(arch="mlp", epochs=1, train_subset=256, val_subset=64)
    exact = trainer.train(dict(rule="activation_relaxation", **small))
    copy = trainer.train({**config, **small})
    assert copy.history[-1]["train_loss"] == pytest.approx(exact.history[-1]["train_loss"],
                                                           rel=1e-4)
    assert copy.final["diagnostics"]["summary"]["weight_angle_max"] < 1e-3
    noisy = trainer.train({**spec.config_of("activation_relaxation", 1e-2, 0), **small})
    assert noisy.final["diagnostics"]["summary"]["weight_angle_mean"] > 1.0


@pytest.mark.slow
def test_robustness_study_end_to_end(ray_session, ray_dir, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    common = ["--arch", "mlp", "--epochs", "1", "--seeds", "2", "--storage", url,
              "--format", "json", "--curvature", "--curvature-batches", "1",
              "--curvature-steps", "6"]
    assert main(["robustness", "--rules", "symmetric_alignment,backprop", "--noise", "0,1e-2",
                 *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="robustness.mlp.digits", storage=url)
    assert len(study.trials) == 2 * 2 * 2
    rows = {(r["rule"], r["noise"]): r for r in summary["rows"]}
    assert set(rows) == {(r, v) for r in ("symmetric_alignment", "backprop") for v in (0, 1e-2)}
    for (rule, noise), row in rows.items():
        values = sorted(t.value for t in study.trials if t.user_attrs["rule"] == rule
                        and t.user_attrs["noise"] == noise)
        assert row["runs"] == 2 and row["mean"] == pytest.approx(sum(values) / 2)
        assert row["worst"] == pytest.approx(values[0])
        gaps = [t.user_attrs["generalization_gap"] for t in study.trials
                if t.user_attrs["rule"] == rule and t.user_attrs["noise"] == noise]
        assert row["generalization_gap"] == pytest.approx(sum(gaps) / 2)
        assert row["top_eigenvalue"] > 0 and row["top_eigenvalue_runs"] == 2
    transported = [t for t in study.trials if t.user_attrs["rule"] == "backprop"]
    assert {t.user_attrs["mechanism"] for t in transported} == {"transported copy of W"}
    # A re-run reuses every finished run; a later run may add a rule and a variance.
    assert main(["robustness", "--rules", "symmetric_alignment,backprop", "--noise", "0,1e-2",
                 *common]) == 0
    assert "0 runs to do, 8 reused" in capsys.readouterr().err
    assert main(["robustness", "--rules", "activation_alignment", "--noise", "1e-3",
                 *common]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="robustness.mlp.digits", storage=url)
    assert len(study.trials) == 10
    assert study.user_attrs["rules"] == ["symmetric_alignment", "backprop",
                                         "activation_alignment"]
    assert main(["robustness-summary", "robustness.mlp.digits", "--storage", url,
                 "--format", "csv"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 1 + 5 and "top_eigenvalue" in table[0].split(",")
    out = tmp_path / "report"
    assert main(["report", "--robustness", "robustness.mlp.digits", "--storage", url,
                 "--out", str(out)]) == 0
    assert (out / "accuracy_vs_noise.png").stat().st_size > 10_000
    assert (out / "curvature_by_rule.png").stat().st_size > 10_000
    assert "curvature_by_rule.png" in (out / "summary.md").read_text()
    assert "transported copy of W" in (out / "summary.md").read_text()
    # Bad input: one line, exit 2, nothing written.
    before = sqlite_digest(url)
    for args, match in ((["--rules", "feedback_alignment"], "has no learned B"),
                        (["--rules", "backprop", "--noise", "0,-1"], "finite and >= 0"),
                        (["--rules", "backprop", "--noise", "0,x"], "is not a number"),
                        (["--rules", "backprop", "--epochs", "3"], "epochs 1 -> 3")):
        assert main(["robustness", *args, "--arch", "mlp", "--storage", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert sqlite_digest(url) == before
