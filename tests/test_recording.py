"""What the live recorder says while the study cannot be written: real SQLite studies made
unwritable (a full disk, another connection's exclusive lock), real Ray ``Trial`` objects, the
callback's methods called as Tune calls them."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from catalogue.errors import LeaseLost
from dbstate import sqlite_digest
from search.recording import Recorder, record_from_results
from search.tune_recorder import OptunaRecorder
from search.searchers import METRIC

STUDY = "progress"


class FullDisk:
    """A study on a small filesystem of its own (tmpfs), filled to the last byte on demand:
    the disk that filled mid-sweep. Needs the right to mount (root in a container)."""

    def __init__(self, root: Path) -> None:
        self.mount = root / "disk"
        self.mount.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs",
                               str(self.mount)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {done.stderr.strip()}")
        self.url = f"sqlite:///{self.mount / 'study.db'}"
        self.filler = self.mount / "filler"

    def block(self) -> None:
        with open(self.filler, "wb") as out:
            chunk = b"\0" * 65536
            try:
                while True:
                    out.write(chunk)
                    out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        with pytest.raises(OSError):  # not one byte more
            with open(self.mount / "probe", "wb") as out:
                out.write(b"\0" * 4096)
                out.flush()
                os.fsync(out.fileno())

    def unblock(self) -> None:
        self.filler.unlink()
        (self.mount / "probe").unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], check=False)


class Locked:
    """A study another connection holds an exclusive lock on (writers time out at once)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "study.db"
        self.url = f"sqlite:///{self.path}?timeout=0.2"
        self.holder: sqlite3.Connection | None = None

    def block(self) -> None:
        self.holder = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self.holder.execute("BEGIN EXCLUSIVE")

    def unblock(self) -> None:
        self.holder.execute("COMMIT")
        self.holder.close()
        self.holder = None

    def close(self) -> None:
        if self.holder is not None:
            self.holder.close()


@pytest.fixture(params=["full-disk", "locked"])
def unwritable(request, tmp_path):
    store = (FullDisk if request.param == "full-disk" else Locked)(tmp_path)
    yield store
    store.close()


