"""The sweep keeps every trial through crashes: a SIGKILLed driver, a killed worker, a database
that goes away. Real processes, real Ray, real SQLite/PostgreSQL; no mocks."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dbstate import study_or_none
from procs import cli, descendants, kill_ray_of
from search.execution import Execution
from search.sweep import SweepSpec, run_sweep
from tunestate import registered_at_least

pytestmark = pytest.mark.slow
# Every wait below is on a state (a row in the study, a registered checkpoint, a line of
# output, a command's exit); these bounds only end a test that would otherwise hang, and are
# set for however slow a shared machine gets.
STATE_TIMEOUT_S = 300  # until a state is reached
RUN_TIMEOUT_S = 600  # until a whole command has run


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = study_or_none(url, name)
    return study.get_trials() if study else []


def _has_sweep(url: str, name: str) -> bool:
    study = study_or_none(url, name)
    return study is not None and any(k.startswith("sweep:") for k in study.user_attrs)


def _wait_until(proc: subprocess.Popen, ready, what: str,
                timeout: float = STATE_TIMEOUT_S) -> None:
    """Poll ``ready()`` while the driver runs; fail, saying which, if it ends or never gets
    there."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the driver ended before {what}:\n{_output(proc)}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _output(proc: subprocess.Popen) -> str:
    return proc.stdout.read() if proc.stdout is not None and proc.poll() is not None else ""


