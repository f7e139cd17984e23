"""The record schema: a measure is one registry entry, and every reader sees it; the trials
table fits a 100-column terminal."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution

from search.cli import main
from search.records import (EPOCH_FIELDS, MEASURES, NESTED, Measure, flat_metrics, from_flat,
                            history_row, trial_summary)
from search.storage import TrialRecord, record_trials

SPACE = {"alpha": FloatDistribution(1e-6, 1.0, log=True),
         "beta": FloatDistribution(1e-6, 1.0, log=True),
         "gamma": FloatDistribution(1e-6, 1.0, log=True),
         "sigma": FloatDistribution(0.01, 10.0, log=True)}


def _epoch(epoch: int, top1: float, residual: float | None = None) -> dict:
    plan = {"verdict": "ok", "relaxations_min": 4.0 + epoch, "stability_ratio_max": 0.4}
    if residual is not None:
        plan["feedback_residual"] = residual
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_top1": top1, "val_top1": top1,
            "val_loss": 0.5, "val_top5": 1.0, "lr": 0.05, "train_size": 100, "val_size": 50,
            "epoch_time": 1.0, "wall_time": float(epoch), "alignment_loss": 0.1,
            "diagnostics": {"summary": {"weight_angle_mean": 40.0 - epoch,
                                        "norm_ratio_mean": 1.1}, "layers": {}},
            "feedback_plan": {"summary": plan, "layers": {}, "limit": 1.8}}


def _study(url: str, residual: bool = True, reasons: int = 0) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr("kind", "sweep")
    study.set_user_attr("rule", "information_alignment")
    params = {"alpha": 1.2345e-4, "beta": 0.000271828, "gamma": 3.14159e-6, "sigma": 1.41421}
    records = [TrialRecord(f"e/t{i}", params, [_epoch(1, 0.5 + i / 10, 0.2 if residual else None),
                                               _epoch(2, 0.6 + i / 10, 0.01 if residual else None)],
                           "completed") for i in range(2)]
    records += [TrialRecord(f"e/f{i}", params, [], "diverged",
                            reason="non-finite alignment loss at epoch 1, step 23 " * 4)
                for i in range(reasons)]
    record_trials(study, records, SPACE)
    return study


def test_the_epoch_fields_round_trip_through_tunes_flat_metrics():
    record = _epoch(3, 0.7, 0.05)
    flat = flat_metrics(record)
    assert all(not isinstance(v, dict) for v in flat.values())
    assert {f"{k}_json" for k in NESTED if k in record} <= set(flat)
    assert from_flat({**flat, "status": "running", "training_iteration": 3}) == record
    assert set(EPOCH_FIELDS) >= {k for k in record if k not in NESTED}


@pytest.mark.slow
def test_a_measure_is_one_entry_seen_by_history_trials_best_and_report(tmp_path, capsys,
                                                                      monkeypatch):
    residual = Measure("feedback_residual", ("feedback_plan", "summary",
                                               "feedback_residual"),
                       "B's residual along W after the run", "resid.", per_epoch=True,
                       column=True, in_best=True)
    monkeypatch.setitem(MEASURES._entries, residual.name, residual)
    assert history_row(_epoch(1, 0.5, 0.2))["feedback_residual"] == 0.2
    assert trial_summary(_epoch(2, 0.6, 0.01))["feedback_residual"] == 0.01
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = _study(url)
    best = study.best_trial
    assert best.user_attrs["feedback_residual"] == 0.01
    assert [r["feedback_residual"] for r in best.user_attrs["history"]] == [0.2, 0.01]
    capsys.readouterr()
    assert main(["trials", "--study", "s", "--storage", url, "--format", "csv"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert "feedback_residual" in header.split(",")
    assert main(["trials", "--study", "s", "--storage", url]) == 0  # a default table column
    assert "resid." in capsys.readouterr().out
    assert main(["best", "--study", "s", "--storage", url]) == 0
    assert "B's residual along W after the run 0.01" in capsys.readouterr().out
    assert main(["best", "--study", "s", "--storage", url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["measures"]["feedback_residual"] == 0.01
    out = tmp_path / "report"
    assert main(["report", "--study", "s", "--storage", url, "--out", str(out)]) == 0
    assert "B's residual along W after the run" in (out / "summary.md").read_text()


def test_without_the_entry_nothing_shows_it(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _study(url)
    capsys.readouterr()
    assert main(["trials", "--study", "s", "--storage", url, "--format", "csv"]) == 0
    assert "feedback_residual" not in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("width", [100, 120])
def test_the_trials_table_fits_the_terminal(tmp_path, capsys, monkeypatch, width):
    """Four parameters, the default measures and failures whose reasons run to 200
    characters: every line fits, the reason cut with an ellipsis rather than wrapped."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    _study(url, reasons=3)
    monkeypatch.setenv("COLUMNS", str(width))
    capsys.readouterr()
    assert main(["trials", "--study", "s", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    failed = [ln for ln in lines if "FAIL" in ln]
    assert len(failed) == 3 and all(ln.rstrip().endswith("…") for ln in failed)
    for name in ("alpha", "beta", "gamma", "sigma", "∠(W,B)", "relax. min", "reason"):
        assert name in lines[1], lines[1]