@pytest.fixture
def trials(ray_session):
    """Real Ray trials (a stub trainable) in a real experiment folder."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    folder = tempfile.mkdtemp(prefix="csrec-")
    storage = StorageContext(storage_path=folder, experiment_dir_name="exp")

    def make(trial_id: str, alpha: float) -> Trial:
        trial = Trial("run_trial", config={"alpha": alpha, "beta": 0.1, "sigma": 1.0},
                      trial_id=trial_id, stub=True, storage=storage)
        trial.init_local_path()
        trial.set_status(Trial.RUNNING)
        return trial

    yield make
    shutil.rmtree(folder, ignore_errors=True)


def _recorder(url: str, lines: list[str], write_url: str | None = None) -> OptunaRecorder:
    """The live callback of a 3-trial run into a new study (made through ``write_url``)."""
    from spaces import default_space

    optuna.create_study(study_name=STUDY, storage=write_url or url, direction="maximize")
    recorder = Recorder(url, STUDY, default_space("weight_mirror"), "exp")
    return OptunaRecorder(recorder, total=3, already=0, progress=lines.append, retry_every=0.0)


def _run(callback: OptunaRecorder, trial, top1: list[float], trials: list) -> None:
    """The epochs a trial reports (as ``run_trial`` reports them), then its end."""
    for epoch, value in enumerate(top1, 1):
        status = "completed" if epoch == len(top1) else "running"
        callback.on_trial_result(0, trials, trial, {
            "epoch": epoch, "val_top1": value, "train_loss": 1.0 / epoch, METRIC: max(top1),
            "status": status, "wall_time": float(epoch)})
    trial.set_status(trial.TERMINATED)
    callback.on_trial_complete(0, trials, trial)


def _recorded(url: str) -> list[str]:
    study = optuna.load_study(study_name=STUDY, storage=url)
    return sorted(t.user_attrs["ray_trial_id"] for t in study.trials)


@pytest.mark.slow
def test_progress_counts_only_what_the_study_holds(unwritable, trials):
    """The disk filled mid-sweep and the recorder still printed [8/8], best 0.7270, with no
    trial in the study. Now a line counts recorded trials, says which are queued, and the
    best comes from recorded trials only; once writable, the queue is written and counted."""
    url, lines = unwritable.url, []
    callback = _recorder(url, lines)
    a, b, c = trials("a_00000", 0.1), trials("b_00001", 0.2), trials("c_00002", 0.3)
    everyone = [a, b, c]
    _run(callback, a, [0.5, 0.7], everyone)
    assert lines[-1].startswith("[1/3] val top-1 0.7000") and "· best 0.7000 ·" in lines[-1]
    assert " elapsed, ~" in lines[-1] and lines[-1].endswith(" left")  # 2 of 3 still to run

    unwritable.block()
    before = sqlite_digest(url.split("?")[0])
    _run(callback, b, [0.6, 0.9], everyone)
    assert any(line.startswith("cannot write to the study (") for line in lines)
    assert lines[-1].startswith("[1/3 recorded, 1 queued] val top-1 0.9000")
    assert "· best 0.7000 ·" in lines[-1]  # b's 0.9 is not in the study
    c.handle_error(RuntimeError("the worker died"))
    c.set_status(c.ERROR)
    callback.on_trial_error(0, everyone, c)
    assert lines[-1].startswith("[1/3 recorded, 2 queued] error: ")
    assert "failed 0" in lines[-1] and "· best 0.7000 ·" in lines[-1]
    callback.on_step_end(0, everyone)  # a retry while it is still unwritable
    assert len(callback.pending) == 2 and not any("again" in line for line in lines)
    assert sqlite_digest(url.split("?")[0]) == before

    unwritable.unblock()
    callback.on_step_end(0, everyone)
    assert lines[-1].startswith("the study is writable again after ")
    assert lines[-1].endswith("wrote 2 queued trial(s) [3/3] · best 0.9000")
    assert not callback.pending and callback.failed == 1
    assert _recorded(url) == ["exp/a_00000", "exp/b_00001", "exp/c_00002"]
    callback.on_experiment_end(everyone)
    assert not any("could not be written" in line for line in lines)
    print("\n" + "\n".join(lines))


def test_a_trial_still_queued_at_the_end_is_said_to_be_unwritten(tmp_path, trials):
    """A study that stays unwritable: the last line says what was not recorded (the study
    refuses, so there is nothing to wait for: not transient)."""
    path = tmp_path / "study.db"
    url, lines = f"sqlite:///file:{path}?mode=ro&uri=true", []
    callback = _recorder(url, lines, write_url=f"sqlite:///{path}")
    a = trials("a_00000", 0.1)
    _run(callback, a, [0.4], [a])
    assert lines[-1].startswith("[0/3 recorded, 1 queued] val top-1 0.4000")
    assert "· best - ·" in lines[-1]
    callback.on_experiment_end([a])
    assert lines[-1] == ("1 finished trial(s) could not be written to the study "
                         "[0/3 recorded, 1 queued]")
    assert _recorded(url) == []
    print("\n" + "\n".join(lines))


def test_a_taken_over_recorder_says_its_trials_are_not_recorded(tmp_path, trials):
    """A fence that says the lease was lost: nothing is written, nothing queued, and the
    lines say so instead of counting the trials."""
    url, lines = f"sqlite:///{tmp_path / 'study.db'}", []
    callback = _recorder(url, lines)

    def lost() -> None:
        raise LeaseLost("sweep 1: another driver took over this driver's lease")

    callback.recorder.fence = lost
    a, b = trials("a_00000", 0.1), trials("b_00001", 0.2)
    _run(callback, a, [0.4], [a, b])
    assert any("another driver took over" in line and "1 finished trial(s) left unrecorded"
               in line for line in lines)
    assert lines[-1].startswith("[0/3 recorded, lease lost] val top-1 0.4000")
    _run(callback, b, [0.5], [a, b])
    assert lines[-1].startswith("[0/3 recorded, lease lost] val top-1 0.5000")
    assert not callback.pending and _recorded(url) == []


def test_a_discarded_checkpoint_is_kept_with_the_trial():
    """The worker's flag (its first report after it passed over an unreadable checkpoint)
    becomes the trial's user attribute ``checkpoint_discarded``."""
    note = "checkpoint /r/checkpoint_000001 (RuntimeError: truncated) cannot be read; " \
           "restarting the trial from scratch"
    results = [{"epoch": 1, "val_top1": 0.3, "status": "running"},
               {"epoch": 2, "val_top1": 0.4, "status": "running"},  # the attempt that died
               {"epoch": 1, "val_top1": 0.35, "status": "running", "checkpoint_discarded": note},
               {"epoch": 2, "val_top1": 0.45, "status": "completed"}]
    record = record_from_results("t", ({}, {}), results, None)
    assert record.extra["checkpoint_discarded"] == note
    assert [r["epoch"] for r in record.history] == [1, 2]
    assert "restored_from_epoch" not in record.extra
