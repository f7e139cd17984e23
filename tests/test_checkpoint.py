"""Checkpoints: a run killed after epoch k and restored is the run that was never killed; a
checkpoint that cannot be read costs its epochs, never the run, and says so."""

import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch

import trainer
from trainer.checkpoint import (FILE, PREVIOUS, CheckpointUnreadable, FolderCheckpointer, due,
                                read, state_problem, write)


class Killed(Exception):
    pass


class Recording(FolderCheckpointer):
    """A folder checkpointer that also keeps a copy of every state it saved, by epoch."""

    def __init__(self, folder, every=1):
        super().__init__(folder, every)
        self.saved = {}

    def save(self, state):
        super().save(state)
        self.saved[len(state["history"])] = read(self.folder)


CONFIG = dict(rule="information_alignment", arch="resnet8", dataset="digits", epochs=4,
              batch_size=64, max_steps_per_epoch=6, update_noise=1e-3,
              feedback_lr_multiplier="auto", diagnostics=True, seed=5)


def _equal(a, b) -> bool:
    """Deep, bitwise equality of two checkpoint states (tensors, containers, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def _without_times(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "wall_time")}
            for r in history]


# activation alignment with its preconditioned B (trainer.preconditioner): P is model state
PRECONDITIONED = dict(CONFIG, rule="activation_alignment",
                      feedback_preconditioner="covariance", max_steps_per_epoch=4)


@pytest.mark.slow
@pytest.mark.parametrize("config", [CONFIG, PRECONDITIONED],
                         ids=["information_alignment", "preconditioned"])
def test_a_run_killed_after_epoch_2_and_restored_ends_as_the_uninterrupted_run(tmp_path,
                                                                               config):
    straight = Recording(tmp_path / "straight")
    reference = trainer.train(config, checkpointer=straight)
    assert sorted(straight.saved) == [1, 2, 3]  # none after the last epoch

    def kill_after_2(record):
        if record["epoch"] == 2:
            raise Killed
    interrupted = Recording(tmp_path / "interrupted")
    with pytest.raises(Killed):
        trainer.train(config, callback=kill_after_2, checkpointer=interrupted)
    assert sorted(interrupted.saved) == [1, 2]
    epochs_seen = []
    resumed = trainer.train(config, callback=lambda r: epochs_seen.append(r["epoch"]),
                            checkpointer=interrupted)
    assert epochs_seen == [3, 4]  # it went on from epoch 2, not from the start
    # The state after the first restored epoch is bit for bit the uninterrupted run's: weights,
    # B, BatchNorm statistics, momentum, every random generator and the planner's ledger.
    after, expected = interrupted.saved[3], straight.saved[3]
    assert _equal({k: v for k, v in after.items() if k != "history"},
                  {k: v for k, v in expected.items() if k != "history"})
    assert _without_times(after["history"]) == _without_times(expected["history"])
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert _without_times(resumed.history) == _without_times(reference.history)
    assert resumed.feedback_plan == reference.feedback_plan


@pytest.mark.slow
def test_checkpoints_hold_no_code_and_a_planted_pickle_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    trainer.train({**CONFIG, "epochs": 2}, checkpointer=FolderCheckpointer(folder))
    assert read(folder)["step"] == 6  # loads with weights_only: tensors and plain values

    class Exploit:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').close()" % str(tmp_path / "pwned"),))

    (folder / PREVIOUS).unlink(missing_ok=True)
    (folder / "state.pt").write_bytes(pickle.dumps({"model": Exploit()}))
    with pytest.raises(CheckpointUnreadable, match="UnpicklingError"):
        read(folder)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("every, epochs, expected", [(1, 4, [1, 2, 3]), (2, 5, [2, 4]),
                                                     (0, 4, []), (3, 3, [])])
def test_checkpoint_epochs(every, epochs, expected):
    assert [e for e in range(1, epochs + 1) if due(every, e, epochs)] == expected


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _garbage(file: Path) -> None:
    file.write_bytes(b"\x00not a checkpoint\xff" * 100)


def _wrong_keys(file: Path) -> None:
    torch.save({"model": {}, "step": 3}, file)  # loads, but lacks the optimizer, history, rng


CORRUPTIONS = {"truncated": _truncate, "garbage": _garbage, "wrong keys": _wrong_keys}
SMALL = dict(rule="backprop", arch="mlp", dataset="digits", epochs=4, batch_size=64,
             max_steps_per_epoch=3, seed=5)  # what is tested here is the restore, not training


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_run_whose_checkpoint_cannot_be_read_starts_over_and_says_so(tmp_path, capsys,
                                                                       corrupt):
    """It was a crash at every retry; now the run starts from scratch and ends normally."""
    folder = tmp_path / "ckpt"
    stop = {"epoch": 2}

    def kill_after_2(record):
        if record["epoch"] == stop["epoch"]:
            raise Killed
    with pytest.raises(Killed):
        trainer.train(SMALL, callback=kill_after_2, checkpointer=FolderCheckpointer(folder))
    for name in (FILE, PREVIOUS):  # neither the last state nor the one before can be read
        corrupt(folder / name)
    with pytest.raises(CheckpointUnreadable):
        read(folder, check=state_problem)  # as a run reads it: with the keys it needs
    capsys.readouterr()
    epochs = []
    result = trainer.train(SMALL, callback=lambda r: epochs.append(r["epoch"]),
                           checkpointer=FolderCheckpointer(folder))
    assert epochs == [1, 2, 3, 4] and result.status == "completed"
    said = capsys.readouterr().err
    assert f"checkpoint {folder / FILE}: " in said and "starting from scratch" in said


def test_an_unreadable_checkpoint_falls_back_to_the_one_before(tmp_path):
    folder = tmp_path / "ckpt"

    def kill_after_3(record):
        if record["epoch"] == 3:
            raise Killed
    with pytest.raises(Killed):
        trainer.train(SMALL, callback=kill_after_3, checkpointer=FolderCheckpointer(folder))
    assert len(read(folder)["history"]) == 3 and (folder / PREVIOUS).is_file()
    _truncate(folder / FILE)
    said: list[str] = []
    assert len(read(folder, notice=said.append)["history"]) == 2
    assert len(said) == 1 and "going on from the previous one" in said[0]
    epochs = []
    trainer.train(SMALL, callback=lambda r: epochs.append(r["epoch"]),
                  checkpointer=FolderCheckpointer(folder))
    assert epochs == [3, 4]  # one epoch lost, not four


def _tune_checkpoint(folder: Path, epochs: int) -> Path:
    """A checkpoint folder as a trial leaves it: the state after ``epochs`` epochs."""
    write({"model": {}, "optimizer": {}, "step": epochs, "rng": {},
           "history": [{"epoch": e, "val_top1": 0.1 * e} for e in range(1, epochs + 1)]},
          folder)
    return folder


def test_a_continued_trial_whose_checkpoint_is_corrupt_restarts_and_reports_it(tmp_path,
                                                                                capsys):
    """Outside a retry (no Tune checkpoint), a continuation's checkpoint that cannot be read:
    the trial restarts, a stderr line says so, and its next report carries the reason."""
    from search.trainable import TuneCheckpointer

    folder = _tune_checkpoint(tmp_path / "checkpoint_000001", 2)
    _garbage(folder / FILE)
    checkpointer = TuneCheckpointer(1, restore_from=str(folder))
    with warnings.catch_warnings():  # Ray: get_checkpoint outside a trial returns None
        warnings.simplefilter("ignore")
        assert checkpointer.restore() is None
    assert checkpointer.restored == []
    said = capsys.readouterr().err
    assert f"checkpoint {folder} (UnpicklingError" in said
    assert "restarting the trial from scratch" in said
    note = checkpointer.notice()["checkpoint_discarded"]
    assert str(folder) in note and note.endswith("restarting the trial from scratch")
    assert checkpointer.notice() == {}  # once


def _retried_trial(config):
    """A real Tune trial whose first attempt leaves a checkpoint, corrupts it on disk and
    dies; the retry restores through TuneCheckpointer and reports what it found."""
    from ray import tune

    from search.searchers import METRIC
    from search.trainable import TuneCheckpointer

    checkpointer = TuneCheckpointer(1, restore_from=config["continued_from"])
    first = tune.get_checkpoint() is None
    state = checkpointer.restore()
    if first:
        later = [*state["history"], {"epoch": 3, "val_top1": 0.3}]
        checkpointer.save({**state, "step": 3, "history": later})
        tune.report({METRIC: 0.0, "epoch": 3, "val_top1": 0.3, "status": "running"},
                    checkpoint=checkpointer.take())
        checkpointer.reported()
        # Registered with the driver (report returns once it is), then damaged where stored.
        (stored,) = Path(config["storage"]).glob(f"*/*/checkpoint_*/{FILE}")
        _truncate(stored)
        raise RuntimeError("the worker died")
    tune.report({METRIC: 1.0, "epoch": 3, "val_top1": 0.5, "status": "completed",
                 "restored_epochs": len(checkpointer.restored), **checkpointer.notice()})


@pytest.mark.slow
def test_a_retried_trial_passes_over_a_corrupt_checkpoint_to_the_earlier_one(
        ray_session, tmp_path):
    """Tune's own checkpoint of the trial is damaged: the retry goes on from the earlier one
    its continuation started from, and the study keeps the reason with the trial."""
    import optuna
    from ray import cloudpickle, tune

    from search.recording import Recorder
    from search.tune_recorder import OptunaRecorder
    from spaces import default_space

    earlier = _tune_checkpoint(tmp_path / "earlier", 2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="corrupt", storage=url, direction="maximize")
    lines: list[str] = []
    recorder = OptunaRecorder(Recorder(url, "corrupt", default_space("weight_mirror"), "e"),
                              total=1, already=0, progress=lines.append)
    storage = tmp_path / "ray"
    tuner = tune.Tuner(_retried_trial,
                       param_space={"continued_from": str(earlier), "storage": str(storage)},
                       run_config=tune.RunConfig(
                           storage_path=str(storage), name="e", callbacks=[recorder],
                           failure_config=tune.FailureConfig(max_failures=1),
                           checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                           verbose=0))
    here = sys.modules[__name__]  # the workers cannot import this test module: ship it
    cloudpickle.register_pickle_by_value(here)
    try:
        (result,) = tuner.fit()
    finally:
        cloudpickle.unregister_pickle_by_value(here)
    assert result.error is None and result.metrics["restored_epochs"] == 2
    note = result.metrics["checkpoint_discarded"]
    assert "checkpoint_000000 (" in note and note.endswith(f"going on from {earlier}")
    (trial,) = optuna.load_study(study_name="corrupt", storage=url).trials
    assert trial.user_attrs["checkpoint_discarded"] == note
    assert any("retrying, attempt 2" in line for line in lines)
