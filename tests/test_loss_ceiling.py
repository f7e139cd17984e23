"""A finite but exploding loss is a diverged run: past ``loss_ceiling`` times the first
step's loss the run ends as diverged with the loss and the step, never as completed."""

import pytest

import trainer
from catalogue.errors import UsageError
from catalogue.training import TrainConfig
from trainer.checkpoint import FolderCheckpointer

# Backprop on the digits MLP at rate 5: the loss leaves 2.3 for 1e3-1e12 within a few steps
# and stays finite (cross-entropy grows only linearly in the logits).
EXPLODING = dict(arch="mlp", rule="backprop", epochs=2, lr=5.0, diagnostics=False,
                 max_steps_per_epoch=30)


def test_without_a_ceiling_an_exploding_run_would_count_as_completed():
    result = trainer.train({**EXPLODING, "loss_ceiling": 0})
    assert result.status == "completed"
    assert result.history[0]["train_loss"] > 1e3  # what the ceiling is there to catch


def test_past_its_ceiling_a_run_is_diverged_with_its_loss_and_step():
    result = trainer.train(EXPLODING)
    assert result.status == "diverged"
    assert "past its ceiling" in result.reason and "epoch 1, step" in result.reason
    assert "100 x the first step's 2.3" in result.reason  # ln 10 at a random start
    assert result.best_val_top1 is None  # nothing for a search's best to return


def test_a_run_that_learns_is_untouched_by_the_ceiling():
    tight = trainer.train({**EXPLODING, "lr": 0.05, "loss_ceiling": 1.5})
    off = trainer.train({**EXPLODING, "lr": 0.05, "loss_ceiling": 0})
    assert tight.status == "completed"
    assert [r["train_loss"] for r in tight.history] == [r["train_loss"] for r in off.history]


def test_a_resumed_run_keeps_its_first_loss(tmp_path):
    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    config = {**EXPLODING, "lr": 0.05, "epochs": 2, "loss_ceiling": 10.0}
    folder = FolderCheckpointer(tmp_path)
    with pytest.raises(Stop):
        trainer.train(config, callback=stop, checkpointer=folder)
    first = folder.restore()["first_loss"]
    assert first == pytest.approx(2.3, abs=0.2)
    # Resumed at a rate that explodes, the ceiling is still 10 x that first loss, not 10 x a
    # loss taken after the restore.
    resumed = trainer.train({**config, "lr": 5.0}, checkpointer=folder)
    assert resumed.status == "diverged" and "epoch 2" in resumed.reason
    assert f"the first step's {first:.3g}" in resumed.reason


def test_a_negative_ceiling_is_refused():
    with pytest.raises(UsageError, match="loss_ceiling must be >= 0"):
        trainer.train({**EXPLODING, "loss_ceiling": -1})


@pytest.mark.parametrize("ceiling", [0.5, 1.0])
def test_a_ceiling_at_or_below_the_first_loss_is_refused(ceiling):
    """A ceiling of 1 or less would call every run whose loss fails to fall diverged."""
    with pytest.raises(UsageError, match="loss_ceiling must be 0 \\(off\\) or above 1"):
        TrainConfig(loss_ceiling=ceiling).validate()
    TrainConfig(loss_ceiling=1.5).validate()
