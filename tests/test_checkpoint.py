"""Checkpoints: a run killed after epoch k and restored is the run that was never killed."""

import pickle

import pytest
import torch

import trainer
from trainer.checkpoint import FolderCheckpointer, due, read


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


def test_a_run_killed_after_epoch_2_and_restored_ends_as_the_uninterrupted_run(tmp_path):
    straight = Recording(tmp_path / "straight")
    reference = trainer.train(CONFIG, checkpointer=straight)
    assert sorted(straight.saved) == [1, 2, 3]  # none after the last epoch

    def kill_after_2(record):
        if record["epoch"] == 2:
            raise Killed
    interrupted = Recording(tmp_path / "interrupted")
    with pytest.raises(Killed):
        trainer.train(CONFIG, callback=kill_after_2, checkpointer=interrupted)
    assert sorted(interrupted.saved) == [1, 2]
    epochs_seen = []
    resumed = trainer.train(CONFIG, callback=lambda r: epochs_seen.append(r["epoch"]),
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


def test_checkpoints_hold_no_code_and_a_planted_pickle_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    trainer.train({**CONFIG, "epochs": 2}, checkpointer=FolderCheckpointer(folder))
    assert read(folder)["step"] == 6  # loads with weights_only: tensors and plain values

    class Exploit:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').close()" % str(tmp_path / "pwned"),))

    (folder / "state.pt").write_bytes(pickle.dumps({"model": Exploit()}))
    with pytest.raises(pickle.UnpicklingError):
        read(folder)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("every, epochs, expected", [(1, 4, [1, 2, 3]), (2, 5, [2, 4]),
                                                     (0, 4, []), (3, 3, [])])
def test_checkpoint_epochs(every, epochs, expected):
    assert [e for e in range(1, epochs + 1) if due(every, e, epochs)] == expected
