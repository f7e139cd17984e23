"""Transfer-aware sweeps: each trial scored on several architectures at once, and Optuna's TPE
beside hyperopt's; checked on a real local Ray into a real SQLite study."""

import json
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from catalogue.tasks import get_task
from search import storage as st
from search.across_trial import ArchCheckpointer, Progress, across_summary, objective_so_far
from search.cli import main
from search.execution import Execution
from search.objectives import OBJECTIVES, score
from search.recording import record_from_results
from search.searchers import make_search_alg
from search.specs import SweepSpec
from search.sweep import run_sweep
from search.reproduce import probe_epochs, trial_config
from search.transfer import run_transfer
from search.specs import TransferSpec
from spaces import default_space
from tunestate import registered_at_least
from trainer.checkpoint import read, write

CLASSIFICATION = get_task("classification")


@pytest.mark.parametrize("values", [[0.9, 0.7], [0.5, 0.5, 0.2], [0.0, 0.8]])
def test_objectives_match_their_closed_forms(values):
    mean = sum(values) / len(values)
    assert score("mean", values) == pytest.approx(mean)
    assert score("min", values) == min(values)
    assert score("gap", values) == pytest.approx(mean - (max(values) - min(values)))
    assert score("guard", values) == (values[0] if min(values[1:]) > 0 else 0.0)
    assert set(OBJECTIVES.names()) == {"mean", "min", "gap", "guard"}
    with pytest.raises(ValueError):
        score("mean", [])


@pytest.mark.parametrize("values, floor, expected", [
    ([0.8, 0.3], 0.0, 0.8),  # a probe far below the source does not lower it
    ([0.8, 0.0], 0.0, 0.0),  # a diverged probe vetoes
    ([0.4, 0.9, 0.0], 0.0, 0.0),
    ([0.5, -0.2], -1.0, 0.5),  # R^2: its floor is -1, a poor probe above it is no veto
    ([0.5, -1.0], -1.0, -1.0),
    ([0.5, -3.0], -1.0, -1.0),
])
def test_the_guard_counts_the_first_architecture_and_lets_the_others_veto(values, floor,
                                                                          expected):
    assert score("guard", values, floor) == expected


def test_a_diverged_architecture_counts_zero_and_is_recorded():
    finished = {"mlp": {"score": 0.8, "reason": None},
                "resnet8": {"score": 0.0, "reason": "non-finite training loss"}}
    summary = across_summary("mean", ["mlp", "resnet8"], finished, CLASSIFICATION)
    assert summary["value"] == pytest.approx(0.4)
    assert summary["diverged_archs"] == {"resnet8": "non-finite training loss"}
    # before the last architecture ends, the objective counts the untrained ones as 0
    progress = Progress(1, {"mlp": {"score": 0.8, "reason": None}})
    assert objective_so_far("min", ["mlp", "resnet8"], progress, "resnet8", 0.6) == 0.6
    assert objective_so_far("mean", ["mlp", "resnet8", "resnet14"], progress, "resnet8",
                            0.6) == pytest.approx(1.4 / 3)


def _epoch(arch, index, epoch, top1, epochs=2):
    return {"epoch": epoch, "val_top1": top1, "status": "running", "arch": arch,
            "arch_index": index, "epoch_overall": index * epochs + epoch, "wall_time": 1.0}


def test_a_retried_multi_architecture_trial_keeps_its_last_attempt_and_its_objective():
    first = [_epoch("mlp", 0, 1, 0.5), _epoch("mlp", 0, 2, 0.6),
             {"status": "running", "arch": "mlp", "arch_done": True, "arch_score": 0.6}]
    # per-architecture epochs restart at 1 without being a new attempt ...
    attempt = [_epoch("mlp", 0, 1, 0.7), _epoch("mlp", 0, 2, 0.8),
               {"status": "running", "arch": "mlp", "arch_done": True, "arch_score": 0.8},
               _epoch("resnet8", 1, 1, 0.6), _epoch("resnet8", 1, 2, 0.9)]
    summary = across_summary("gap", ["mlp", "resnet8"], {"mlp": {"score": 0.8, "reason": None},
                                                         "resnet8": {"score": 0.9,
                                                                     "reason": None}},
                             CLASSIFICATION)
    final = {"status": "completed", "objective": summary["value"],
             "across_json": json.dumps(summary), "wall_time": 4.0}
    # ... but going back to an earlier overall epoch is: the first attempt is dropped
    record = record_from_results("t1", ({"alpha": 0.1}, {}), first + attempt + [final], None)
    assert [r["val_top1"] for r in record.history] == [0.7, 0.8, 0.6, 0.9]
    assert record.status == "completed" and record.value == pytest.approx(0.85 - 0.1)
    assert record.extra["val_top1_by_arch"] == {"mlp": 0.8, "resnet8": 0.9}
    frozen = st.to_frozen_trial(record, default_space("weight_mirror").to_optuna())
    assert frozen.state == TrialState.COMPLETE and frozen.value == pytest.approx(0.75)
    assert frozen.intermediate_values == {1: 0.7, 2: 0.8, 3: 0.6, 4: 0.9}


