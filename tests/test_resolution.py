"""Trials run what the driver checked (real Ray, real SQLite, real IDX files): a relative data
folder from another working directory, input refused before Ray starts, a study's
configuration as its identity, transfer baselines under the source's configuration, and
deterministic refusals recorded once, never retried."""

import json

import optuna
import pytest
import torch
from optuna.trial import TrialState

from dbstate import sqlite_digest
from search.cli import main
from search.execution import Execution
from search.planned import PlannedRun, run_planned
from test_idx import write_mnist

SWEEP = ["sweep", "--rule", "feedback_alignment", "--arch", "mlp", "--trials", "2",
         "--epochs", "1", "--space", "lr=0.01:0.1", "--max-concurrent", "2"]


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]


@pytest.mark.slow
def test_a_relative_data_dir_is_the_folder_every_trial_reads(ray_session, ray_dir, tmp_path,
                                                             monkeypatch, capsys):
    """40 training images in ./idx: a worker that resolved the folder on its own would find
    nothing there, or fall back to the system's 60,000 Fashion-MNIST images."""
    write_mnist(tmp_path / "idx", n_train=40, n_val=20)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main([*SWEEP, "--dataset", "fashion_mnist", "--data-dir", "idx",
                 "--storage", url]) == 0
    study = optuna.load_study(study_name="feedback_alignment.mlp.fashion_mnist", storage=url)
    folder = str((tmp_path / "idx").resolve())
    assert study.user_attrs["train"]["data_dir"] == folder
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert (t.user_attrs["train_size"], t.user_attrs["val_size"]) == (40, 20)
        assert t.user_attrs["train_config"]["data_dir"] == folder
    # `best` names the command that re-runs its trial, and that command, from anywhere,
    # trains the same run on the same folder.
    capsys.readouterr()
    assert main(["best", "--study", study.study_name, "--storage", url, "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out)
    command = best["reproduce"]
    assert torch.__version__.startswith(best["versions"]["torch"])
    assert best["versions"]["creditsweep"] and best["versions"]["ray"]
    assert command == (f"creditsweep train --from-study {study.study_name} --trial "
                       f"{study.best_trial.number} --storage {url}")
    monkeypatch.chdir(tmp_path.parent)
    assert main([*command.split()[1:], "--format", "json"]) == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["config"]["data_dir"] == folder and rerun["config"]["lr"] == pytest.approx(
        study.best_trial.params["lr"])
    assert rerun["history"][-1]["train_size"] == 40
    assert rerun["best_val_top1"] == pytest.approx(study.best_value, abs=1e-9)


@pytest.mark.parametrize("flags, message", [
    (["--set", "train_subset=100000"], "--train-subset 100000"),
    (["--fix", "train_subset=5000"], "--train-subset 5000"),
    (["--space", "train_subset=100:100000:linear"], "--train-subset 100000"),
    (["--image-size", "100000"], "100000"),
    (["--dataset", "fashion_mnist", "--data-dir", "no/such/folder"], "no/such/folder"),
])
def test_input_the_trials_would_refuse_is_refused_before_anything_runs(tmp_path, capsys,
                                                                       flags, message):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main([*SWEEP, *flags, "--storage", url]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and message in errors[0], errors
    assert sqlite_digest(url) is None  # no database, no study, no Ray experiment
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_a_study_is_its_configuration_and_transfer_baselines_train_under_it(
        ray_session, ray_dir, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    flags = ["--train-subset", "300", "--val-subset", "200", "--lr", "0.1"]
    source = ["sweep", "--rule", "weight_mirror", "--arch", "mlp", "--trials", "2",
              "--epochs", "1", "--storage", url]
    assert main([*source, *flags]) == 0
    capsys.readouterr()
    # Continuing under other epochs or options is refused in one line naming the difference.
    before = sqlite_digest(url)
    assert main([*source, "--epochs", "2", "--train-subset", "200", "--val-subset", "200",
                 "--lr", "0.1"]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "epochs 1 -> 2" in errors[0] and "train_subset" in errors[0]
    assert sqlite_digest(url) == before
    # ... or goes to a study of its own when asked, the same one each time.
    assert main([*source, "--epochs", "2", *flags, "--trials", "1", "--on-change", "new"]) == 0
    forks = [n for n in optuna.get_all_study_names(url) if "~" in n]
    assert len(forks) == 1 and forks[0].startswith("weight_mirror.mlp.digits~")
    assert len(optuna.load_study(study_name=forks[0], storage=url).trials) == 1
    # The transfer takes the source's dataset and configuration for every run it makes.
    assert main(["transfer", "--rule", "weight_mirror", "--source", "mlp", "--targets", "mlp",
                 "--seeds", "1", "--storage", url]) == 0
    said = capsys.readouterr().err  # ... and says so, and what to run next
    assert ("every run trains under source study weight_mirror.mlp.digits's configuration: "
            "dataset digits, epochs 1, train_subset 300, val_subset 200, lr 0.1") in said
    assert "next: creditsweep transfer-summary --study transfer.weight_mirror.mlp.digits" in said
    study = optuna.load_study(study_name="transfer.weight_mirror.mlp.digits", storage=url)
    runs = {t.user_attrs["role"]: t for t in study.trials}
    assert set(runs) == {"backprop", "transferred"}
    configs = {role: dict(t.user_attrs["train_config"]) for role, t in runs.items()}
    for config in configs.values():
        assert (config["train_subset"], config["val_subset"], config["lr"]) == (300, 200, 0.1)
        assert config["epochs"] == 1 and config["dataset"] == "digits"
    drop = ("rule", "metaparameters", "seed")
    assert ({k: v for k, v in configs["backprop"].items() if k not in drop}
            == {k: v for k, v in configs["transferred"].items() if k not in drop})
    for t in runs.values():
        assert (t.user_attrs["train_size"], t.user_attrs["val_size"]) == (300, 200)
    capsys.readouterr()
    assert main(["transfer-summary", study.study_name, "--storage", url]) == 0
    table = capsys.readouterr().out
    alpha = runs["transferred"].user_attrs["metaparameters"]["alpha"]
    assert "n/a (1 seed)" in table and f"alpha={alpha:.3g}" in table
    # A --dataset other than the source's is refused: its settings transfer on the same data.
    assert main(["transfer", "--rule", "weight_mirror", "--source-study",
                 "weight_mirror.mlp.digits", "--dataset", "fashion_mnist", "--targets", "mlp",
                 "--storage", url]) == 2
    assert "swept on digits" in _errors(capsys)[0]


@pytest.mark.slow
def test_a_configuration_training_refuses_is_recorded_once_never_retried(ray_session, ray_dir,
                                                                         tmp_path):
    """The driver's checks stop such input up front; a refusal that still happens in a trial
    (here a run planned past them) is a result: FAIL with its reason, on the first attempt."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="planned", storage=url, direction="maximize")
    run = PlannedRun("too-large", {"rule": "backprop", "arch": "mlp", "seed": 0,
                                   "train_subset": 100000}, {}, {"role": "check"})
    run_planned(Execution(max_failures=2), url, "planned", [run],
                {"dataset": "digits", "epochs": 1}, progress=lambda line: None)
    (trial,) = optuna.load_study(study_name="planned", storage=url).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["status"] == "invalid" and trial.user_attrs["attempts"] == 1
    assert "--train-subset 100000" in trial.user_attrs["fail_reason"]


@pytest.mark.slow
def test_a_sweep_whose_every_trial_failed_exits_non_zero(ray_session, ray_dir, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main(["sweep", "--rule", "backprop", "--arch", "mlp", "--trials", "1", "--epochs",
                 "1", "--space", "lr=1e6:1e7", "--storage", url]) == 1
    errors = _errors(capsys)
    assert len(errors) == 1 and "no trial of sweep" in errors[0] and "1 failed" in errors[0]
    study = optuna.load_study(study_name="backprop.mlp.digits", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert all(t.user_attrs["status"] == "diverged" for t in study.trials)


@pytest.mark.slow
def test_the_same_robustness_command_with_a_tuple_flag_finishes_its_runs(ray_session, ray_dir,
                                                                          tmp_path, capsys):
    """``--input-noise 0.5`` comes back from the study as a list: the re-run of the same
    command must be recognised as the same study and run only what is missing."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    command = ["robustness", "--rules", "backprop", "--arch", "mlp", "--noise", "0",
               "--epochs", "1", "--input-noise", "0.5", "--storage", url, "--format", "json"]
    assert main([*command, "--seeds", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["planned_runs"], first["missing_runs"]) == (1, 0)
    assert main([*command, "--seeds", "1"]) == 0  # the same command: nothing left to run
    assert "0 runs to do, 1 reused" in capsys.readouterr().err
    (trial,) = optuna.load_study(study_name="robustness.mlp.digits", storage=url).trials
    assert trial.user_attrs["train_config"]["input_noise"] == [0.5]
