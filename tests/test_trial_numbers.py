"""One trial number everywhere: ``record_trials`` reports the Optuna number each written trial
got, and the live progress line names it, the same number ``best`` and ``trials`` show. Real
SQLite studies, no Ray session (the callback's methods called as Tune calls them)."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import optuna
import pytest

from catalogue.errors import LeaseLost
from search import storage as st
from search.searchers import METRIC
from spaces import default_space

STUDY = "numbers"


def _record(ray_id: str, top1: float = 0.5) -> st.TrialRecord:
    return st.TrialRecord(ray_trial_id=ray_id, params={"alpha": 0.1, "beta": 0.1, "sigma": 1.0},
                          history=[{"epoch": 1, "val_top1": top1, "wall_time": 1.0}],
                          status="completed")


def _study(url: str) -> optuna.Study:
    """A study whose trial 0 another tool wrote: creditsweep's numbers start at 1 here."""
    study = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.1))
    return study


def test_record_trials_reports_the_number_each_trial_got(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _study(url)
    dists = default_space("weight_mirror").to_optuna()
    records = [_record("exp/a", 0.6), _record("exp/b", 0.8)]
    assert st.record_trials(study, records, dists, url=url) == 2
    assert [r.number for r in records] == [1, 2]
    numbers = {t.user_attrs["ray_trial_id"]: t.number for t in study.trials
               if "ray_trial_id" in t.user_attrs}
    assert numbers == {"exp/a": 1, "exp/b": 2} == st.recorded_numbers(study)
    assert st.best_trial(study).number == records[1].number  # what `best` shows
    rows = {row["number"] for row in st.trial_rows(study)}  # what `trials` shows
    assert {1, 2} <= rows

    # Written already (a reconciliation, or a write that landed unacknowledged): nothing
    # added, and each record still learns its number from the study.
    again = [_record("exp/a"), _record("exp/b")]
    assert st.record_trials(study, again, dists, url=url, known={}) == 0
    assert [r.number for r in again] == [1, 2]
    assert len(study.trials) == 3


def test_the_fence_is_checked_right_before_each_write(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _study(url)
    calls: list[int] = []

    def fence() -> None:
        calls.append(len(study.trials))
        if len(calls) == 2:
            raise LeaseLost("sweep 1: another driver took over this driver's lease")

    records = [_record("exp/a"), _record("exp/b"), _record("exp/c")]
    with pytest.raises(LeaseLost):
        st.record_trials(study, records, default_space("weight_mirror").to_optuna(), url=url,
                         fence=fence)
    assert calls == [1, 2]  # before the first write, and before the refused second
    assert [r.number for r in records] == [1, None, None]
    assert len(study.trials) == 2


def _callback(url: str, lines: list[str]):
    from search.recording import Recorder
    from search.tune_recorder import OptunaRecorder

    recorder = Recorder(url, STUDY, default_space("weight_mirror"), "exp")
    return OptunaRecorder(recorder, total=2, already=0, progress=lines.append,
                          retry_every=0.0)


def _end(callback, trial_id: str, top1: float, running: list) -> SimpleNamespace:
    """A Ray trial that reports one epoch and completes."""
    trial = SimpleNamespace(trial_id=trial_id, config={"alpha": 0.2, "beta": 0.1, "sigma": 1.0},
                            status="TERMINATED")
    callback.on_trial_result(0, running, trial, {"epoch": 1, "val_top1": top1, METRIC: top1,
                                                 "status": "completed", "wall_time": 1.0})
    callback.on_trial_complete(0, running + [trial], trial)
    return trial


@pytest.mark.slow
def test_the_progress_line_names_the_trial_number_best_shows(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}?timeout=0.2"
    study = _study(url)
    lines: list[str] = []
    callback = _callback(url, lines)
    _end(callback, "a_00000", 0.7, [])
    best = st.best_trial(study)
    assert best.user_attrs["ray_trial_id"] == "exp/a_00000"
    assert lines[-1].startswith(f"[1/2] val top-1 0.7000 · trial {best.number} (alpha=0.2")
    assert best.number == 1  # Optuna's number, not the count

    # Written late, after the study was locked: queued, then a line of its own names it.
    holder = sqlite3.connect(tmp_path / "study.db", isolation_level=None, timeout=60)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        _end(callback, "b_00001", 0.9, [])
        assert lines[-1].startswith("[1/2 recorded, 1 queued] val top-1 0.9000 · queued as "
                                    "Ray trial b_00001 (")
    finally:
        holder.execute("COMMIT")
        holder.close()
    callback.on_step_end(0, [])
    number = st.recorded_numbers(study)["exp/b_00001"]
    assert number == st.best_trial(study).number == 2
    assert lines[-2] == (f"trial {number} written late (queued as Ray trial b_00001) · "
                         "val top-1 0.9000")
    assert lines[-1].endswith("wrote 1 queued trial(s) [2/2] · best 0.9000")
    print("\n" + "\n".join(lines))