def test_checkpointed_progress_survives_a_safe_load(tmp_path):
    """The trial's progress rides in the training state, which is loaded with
    weights_only=True: it must be plain containers, and restore only into its architecture."""
    progress = Progress(1, {"mlp": {"score": 0.8, "reason": None}},
                        [_epoch("mlp", 0, 1, 0.8), {"arch_done": True, "arch": "mlp"}])

    class Outer:
        every = 1

        def save(self, state):
            write(state, tmp_path)

    ArchCheckpointer(Outer(), progress, None).save({"model": {}, "history": [], "step": 3})
    state = read(tmp_path)
    again = Progress.of(state)
    assert (again.index, again.finished, again.rows) == (progress.index, progress.finished,
                                                         progress.rows)
    assert ArchCheckpointer(Outer(), again, state).restore()["step"] == 3
    between = Progress.of(progress.as_state())  # saved between architectures: no model
    assert ArchCheckpointer(Outer(), between, progress.as_state()).restore() is None


@pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant to only be called")
@pytest.mark.parametrize("as_uri", [False, True])
def test_a_retry_from_the_checkpoint_between_architectures_starts_the_next(tmp_path, as_uri):
    """A worker killed before the next architecture's first checkpoint reached the driver is
    retried from the one written between architectures: it holds the progress and no training
    state of its own, and must restore as 'next architecture, from its start'. Read from a
    folder and through a URI (pyarrow's filesystem, as from a bucket)."""
    from search.trainable import TuneCheckpointer

    done = Progress(1, {"mlp": {"score": 0.8, "reason": None}},
                    [_epoch("mlp", 0, 1, 0.8), {"arch_done": True, "arch": "mlp"}])
    write(done.as_state(), tmp_path)
    outer = TuneCheckpointer(1, restore_from=f"file://{tmp_path}" if as_uri else str(tmp_path))
    state = outer.restore()
    assert outer.restored == []  # no epochs of the next architecture yet
    assert Progress.of(state).index == 1 and Progress.of(state).finished == done.finished
    assert ArchCheckpointer(outer, Progress.of(state), state).restore() is None


