"""The search maximizes the task's score: R^2 for a regression task, top-1 for classification,
and records stored before the score had a name of its own (only ``val_top1``) read as before.
Real SQLite studies; the live callback's methods called as Tune calls them (no Ray session)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest

from catalogue.tasks import get_task
from search import storage as st
from search.across_trial import Progress, across_summary
from search.recording import record_from_results
from search.scores import scores_by_arch
from search.searchers import METRIC
from spaces import default_space

STUDY = "scores"
PARAMS = {"alpha": 0.1, "beta": 0.1, "sigma": 1.0}


def _regression_epochs(r2: list[float], losses: list[float]) -> list[dict]:
    """Epochs as a regression trial reports them: R^2 is the score, no top-1 at all."""
    return [{"epoch": e, "train_loss": loss, "val_loss": loss, "val_r2": v, "val_score": v,
             "status": "running", "wall_time": float(e)}
            for e, (v, loss) in enumerate(zip(r2, losses), 1)]


def _completed(rows: list[dict]) -> list[dict]:
    return [*rows[:-1], {**rows[-1], "status": "completed"}]


def test_a_regression_study_is_ranked_by_its_best_r2(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    # Trial a has the lowest loss at its last epoch but the lower best R^2; c never explains
    # any variance (R^2 < 0 throughout): its value is its best R^2, not clipped at 0.
    curves = {"a": ([0.2, 0.55, 0.5], [0.9, 0.4, 0.1]),
              "b": ([0.3, 0.8, 0.7], [0.8, 0.5, 0.3]),
              "c": ([-0.4, -0.1, -0.2], [2.0, 1.5, 1.7])}
    records = [record_from_results(name, (PARAMS, {}), _completed(_regression_epochs(*curve)),
                                   None) for name, curve in curves.items()]
    assert all(len(r.history) == 3 and "val_r2" in r.history[0] for r in records)
    assert st.record_trials(study, records, default_space("weight_mirror").to_optuna(),
                            url=url) == 3
    ranked = st.ranked_complete(study)
    assert [t.user_attrs["ray_trial_id"] for t in ranked] == ["b", "a", "c"]
    assert [t.value for t in ranked] == [0.8, 0.55, -0.1]
    assert ranked[0].intermediate_values == {1: 0.3, 2: 0.8, 3: 0.7}
    assert [row["val_r2"] for row in ranked[0].user_attrs["history"]] == [0.3, 0.8, 0.7]


def test_records_stored_before_the_score_read_as_their_top1(tmp_path):
    """An old study's trials keep only val_top1 per epoch: they rank by it, as before."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    old = [st.TrialRecord(name, PARAMS, [{"epoch": e, "val_top1": v, "wall_time": 1.0}
                                         for e, v in enumerate(top1, 1)], "completed")
           for name, top1 in (("x", [0.4, 0.6]), ("y", [0.7, 0.65]))]
    st.record_trials(study, old, default_space("weight_mirror").to_optuna(), url=url)
    assert [(t.user_attrs["ray_trial_id"], t.value) for t in st.ranked_complete(study)] == [
        ("y", 0.7), ("x", 0.6)]


def test_the_progress_line_names_the_tasks_score(tmp_path):
    from search.recording import Recorder
    from search.tune_recorder import OptunaRecorder

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    lines: list[str] = []
    callback = OptunaRecorder(Recorder(url, STUDY, default_space("weight_mirror"), "exp"),
                              total=2, already=0, progress=lines.append, retry_every=0.0)
    for trial_id, rows in (("r_00000", _completed(_regression_epochs([0.5, 0.81],
                                                                    [0.3, 0.2]))),
                           ("c_00001", [{"epoch": 1, "val_top1": 0.6, "val_score": 0.6,
                                         "status": "completed", "wall_time": 1.0}])):
        trial = SimpleNamespace(trial_id=trial_id, config=dict(PARAMS), status="TERMINATED")
        for row in rows:
            callback.on_trial_result(0, [], trial, {**row, METRIC: row["val_score"]})
        callback.on_trial_complete(0, [trial], trial)
        if trial_id.startswith("r"):
            assert lines[-1].startswith("[1/2] val R^2 0.8100 · trial 0"), lines[-1]
    assert lines[-1].startswith("[2/2] val top-1 0.6000 · trial 1"), lines[-1]
    assert "best 0.8100" in lines[-1]


def test_per_architecture_scores_keep_the_old_name_for_classification():
    finished = {"rnn32": {"score": 0.4, "reason": None}, "rnn64": {"score": 0.6, "reason": None}}
    regression = across_summary("mean", ["rnn32", "rnn64"], finished, get_task("regression"))
    assert regression["val_score_by_arch"] == {"rnn32": 0.4, "rnn64": 0.6}
    assert "val_top1_by_arch" not in regression
    assert regression["value"] == pytest.approx(0.5)
    classification = across_summary("mean", ["rnn32", "rnn64"], finished,
                                     get_task("classification"))
    assert classification["val_top1_by_arch"] == classification["val_score_by_arch"]
    # an old study's trial holds only the old name; a checkpoint from before, only "top1"
    assert scores_by_arch({"val_top1_by_arch": {"mlp": 0.9}}) == {"mlp": 0.9}
    old = Progress.of({"across": {"index": 1, "finished": {"mlp": {"top1": 0.9,
                                                                   "reason": None}},
                                  "rows": []}})
    assert old.finished["mlp"]["score"] == 0.9
    record = record_from_results("t", (PARAMS, {}), [
        *_regression_epochs([0.3], [0.5]),
        {"status": "completed", "across_json": json.dumps(regression), "wall_time": 2.0}], None)
    assert record.value == pytest.approx(0.5)
    assert record.extra["val_score_by_arch"] == {"rnn32": 0.4, "rnn64": 0.6}


def test_the_searcher_is_told_a_regression_score_down_to_its_floor():
    """R^2 may be negative: the searcher is told it as it is down to -1 (the regression
    task's floor), a diverged or untrained architecture counts the floor, so a poor run is
    never ranked below a diverged one; top-1 keeps 0."""
    from catalogue.tasks import get_task
    from search.across_trial import Progress, objective_so_far

    floor = get_task("regression").floor
    assert floor == -1.0 and get_task("classification").floor == 0.0
    assert objective_so_far("mean", ["rnn"], Progress(), "rnn", -0.7, floor) == -0.7
    assert objective_so_far("mean", ["rnn"], Progress(), "rnn", -5.0, floor) == -1.0
    assert objective_so_far("mean", ["rnn"], Progress(), "rnn", None, floor) == -1.0
    progress = Progress(finished={"rnn32": {"score": floor, "reason": "diverged"}})
    assert objective_so_far("min", ["rnn32", "rnn"], progress, "rnn", -0.4, floor) == -1.0
    assert objective_so_far("mean", ["rnn"], Progress(), "rnn", -0.7) == 0.0  # top-1's floor