def _kill_when(proc: subprocess.Popen, ready, what: str = "the kill point") -> None:
    _wait_until(proc, ready, what)
    assert proc.poll() is None, f"the driver ended at {what}, before the kill:\n{_output(proc)}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_sigkilled_driver_resumes_to_exactly_n(tmp_path, cli_env):
    """Kill the driver twice (before any trial ended, then again during the resumed run); after
    the last resume the sweep has exactly N trials, each once."""
    url, study, n = f"sqlite:///{tmp_path / 'sweeps.db'}", "killed", 6
    sweep = cli("sweep", "--rule", "weight_mirror", "--arch", "mlp", "--epochs", "2",
                 "--trials", str(n), "--study", study, "--storage", url)
    resume = cli("resume", "--study", study, "--storage", url)
    counts = []
    for command, kill_point in ((sweep, 0), (resume, 2)):
        proc = subprocess.Popen(command, env=cli_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if kill_point == 0:
            _kill_when(proc, lambda: _has_sweep(url, study), "the sweep's registration")
        else:
            _kill_when(proc, lambda k=kill_point: len(_trials(url, study)) >= k,
                       f"{kill_point} recorded trials")
        kill_ray_of(cli_env["RAY_TMPDIR"])  # what the dead driver's Ray left
        counts.append(len(_trials(url, study)))
    assert counts[0] < 3 and 2 <= counts[1] < n, counts
    done = subprocess.run(resume, env=cli_env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{counts[1]} of {n} trials recorded, {n - counts[1]} to run" in done.stderr
    trials = _trials(url, study)
    ids = [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(trials) == n and len(set(ids)) == n
    assert len({t.user_attrs["sweep"] for t in trials}) == 1
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    print(f"\nSIGKILL: recorded when killed {counts}; after resume {len(trials)}/{n}, "
          f"{len(set(ids))} distinct")
    # Nothing left to do: a further resume says so and adds nothing.
    again = subprocess.run(resume, env=cli_env, capture_output=True, text=True,
                           timeout=STATE_TIMEOUT_S)
    assert again.returncode == 0 and "nothing to resume" in again.stderr
    assert len(_trials(url, study)) == n


def _kill_worker_at_checkpoint(ray_dir: Path, stop: threading.Event,
                               killed: list[tuple[int, int]], missed: list[str]) -> None:
    """SIGKILL the trial worker (a descendant of this process) once the driver has
    registered its second checkpoint, the state after epoch 2; note the checkpoint's size.

    The folder alone is not enough: the worker uploads it before the driver registers it,
    and a worker killed in between is retried from epoch 1's checkpoint (which happened on a
    loaded machine). A registration already past epoch 2 is a missed window, noted."""
    while not stop.is_set() and not killed:
        found = registered_at_least(ray_dir, "checkpoint_000001")
        if found and found[0].name != "checkpoint_000001":
            missed.append(found[0].name)
            return
        workers = [pid for pid, proc, _ in descendants(os.getpid())
                   if proc.startswith("ray::ImplicitF")]
        if found and workers:
            os.kill(workers[0], signal.SIGKILL)
            killed.append((workers[0], (found[0] / "state.pt").stat().st_size))
            return
        time.sleep(0.05)


def test_a_worker_killed_at_epoch_2_of_4_goes_on_from_its_checkpoint(ray_session, ray_dir,
                                                                     tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    stop, killed, missed, lines = threading.Event(), [], [], []
    killer = threading.Thread(target=_kill_worker_at_checkpoint,
                              args=(Path(ray_dir), stop, killed, missed))
    killer.start()
    try:
        run_sweep(SweepSpec(rule="feedback_alignment", arch="resnet8", epochs=4, trials=1,
                            execution=Execution(max_concurrent=1), storage=url,
                            study="worker-killed", train={"batch_size": 64}, initial_points=1,
                            **_lr_space()), progress=lines.append)
    finally:
        stop.set()
        killer.join()
    assert not missed, f"the driver registered {missed[0]} before epoch 2's was seen"
    assert killed, "no trial worker was killed"
    (trial,) = _trials(url, "worker-killed")
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["attempts"] == 2
    # The retry went on from epoch 2 (not from scratch), and the study holds each epoch once.
    assert trial.user_attrs["restored_from_epoch"] == 2
    assert [r["epoch"] for r in trial.user_attrs["history"]] == [1, 2, 3, 4]
    assert any("crashed" in line and "retrying, attempt 2" in line for line in lines)
    # A finished trial's checkpoint is deleted.
    assert not list(Path(ray_dir).glob("*/*/checkpoint_*"))
    print(f"\nworker killed at epoch 2 of 4: restored from epoch "
          f"{trial.user_attrs['restored_from_epoch']}, history epochs "
          f"{[r['epoch'] for r in trial.user_attrs['history']]}; checkpoint "
          f"{killed[0][1] / 1e6:.2f} MB (ResNet-8)")


def _lr_space() -> dict:
    """Feedback alignment has no metaparameters: tune the learning rate instead."""
    from spaces import apply_overrides, default_space

    return {"space": apply_overrides(default_space("feedback_alignment"),
                                     ["lr=0.01:0.1"], [])}


def test_database_outage_mid_sweep_loses_no_trial(postgres_factory, tmp_path, cli_env):
    server = postgres_factory()
    url = server.create_database("outage")
    n = 10
    proc = subprocess.Popen(cli("sweep", "--rule", "weight_mirror", "--arch", "mlp",
                                 "--epochs", "4", "--trials", str(n), "--max-concurrent", "1",
                                 "--study", "outage", "--storage", url),
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = _Lines(proc)
    _wait_until(proc, lambda: len(_trials(url, "outage")) >= 1, "a recorded trial")
    before = len(_trials(url, "outage"))
    assert 1 <= before < n
    server.pause()
    # Several trials end while the database is away: the driver says so, each queued.
    _wait_until(proc, lambda: _most_queued(lines) >= 2, "two trials queued")
    server.resume()
    proc.wait(timeout=RUN_TIMEOUT_S)
    out = "".join(lines.finish())
    assert proc.returncode == 0, out[-3000:]
    assert "cannot write to the study" in out and "writable again" in out
    trials = _trials(url, "outage")
    ids = [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(trials) == n and len(set(ids)) == n
    print("\noutage: " + " | ".join(line for line in out.splitlines()
                                    if "study" in line and ("cannot" in line or "again" in line))
          + f" | {len(trials)}/{n} recorded")
    # The password is in no output, no Ray log and no file Ray wrote.
    assert "s3cret-pw" not in out
    for folder in (Path(cli_env["CREDITSWEEP_RAY_DIR"]), Path(cli_env["RAY_TMPDIR"])):
        leaks = [str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                 and b"s3cret-pw" in _read(p)]
        assert not leaks, leaks


class _Lines(list):
    """A driver's output, line by line as it comes (read by a thread of its own)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__()
        self.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.append(line)

    def finish(self) -> "_Lines":
        self.reader.join(timeout=60)
        return self


def _most_queued(lines: list[str]) -> int:
    """The most trials a progress line said were finished but queued, unwritten."""
    counts = [int(m.group(1)) for line in list(lines)
              for m in [re.search(r"recorded, (\d+) queued\]", line)] if m]
    return max(counts, default=0)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_sigterm_stops_a_transfer_cleanly_and_a_rerun_finishes_it(tmp_path, cli_env):
    """SIGTERM used to kill the driver with SIGABRT and a C++ stack dump, and Ctrl-C printed a
    summary built from the runs that happened to finish, as if it were the final one."""
    url = f"sqlite:///{tmp_path / 'transfer.db'}"
    name = "transfer.symmetric_alignment.defaults.digits"
    argv = ("transfer", "--rule", "symmetric_alignment", "--defaults", "--targets",
            "resnet8,resnet14", "--seeds", "2", "--epochs", "3", "--storage", url,
            "--format", "csv")
    proc = subprocess.Popen(cli(*argv), env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_until(proc, lambda: len(_trials(url, name)) >= 1, "a recorded run")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=STATE_TIMEOUT_S)
    output = proc.stdout.read()
    recorded = len(_trials(url, name))
    assert proc.returncode == 143, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("creditsweep: interrupted by SIGTERM: "), output[-3000:]
    assert f"{recorded} of 8 runs recorded" in last and "run the same command again" in last
    assert "target," not in output  # no summary table, partial or not
    assert "Tuner.restore" not in output and "Aborted" not in output
    assert recorded < 8
    done = subprocess.run(cli(*argv), env=cli_env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_trials(url, name)) == 8  # the finished runs were reused, not run again
    assert "target," in done.stdout


def test_a_trial_running_when_the_driver_died_is_continued_by_resume(tmp_path, cli_env):
    """SIGKILL the driver once its only trial has checkpointed epoch 2 of 4; `resume` goes on
    from that checkpoint instead of drawing a fresh trial. The Ray folder is given as a URI, so
    Tune writes and `resume` finds and reads it through pyarrow's filesystem, as a bucket would
    be (a plain folder is what every other sweep test uses)."""
    url, study = f"sqlite:///{tmp_path / 'sweeps.db'}", "driver-died"
    ray_dir = Path(cli_env["CREDITSWEEP_RAY_DIR"])
    cli_env = {**cli_env, "CREDITSWEEP_RAY_DIR": f"file://{ray_dir}"}
    proc = subprocess.Popen(
        cli("sweep", "--rule", "direct_feedback_alignment", "--arch", "resnet8", "--epochs", "4",
            "--batch-size", "64", "--trials", "1", "--space", "lr=0.01:0.1", "--study", study,
            "--storage", url),
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Registered by the driver (not merely uploaded): the state a resume would find whole.
    _kill_when(proc, lambda: bool(registered_at_least(ray_dir, "checkpoint_000001")),
               "epoch 2's checkpoint registered")
    kill_ray_of(cli_env["RAY_TMPDIR"])
    assert _trials(url, study) == []
    done = subprocess.run(cli("resume", "--study", study, "--storage", url), env=cli_env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "continuing 1 trial(s) the stopped driver left running" in done.stderr
    (trial,) = _trials(url, study)
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["restored_from_epoch"] >= 2
    assert trial.user_attrs["continued_from"].startswith("driver-died-")
    assert [r["epoch"] for r in trial.user_attrs["history"]] == [1, 2, 3, 4]
    print(f"\ndriver killed: resume continued the trial from epoch "
          f"{trial.user_attrs['restored_from_epoch']} of 4")