@pytest.mark.parametrize("argv, message", [
    (["--arch", "mlp,nosuchnet"], "unknown architecture 'nosuchnet'; valid:"),
    (["--arch", "mlp,mlp"], "--arch names an architecture twice"),
    (["--arch", ""], "--arch expects a comma-separated list"),
    (["--arch", "mlp,,resnet8"], "--arch expects a comma-separated list"),
    (["--arch", "mlp,resnet8", "--objective", "median"], "unknown objective 'median'; valid:"),
    (["--arch", "mlp,resnet8", "--scheduler", "asha"], "use --scheduler fifo"),
    (["--arch", "mlp,resnet8", "--searcher", "smac"], "--searcher"),
    (["--arch", "mlp,resnet8", "--arch-epochs", "resnet14=1"], "not one of --arch mlp,resnet8"),
    (["--arch", "mlp", "--arch-epochs", "mlp=1"], "--stop-after-epochs"),
    (["--arch", "mlp,resnet8", "--epochs", "2", "--arch-epochs", "resnet8=3"],
     "from 1 to --epochs (2)"),
    (["--arch", "mlp,resnet8", "--arch-epochs", "resnet8=0.5"], "a whole number of epochs"),
    (["--arch", "mlp,resnet8", "--arch-epochs", "resnet8"], "expects NAME=VALUE"),
    (["--arch", "mlp,resnet8", "--epochs", "2", "--arch-epochs", "mlp=1", "--objective",
      "guard"], "shorten the others"),
])
def test_bad_architecture_lists_are_one_line_and_write_nothing(tmp_path, capsys, argv,
                                                                message):
    db = tmp_path / "s.db"
    try:
        code = main(["sweep", "--rule", "weight_mirror", "--trials", "1", *argv,
                     "--storage", f"sqlite:///{db}", "--ray-dir", str(tmp_path / "ray")])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err
    assert not db.exists() and not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_transfer_aware_sweep_end_to_end(ray_session, ray_dir, tmp_path, capsys):
    """Each trial trains on both architectures; its value is the objective of their top-1;
    `trials`, `best`, `resume`, a continued Optuna search and `transfer` all read it."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = SweepSpec(rule="weight_mirror", arch="mlp", archs=["mlp", "resnet8"],
                     objective="min", dataset="digits", epochs=1, trials=3, storage=url,
                     execution=Execution(max_concurrent=2), searcher="optuna",
                     train={"max_steps_per_epoch": 4})
    stored = SweepSpec.from_dict(spec.to_dict(), url)  # what `resume` rebuilds
    assert (stored.architectures(), stored.objective, stored.study_name()) == \
        (["mlp", "resnet8"], "min", "weight_mirror.mlp+resnet8.digits")
    lines = []
    outcome = run_sweep(spec, progress=lines.append)
    assert outcome.study == "weight_mirror.mlp+resnet8.digits" and outcome.objective == "min"
    study = optuna.load_study(study_name=outcome.study, storage=url)
    assert study.user_attrs["archs"] == ["mlp", "resnet8"]
    trials = study.get_trials()
    assert len(trials) == 3
    for t in trials:
        assert t.user_attrs["searcher"] == "optuna"
        by_arch = t.user_attrs.get("val_top1_by_arch")
        if t.state == TrialState.COMPLETE:
            assert set(by_arch) == {"mlp", "resnet8"}
            assert t.value == pytest.approx(min(by_arch.values()))
            assert {r["arch"] for r in t.user_attrs["history"]} <= {"mlp", "resnet8"}
            assert sorted(t.intermediate_values) == [1, 2]  # one epoch on each, in order
    per_arch = [ln for ln in lines if "(architecture 2 of 2)" in ln]
    assert len(per_arch) + sum(t.state == TrialState.FAIL for t in trials) >= 3

    assert main(["trials", "--study", outcome.study, "--storage", url, "--format",
                 "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"top1_mlp", "top1_resnet8", "diverged_archs", "searcher"} <= set(rows[0])
    assert main(["best", "--study", outcome.study, "--storage", url]) == 0
    assert "min over mlp" in capsys.readouterr().out
    assert main(["report", "--study", outcome.study, "--storage", url, "--out",
                 str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "architectures.png").stat().st_size > 0
    table = (tmp_path / "report" / "summary.md").read_text()
    assert "| rank | trial | min | mlp | resnet8 |" in table

    # continued with the other objective: refused, the values would mean another thing
    with pytest.raises(Exception, match="objective"):
        run_sweep(SweepSpec(**{**spec.__dict__, "objective": "mean", "trials": 1}))
    # continued with Optuna's TPE, which starts from the three recorded trials
    lines.clear()
    run_sweep(SweepSpec(**{**spec.__dict__, "trials": 1}), progress=lines.append)
    assert any("Optuna's TPE starts from 3 earlier trials" in ln for ln in lines)
    assert len(optuna.load_study(study_name=outcome.study, storage=url).trials) == 4

    summary = run_transfer(TransferSpec(rule="weight_mirror", source="mlp+resnet8",
                                        targets=["resnet14"], seeds=1, storage=url,
                                        execution=Execution(max_concurrent=2),
                                        train={"max_steps_per_epoch": 4}), progress=print)
    assert summary["source_study"] == outcome.study
    assert [row["target"] for row in summary["rows"]] == ["resnet14"]


def test_a_shortening_is_identity_and_a_transfer_trains_whole_runs():
    from search.transfer import source_training

    def spec(**shortening):
        return SweepSpec(rule="weight_mirror", arch="mlp", archs=["mlp", "resnet8"], epochs=2,
                         objective="guard", arch_epochs=shortening)

    assert spec(resnet8=2).configuration() == spec().configuration()  # the whole run
    assert spec(resnet8=1).configuration()["arch_epochs"] == {"resnet8": 1}
    source = optuna.create_study(direction="maximize")
    for key, value in {"rule": "weight_mirror", "epochs": 3, "space": {"fixed": {"lr": 0.1}},
                       "train": {"stop_after_epochs": 1, "train_subset": 500}}.items():
        source.set_user_attr(key, value)
    assert source_training(source) == {"train_subset": 500, "lr": 0.1, "epochs": 3}


@pytest.mark.slow
def test_a_shortened_architecture_trains_the_first_epochs_and_only_vetoes(ray_session, ray_dir,
                                                                         tmp_path, capsys):
    """Depth as a fidelity: resnet8 trains 1 of the 2 epochs (the history says so), the guard
    scores the trial by mlp alone, and the study keeps the shortening as its identity."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = SweepSpec(rule="weight_mirror", arch="mlp", archs=["mlp", "resnet8"],
                     arch_epochs={"resnet8": 1}, objective="guard", dataset="digits", epochs=2,
                     trials=2, storage=url, execution=Execution(max_concurrent=2),
                     train={"max_steps_per_epoch": 3})
    assert SweepSpec.from_dict(spec.to_dict(), url).arch_epochs == {"resnet8": 1}  # resume
    outcome = run_sweep(spec, progress=lambda line: None)
    study = optuna.load_study(study_name=outcome.study, storage=url)
    assert study.user_attrs["configuration"]["arch_epochs"] == {"resnet8": 1}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        epochs = [r["epoch"] for r in t.user_attrs["history"] if r["arch"] == "resnet8"]
        assert epochs == [1]
        assert [r["epoch"] for r in t.user_attrs["history"] if r["arch"] == "mlp"] == [1, 2]
        by_arch = t.user_attrs["val_top1_by_arch"]
        assert t.value == pytest.approx(by_arch["mlp"] if by_arch["resnet8"] > 0 else 0.0)
    with pytest.raises(Exception, match="arch_epochs"):  # the whole run: another study
        run_sweep(SweepSpec(**{**spec.__dict__, "arch_epochs": {"resnet8": 2}, "trials": 1}))
    # the best trial re-run on the probed depth trains it as the trial did; a transfer of the
    # study trains whole runs
    best = study.best_trial
    assert trial_config(study, best)["stop_after_epochs"] is None
    assert probe_epochs(study, "resnet8") == 1 and probe_epochs(study, "mlp") is None
    assert main(["best", "--study", outcome.study, "--storage", url]) == 0
    assert "(first 1 epoch)" in capsys.readouterr().out


