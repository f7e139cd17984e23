"""End-to-end sweeps on a real local Ray (2 CPUs) into a real SQLite file."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dbstate import sqlite_digest, study_or_none
from procs import cli
from search.cli import main
from search.execution import Execution
from search.searchers import make_search_alg
from search.sweep import SweepSpec, run_sweep
from spaces import apply_overrides, default_space

SMALL = dict(rule="weight_mirror", arch="mlp", dataset="digits", epochs=2,
             execution=Execution(max_concurrent=2))


def _url(tmp_path):
    return f"sqlite:///{tmp_path / 'sweeps.db'}"


@pytest.mark.slow
def test_sweep_records_every_trial_and_continues(ray_session, ray_dir, tmp_path, capsys):
    url = _url(tmp_path)
    lines = []
    # The noise distribution is searched too: a categorical dimension through TPE, the study
    # and the continued sweep's warm start (hyperopt keeps it as an index).
    space = apply_overrides(default_space("weight_mirror"), ["noise_distribution=normal,uniform"])
    outcome = run_sweep(SweepSpec(**SMALL, trials=6, storage=url, space=space),
                        progress=lines.append)
    study = optuna.load_study(study_name="weight_mirror.mlp.digits", storage=url)
    trials = study.get_trials()
    assert len(trials) == 6 and outcome.added == 6
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.FAIL)
        assert set(t.params) == set(space.params) and space.contains(t.params)
        assert t.params["noise_distribution"] in ("normal", "uniform")
        assert type(t.distributions["noise_distribution"]).__name__ == "CategoricalDistribution"
        if t.state == TrialState.COMPLETE:
            assert t.value == max(t.intermediate_values.values())
            assert sorted(t.intermediate_values) == [1, 2]
            assert {"weight_angle_mean", "norm_ratio_mean"} <= set(t.user_attrs["diagnostics"])
            assert t.user_attrs["wall_time"] > 0
            assert t.duration.total_seconds() == pytest.approx(t.user_attrs["wall_time"],
                                                              abs=1e-3)
        else:
            assert t.user_attrs["fail_reason"]
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 6
    assert study.user_attrs["rule"] == "weight_mirror" and study.user_attrs["epochs"] == 2
    trial_lines = [ln for ln in lines if ln.startswith("[")]
    assert len(trial_lines) == 6 and trial_lines[-1].startswith("[6/6]")
    assert "best" in trial_lines[-1]
    # Every completed trial records B's plan, so the study can be filtered by it; the line
    # after the trials counts the ones whose B was not ok, as the study does.
    verdicts = [t.user_attrs["feedback_plan"]["verdict"] for t in trials
                if "feedback_plan" in t.user_attrs]  # a diverged trial may have one too
    assert len(verdicts) >= sum(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            plan = t.user_attrs["feedback_plan"]
            assert t.user_attrs["relaxations_min"] == plan["relaxations_min"]
            assert set(t.user_attrs["feedback_plan_per_layer"]) == {"1", "3", "5"}
            assert plan["initial"]["epoch"] == 0 and plan["epoch"] == 2
            assert [r["plan_verdict"] for r in t.user_attrs["history"]][-1] == plan["verdict"]
    bad = sum(v != "ok" for v in verdicts)
    summary = [ln for ln in lines if ln.startswith("B's plan:")]
    assert len(summary) == (1 if bad else 0)
    if bad:
        under = verdicts.count("under-relaxed")
        assert (f"{under} under-relaxed of {len(verdicts)} trials" in summary[0]) == bool(under)
    # `best` agrees with Optuna's own best trial.
    assert main(["best", "--study", "weight_mirror.mlp.digits", "--storage", url,
                 "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["value"] == study.best_trial.value and best["params"] == study.best_trial.params
    # Optuna's CLI reads the study as it is.
    optuna_cli = Path(sys.executable).with_name("optuna")
    proc = subprocess.run([str(optuna_cli), "trials", "--study-name", "weight_mirror.mlp.digits",
                           "--storage", url, "-f", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 6
    # A second sweep on the same study adds trials, and TPE starts from the earlier ones.
    lines.clear()
    run_sweep(SweepSpec(**SMALL, trials=3, storage=url, space=space), progress=lines.append)
    assert len(study.get_trials()) == 9
    assert any("TPE starts from 6 earlier trials" in line for line in lines)
    assert [ln for ln in lines if ln.startswith("[")][-1].startswith("[3/3]")  # its own count


def test_tpe_receives_earlier_trials():
    space = default_space("symmetric_alignment")
    earlier = [({"alpha": 1e-3, "beta": 2e-3}, 0.9), ({"alpha": 1.0, "beta": 5.0}, 0.0)]
    alg = make_search_alg("tpe", space, seed=0, max_concurrent=2, initial_points=1,
                          evaluated=earlier)
    # Only public state: HyperOptSearch.get_state() carries hyperopt's Trials. If a Ray
    # release changes that, this test fails loudly instead of TPE silently starting cold.
    history = alg.searcher.get_state()["hyperopt_trials"]
    assert sum(t["state"] == 2 for t in history.trials) == 2  # hyperopt's JOB_STATE_DONE
    losses = sorted(t["result"]["loss"] for t in history.trials)
    assert losses == [-0.9, 0.0]  # hyperopt minimises: reward 0.9 became loss -0.9
    config = alg.suggest("t1")
    assert space.contains(config)
    assert len(alg.searcher.get_state()["hyperopt_trials"].trials) == 3


@pytest.mark.slow
def test_diverging_trials_are_fail_rows_and_sweep_completes(ray_session, ray_dir, tmp_path):
    url = _url(tmp_path)
    space = apply_overrides(default_space("weight_mirror"), ["beta=50:100"], ["sigma=10"])
    run_sweep(SweepSpec(**SMALL, trials=3, storage=url, space=space, study="wm-diverge"),
              progress=lambda line: None)
    trials = optuna.load_study(study_name="wm-diverge", storage=url).get_trials()
    assert len(trials) == 3
    for t in trials:
        assert t.state == TrialState.FAIL
        reason = t.user_attrs["fail_reason"]
        assert "non-finite" in reason or "past its ceiling" in reason, reason
        assert t.user_attrs["status"] == "diverged"


@pytest.mark.slow
def test_random_searcher_and_asha(ray_session, ray_dir, tmp_path):
    url = _url(tmp_path)
    run_sweep(SweepSpec(**{**SMALL, "epochs": 3}, trials=4, storage=url, study="r",
                        searcher="random", scheduler="asha"), progress=lambda line: None)
    trials = optuna.load_study(study_name="r", storage=url).get_trials()
    assert len(trials) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}


@pytest.mark.parametrize("args,match", [
    (["--rule", "nope"], "unknown rule 'nope'"),
    (["--arch", "resnet19"], "unknown architecture"),
    (["--dataset", "cifar100"], "unknown dataset"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "no CIFAR-10 batches"),
    (["--space", "alpha=1:0.1"], "must be below"),
    (["--space", "alpha=-1:1"], "log scale needs positive"),
    (["--space", "gamma=1e-3:1"], "unknown parameter 'gamma'"),
    (["--fix", "temperature=1"], "unknown parameter 'temperature'"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--trials", "-3"], "--trials must be at least 1"),
    (["--space", "lr=0.01:0.1", "--lr", "0.05"], "conflicts"),
    (["--epochs", "0"], "epochs must be a positive"),
    (["--gpus-per-trial", "2"], "--gpus-per-trial must be between 0 and 1"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
])
def test_bad_sweep_input_exit_2_database_unchanged(args, match, tmp_path, capsys):
    url = _url(tmp_path)
    optuna.create_study(study_name="keep", storage=url).add_trial(
        optuna.trial.create_trial(value=0.5))
    before = sqlite_digest(url)
    code = main(["sweep", "--rule", "weight_mirror", "--storage", url, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and match in err[-1] and err[-1].startswith("creditsweep: error:")
    assert sqlite_digest(url) == before


@pytest.mark.slow
def test_bad_storage_and_unknown_study(tmp_path, capsys):
    assert main(["sweep", "--storage", "not a url", "--trials", "1"]) == 2
    assert "malformed storage URL" in capsys.readouterr().err
    assert main(["sweep", "--storage", "", "--trials", "1"]) == 2
    assert "--storage is empty" in capsys.readouterr().err
    url = "postgresql+psycopg://user:hunter2@127.0.0.1:1/none"
    assert main(["status", "--storage", url]) == 3  # unreachable: its own exit code
    err = capsys.readouterr().err
    assert "hunter2" not in err and "is unreachable" in err
    url = _url(tmp_path)
    # Read-only commands never create a database file.
    for cmd in (["status"], ["best", "--study", "missing"], ["trials", "--study", "missing"]):
        assert main([*cmd, "--storage", url]) == 2
        assert "no database at" in capsys.readouterr().err
        assert sqlite_digest(url) is None
    optuna.create_study(study_name="other", storage=url)
    for cmd in (["best", "--study", "missing"], ["trials", "--study", "missing"],
                ["resume", "--study", "missing"]):
        assert main([*cmd, "--storage", url]) == 2
        assert "no study named 'missing'; studies here: 'other'" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_exactly_n(tmp_path, cli_env):
    url = _url(tmp_path)
    n = 6
    # ResNet-8 trials of a few seconds, so that the interrupt lands mid-sweep.
    proc = subprocess.Popen(cli("sweep", "--rule", "weight_mirror", "--arch", "resnet8",
                                "--epochs", "4", "--trials", str(n), "--storage", url,
                                "--study", "interrupted"),
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    recorded = 0
    while time.time() < deadline and proc.poll() is None:
        study = study_or_none(url, "interrupted")
        recorded = len(study.trials) if study else 0
        if recorded >= 2:
            break
        time.sleep(0.5)
    assert recorded >= 2 and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
    proc.send_signal(signal.SIGINT)  # Tune saves its state and stops
    proc.wait(timeout=120)
    partial = len(optuna.load_study(study_name="interrupted", storage=url).trials)
    assert partial < n
    # Not dressed up as a finished sweep: exit 130, what was recorded, the exact command
    # that goes on, and neither a final result nor Ray's Tuner.restore hint.
    output = proc.stdout.read()
    assert proc.returncode == 130, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("creditsweep: interrupted by SIGINT: "), output[-3000:]
    assert f"{partial} of {n} trials" in last
    assert last.endswith(f"continue with: creditsweep resume --study interrupted --storage {url}")
    assert "Tuner.restore" not in output and "best val top-1" not in output
    # As a user runs it: Ray's authentication mode left unset, a home folder of its own.
    user_env = {k: v for k, v in cli_env.items() if k != "RAY_AUTH_MODE"}
    user_env["HOME"] = str(tmp_path / "home")
    done = subprocess.run(cli("resume", "--study", "interrupted", "--storage", url),
                          env=user_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # A local sweep prints only creditsweep's own lines (no Ray token-authentication notice).
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    own = ("resuming sweep", "continuing study", "continuing 1 trial", "continuing 2 trial",
           "[", "B's plan")
    assert lines and all(ln.startswith(own) for ln in lines), done.stderr[-3000:]
    trials = optuna.load_study(study_name="interrupted", storage=url).trials
    ids = [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(trials) == n and len(set(ids)) == n
    # Trials cut short by the interrupt were run again, not kept as if a scheduler pruned them.
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_a_clear_error(ray_session, tmp_path, capsys):
    db = tmp_path / "sweeps.db"
    code = main(["sweep", "--rule", "weight_mirror", "--arch", "mlp", "--trials", "1",
                 "--gpus-per-trial", "0.5", "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert code == 2 and "asks for 0.5 GPU(s) but the Ray cluster has 0" in err
    assert not db.exists() or "weight_mirror" not in str(
        [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")])


def test_a_retried_trials_history_is_its_last_attempt():
    from search.recording import last_attempt

    first = [{"epoch": 1, "val_top1": 0.1}, {"epoch": 2, "val_top1": 0.2}]
    second = [{"epoch": 1, "val_top1": 0.3}, {"epoch": 2, "val_top1": 0.4},
              {"epoch": 3, "val_top1": 0.5}]
    assert last_attempt(first + second) == second
    assert last_attempt(second) == second and last_attempt([]) == []


def test_trials_use_the_gpu_ray_assigned_else_the_cpu():
    from search.trainable import trial_device

    assert trial_device("auto", [0]) == "cuda"  # Ray narrowed CUDA_VISIBLE_DEVICES to it
    assert trial_device("auto", []) == "cpu"  # reserved none: never borrow a GPU
    assert trial_device("cpu", [0]) == "cpu"


def _answer_http1(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sweep", "transfer", "robustness"])
def test_an_unusable_ray_dir_or_address_fails_before_anything_is_written(tmp_path, capsys,
                                                                         command):
    """These used to fail inside Ray after the study (and an empty sweep) had been written: an
    uncreatable --ray-dir as an internal error, a refused --address after minutes of retries,
    and a port that accepts but is not Ray only after Ray's GCS timeout (over 3 minutes)."""
    from procs import free_port

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    db = tmp_path / "s.db"
    argv = {"sweep": ["sweep", "--arch", "mlp", "--trials", "1"],
            "transfer": ["transfer", "--rule", "symmetric_alignment", "--defaults",
                         "--targets", "mlp"],
            "robustness": ["robustness", "--rules", "symmetric_alignment", "--arch", "mlp",
                           "--noise", "0"]}[command]
    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts or answers
    talker = socket.create_server(("127.0.0.1", 0))  # answers like an HTTP/1 server
    threading.Thread(target=_answer_http1, args=(talker,), daemon=True).start()
    cases = ((["--ray-dir", str(blocker / "ray")], "--ray-dir"),
             (["--address", f"127.0.0.1:{free_port()}"], "no Ray head"),
             (["--address", f"127.0.0.1:{silent.getsockname()[1]}"], "never answers"),
             (["--address", f"127.0.0.1:{talker.getsockname()[1]}"], "not a Ray head"))
    for flags, expected in cases:
        started = time.monotonic()
        assert main([*argv, *flags, "--storage", f"sqlite:///{db}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert time.monotonic() - started < 30
        assert not db.exists()  # validated before the database was even opened


@pytest.mark.parametrize("searcher", ["tpe", "optuna"])
def test_both_tpes_take_a_history_with_a_categorical_dimension(searcher):
    space = apply_overrides(default_space("weight_mirror"), ["noise_distribution=normal,uniform"])
    earlier = [({"alpha": 1e-3, "beta": 1e-3, "sigma": 1.0, "noise_distribution": "uniform"},
                0.9),
               ({"alpha": 1.0, "beta": 5.0, "sigma": 3.0, "noise_distribution": "normal"}, 0.0)]
    alg = make_search_alg(searcher, space, seed=0, max_concurrent=2, initial_points=1,
                          evaluated=earlier)
    configs = [alg.suggest(f"t{i}") for i in range(2)]
    for config in configs:
        assert space.contains(config), config
        assert config["noise_distribution"] in ("normal", "uniform")
