"""Every storage path against a real PostgreSQL server, and concurrent writers."""

import json
import os
import shutil
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.sweep import SweepSpec, run_sweep


@pytest.mark.slow
def test_every_command_on_postgres(postgres, ray_session, ray_dir, tmp_path, capsys):
    url = postgres.create_database("sweeps")
    run_sweep(SweepSpec(rule="symmetric_alignment", arch="mlp", trials=3, epochs=1,
                        storage=url), progress=lambda line: None)
    study = optuna.load_study(study_name="symmetric_alignment.mlp.digits", storage=url)
    assert len(study.trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
    assert main(["best", "--study", study.study_name, "--storage", url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == study.best_value
    assert main(["status", "--storage", url]) == 0
    assert main(["trials", "--study", study.study_name, "--storage", url, "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "s3cret-pw" not in out.out + out.err and "***" in out.out
    assert len(out.out.strip().splitlines()) >= 3
    assert main(["resume", "--study", study.study_name, "--storage", url]) == 0
    assert main(["transfer", "--rule", "symmetric_alignment", "--source", "mlp", "--targets",
                 "mlp", "--epochs", "1", "--seeds", "1", "--storage", url]) == 0
    assert main(["transfer-summary", "transfer.symmetric_alignment.mlp.digits", "--storage",
                 url, "--format", "json"]) == 0
    assert main(["report", "--study", study.study_name, "--storage", url, "--out",
                 str(tmp_path / "report")]) == 0
    out = capsys.readouterr()
    assert "s3cret-pw" not in out.out + out.err
    assert "nothing to resume" in out.err
    assert len(optuna.load_study(study_name="transfer.symmetric_alignment.mlp.digits",
                                 storage=url).trials) == 2  # transferred + backprop
    assert list((tmp_path / "report").glob("*.png"))


@pytest.mark.slow
def test_concurrent_sweeps_into_one_study_lose_nothing(postgres, tmp_path):
    url = postgres.create_database("concurrent")
    env = {**os.environ, "CREDITSWEEP_RAY_DIR": str(tmp_path / "ray")}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "search.cli", "sweep", "--rule", "weight_mirror", "--arch",
         "mlp", "--epochs", "1", "--trials", "3", "--max-concurrent", "1", "--seed", str(i),
         "--study", "shared", "--storage", url],
        env={**env, "RAY_TMPDIR": f"/tmp/csc{os.getpid()}-{i}"},  # short: socket paths
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=400)
        assert p.returncode == 0, out[-2000:]
        assert "s3cret-pw" not in out
    for i in range(2):
        shutil.rmtree(f"/tmp/csc{os.getpid()}-{i}", ignore_errors=True)
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.trials
    # Each process registered its own sweep for `resume`; neither overwrote the other.
    assert len([k for k in study.user_attrs if k.startswith("sweep:")]) == 2
    ids = [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(trials) == 6 and len(set(ids)) == 6


BAD_INPUTS = [
    (["sweep", "--rule", "nope"], "unknown rule 'nope'"),
    (["sweep", "--arch", "resnet19"], "unknown architecture"),
    (["sweep", "--dataset", "cifar100"], "unknown dataset"),
    (["sweep", "--space", "alpha=1:0.1"], "must be below"),
    (["sweep", "--space", "alpha=-1:1"], "log scale needs positive"),
    (["sweep", "--trials", "-3"], "--trials must be at least 1"),
    (["sweep", "--dataset", "imagenet", "--data-dir", "/nonexistent"], "/nonexistent"),
    (["sweep", "--space", "lr=0.01:0.1", "--lr", "0.05"], "conflicts"),
    (["best", "--study", "missing"], "no study named 'missing'"),
    (["resume", "--study", "missing"], "no study named 'missing'"),
    (["resume", "--study", "keep", "--sweep", "nope"], "has no sweep"),
    (["best", "--study", "keep", "--rule", "weight_mirror"], "not both"),
    (["transfer", "--rule", "weight_mirror", "--targets", "resnet8"], "--defaults"),
]


def test_bad_input_exits_2_and_leaves_postgres_unchanged(postgres, capsys):
    """One database for every bad input; its full dump is compared after each."""
    url = postgres.create_database("badinput")
    study = optuna.create_study(study_name="keep", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    study.set_user_attr("sweep:keep-1", {"trials": 1, "started": 0.0, "spec": {}})
    before = postgres.dump("badinput")
    assert "keep" in before
    for args, match in BAD_INPUTS:
        code = main([*args, "--storage", url])
        out = capsys.readouterr()
        lines = out.err.strip().splitlines()
        assert code == 2, (args, out.err)
        assert len(lines) == 1 and lines[0].startswith("creditsweep: error:"), (args, out.err)
        assert match in lines[0], (args, lines[0])
        assert "s3cret-pw" not in out.out + out.err
        assert postgres.dump("badinput") == before, args


@pytest.mark.slow
def test_unreachable_or_malformed_postgres_url_is_one_line(postgres, capsys):
    closed = postgres.url("sweeps").replace(f":{postgres.port}/", ":1/")
    for url, match, code in ((closed, "is unreachable", 3),
                              ("postgresql+psycopg://u:s3cret-pw@127.0.0.1:notaport/x",
                               "malformed storage URL", 2)):
        assert main(["status", "--storage", url]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0] and "s3cret-pw" not in err[0]


def test_password_from_a_file_reaches_a_password_checking_server(postgres_factory, tmp_path,
                                                                monkeypatch, capsys):
    """The Docker-secret path: the URL has no password, the server demands one."""
    server = postgres_factory(password="file-only-pw-77")
    server.create_database("secret")
    url = f"postgresql+psycopg://{server.user}@127.0.0.1:{server.port}/secret"
    assert main(["status", "--storage", url]) == 2
    assert "no password supplied" in capsys.readouterr().err
    secret = tmp_path / "postgres_password"
    secret.write_text("file-only-pw-77\n")
    monkeypatch.setenv("CREDITSWEEP_STORAGE_PASSWORD_FILE", str(secret))
    optuna.create_study(study_name="via-secret", storage=url.replace(
        f"{server.user}@", f"{server.user}:file-only-pw-77@"))
    assert main(["status", "--storage", url, "--format", "json"]) == 0
    out = capsys.readouterr()
    assert [r["study"] for r in json.loads(out.out)] == ["via-secret"]
    assert "file-only-pw-77" not in out.out + out.err
    monkeypatch.setenv("CREDITSWEEP_STORAGE_PASSWORD_FILE", str(tmp_path / "missing"))
    assert main(["status", "--storage", url]) == 2
    assert "cannot read the storage password file" in capsys.readouterr().err