def test_optuna_searcher_is_multivariate_seeded_and_warm_started():
    space = default_space("weight_mirror")
    history = [({"alpha": 0.01, "beta": 0.1, "sigma": 1.0}, 0.8),
               ({"alpha": 1e-4, "beta": 1.0, "sigma": 0.1}, 0.2)]
    alg = make_search_alg("optuna", space, seed=3, max_concurrent=2, initial_points=2,
                          evaluated=history)
    searcher = alg.searcher
    sampler = searcher._sampler
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._multivariate
    config = searcher.suggest("trial-0")
    assert space.contains(config)
    warm = searcher._ot_study.get_trials()
    assert sorted(t.value for t in warm if t.state == TrialState.COMPLETE) == [0.2, 0.8]
    # the same seed and history draw the same next setting
    again = make_search_alg("optuna", space, seed=3, max_concurrent=2, initial_points=2,
                            evaluated=history).searcher.suggest("trial-0")
    assert again == config


@pytest.mark.slow
def test_a_worker_killed_on_the_second_architecture_goes_on_from_there(ray_session, ray_dir,
                                                                       tmp_path):
    """Killed after ResNet-8's first epoch: the retry restores that epoch, the MLP, already
    done, is not trained again, and the study holds each architecture's epochs once."""
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    from procs import descendants

    url = f"sqlite:///{tmp_path / 's.db'}"
    stop, killed = threading.Event(), []

    def kill_at_third_checkpoint() -> None:
        # checkpoints: mlp epoch 1, between the architectures, resnet8 epoch 1
        while not stop.is_set() and not killed:
            # registered with the driver, not merely uploaded: a kill in between would be
            # retried from the checkpoint before it
            found = registered_at_least(Path(ray_dir), "checkpoint_000002")
            workers = [pid for pid, proc, _ in descendants(os.getpid())
                       if proc.startswith("ray::ImplicitF")]
            if found and workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_at_third_checkpoint)
    killer.start()
    lines = []
    try:
        run_sweep(SweepSpec(rule="weight_mirror", arch="mlp", archs=["mlp", "resnet8"],
                            epochs=2, trials=1, initial_points=1, storage=url, study="killed",
                            execution=Execution(max_concurrent=1),
                            train={"batch_size": 64}), progress=lines.append)
    finally:
        stop.set()
        killer.join()
    assert killed, "no trial worker was killed"
    (trial,) = optuna.load_study(study_name="killed", storage=url).get_trials()
    assert trial.user_attrs["attempts"] == 2
    assert [(r["arch"], r["epoch"]) for r in trial.user_attrs["history"]] == \
        [("mlp", 1), ("mlp", 2), ("resnet8", 1), ("resnet8", 2)]
    # the MLP's result came back from the checkpoint: it was reported once, before the kill
    assert sum("mlp val top-1" in ln or "mlp diverged" in ln for ln in lines) == 1
    if trial.state == TrialState.COMPLETE:
        by_arch = trial.user_attrs["val_top1_by_arch"]
        assert trial.value == pytest.approx(statistics.fmean(by_arch.values()))
