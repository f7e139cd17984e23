"""The generated sequence sets (delayed match-to-sample, pattern generation): seeded draws,
their structure checked from the inputs themselves, the options honoured or refused, a short
training run on each; and the RNN reading a 28x28 image set as 28 steps of 28 inputs."""

import math

import numpy as np
import pytest
import torch

import trainer
from test_idx import write_mnist
from trainer.datasets import DATASETS, DataError, check_dataset, load_dataset
from trainer.datasets.pattern_generation import CYCLES

SMALL_MATCH = {"train_size": 64, "val_size": 32, "cue_steps": 4, "delay_steps": 6}
SMALL_PATTERN = {"train_size": 24, "val_size": 12, "steps": 40, "inputs": 12}


def _arrays(name, options, split="train", **kwargs):
    data = load_dataset(name, batch_size=8, options=options, **kwargs)
    source = getattr(data, split)
    return source.x.numpy(), source.y.numpy()


@pytest.mark.parametrize("name, options", [("delayed_match", SMALL_MATCH),
                                           ("pattern_generation", SMALL_PATTERN)])
def test_the_same_options_draw_the_same_examples_and_the_splits_differ(name, options):
    x, y = _arrays(name, options)
    again, _ = _arrays(name, options, seed=7)  # the training seed orders batches only
    assert np.array_equal(x, again)
    val, _ = _arrays(name, options, split="val")
    flat_train, flat_val = x.reshape(len(x), -1), val.reshape(len(val), -1)
    assert not (flat_val[:, None, :] == flat_train[None, :, :]).all(-1).any()
    other, _ = _arrays(name, {**options, "data_seed": 1})
    assert not np.allclose(x, other)


def test_delayed_match_cues_read_from_the_inputs_give_the_label():
    """Without noise every value is the baseline, except a cue of 1: the reference's bump."""
    cue, delay, amplitude, baseline = 6, 9, 2.0, 0.02
    x, y = _arrays("delayed_match", {"train_size": 400, "val_size": 8, "cue_steps": cue,
                                     "delay_steps": delay, "noise": 0.0})
    assert x.shape == (400, 2 * cue + delay, 2) and set(np.unique(y)) == {0, 1}
    tau = np.linspace(-cue / 2, cue / 2, cue)
    bump = amplitude * np.exp(-tau ** 2 / (2 * (cue / 4) ** 2))
    first = np.isclose(x[:, :cue, 0], baseline + bump, atol=1e-6).all(1)
    second = np.isclose(x[:, -cue:, 1], baseline + bump, atol=1e-6).all(1)
    absent = [np.isclose(x[:, :cue, 0], baseline).all(1), np.isclose(x[:, -cue:, 1],
                                                                     baseline).all(1)]
    assert (first ^ absent[0]).all() and (second ^ absent[1]).all()  # each cue one or other
    rest = np.concatenate([x[:, cue:, 0], x[:, :-cue, 1]], axis=1)
    assert np.allclose(rest, baseline)
    assert np.array_equal(y, (first == second).astype(np.int64))


def test_delayed_match_is_about_half_match_with_the_reference_noise():
    x, y = _arrays("delayed_match", {"train_size": 4000, "val_size": 8, "cue_steps": 2,
                                     "delay_steps": 0})
    assert 0.47 < y.mean() < 0.53
    assert abs(x[:, 1, 1].std() - 0.01) < 1e-3  # the baseline step: the noise alone


def test_delayed_match_reference_durations_and_sizes():
    source = DATASETS.get("delayed_match")
    reference = source.input_spec(options={"cue_steps": 100, "delay_steps": 700})
    assert (reference.steps, reference.features) == (900, 2)
    data = load_dataset("delayed_match", batch_size=8, options={**SMALL_MATCH, "val_size": 20})
    assert (data.train_size, data.val_size, data.spec.steps, data.num_classes) == (64, 20, 14, 2)
    assert data.task == "classification" and data.train.x.dtype == torch.float32


def test_pattern_targets_are_the_four_sines_from_zero_to_a_peak_of_one():
    steps = 64
    options = {**SMALL_PATTERN, "steps": steps, "outputs": 3, "patterns": 2, "noise": 0.0}
    x, y = _arrays("pattern_generation", options)
    assert x.shape == (24, steps, 12) and y.shape == (24, steps, 3)
    assert np.allclose(y[:, 0], 0) and np.allclose(np.abs(y).max(1), 1)
    spectrum = np.abs(np.fft.rfft(y, axis=1))  # bins are cycles per sequence
    others = np.delete(spectrum, [0, *CYCLES], axis=1)  # bin 0: the shift to start at 0
    assert others.max() < 1e-4 * spectrum.max()
    assert (spectrum[:, list(CYCLES)] > 1e-3).all()
    assert set(np.unique(x)) <= {0.0, 1.0}  # frozen spikes, no noise
    assert np.array_equal(x[0], x[2]) and not np.array_equal(x[0], x[1])  # patterns in turn
    val_x, val_y = _arrays("pattern_generation", options, split="val")
    assert np.array_equal(val_y[:2], y[:2]) and np.array_equal(val_x[:2], x[:2])


def test_pattern_generation_spike_rate_and_subsets():
    x, _ = _arrays("pattern_generation", {**SMALL_PATTERN, "noise": 0.0, "spike_prob": 0.2,
                                          "steps": 500, "inputs": 40})
    assert abs(x[0].mean() - 0.2) < 0.02
    data = load_dataset("pattern_generation", batch_size=4, train_subset=6,
                        options={**SMALL_PATTERN, "patterns": 3})
    assert data.train_size == 6 and data.task == "regression" and data.num_classes == 1
    targets = data.train.y[:, 5, 0].numpy()
    assert len(np.unique(targets.round(6))) == 3  # two of each pattern


@pytest.mark.parametrize("options, match", [
    ({"delay": 5}, "takes no option delay"),
    ({"cue_steps": 2.5}, "cue_steps takes a whole number"),
    ({"delay_steps": -1}, "delay_steps must be at least 0"),
    ({"noise": float("nan")}, "noise takes a number"),
    ({"train_size": 0}, "train_size must be at least 1"),
])
def test_a_bad_option_is_refused_in_one_line(options, match):
    with pytest.raises(DataError, match=match) as refused:
        check_dataset("delayed_match", None, ("rnn",), options=options)
    assert "\n" not in str(refused.value)


def test_a_range_an_image_size_and_a_subset_beyond_the_options_are_refused():
    with pytest.raises(DataError, match="spike_prob must be from 0 to 1"):
        load_dataset("pattern_generation", batch_size=4, options={"spike_prob": 1.5})
    with pytest.raises(DataError, match="holds sequences, not images"):
        check_dataset("delayed_match", None, ("rnn",), image_size=8)
    with pytest.raises(DataError, match="--train-subset 99"):
        check_dataset("delayed_match", None, options=SMALL_MATCH, train_subset=99)


def test_delayed_match_trains_through_time_end_to_end():
    result = trainer.train({"arch": "rnn32", "rule": "feedback_alignment",
                            "dataset": "delayed_match", "dataset_options": SMALL_MATCH,
                            "epochs": 1, "diagnostics": False, "device": "cpu"})
    assert result.status == "completed"
    assert 0 <= result.history[0]["val_top1"] <= 1


def test_pattern_generation_trains_with_a_finite_r2():
    result = trainer.train({"arch": "rnn32", "rule": "backprop", "lr": 0.02,
                            "dataset": "pattern_generation", "dataset_options": SMALL_PATTERN,
                            "model_options": {"leak": 0.5}, "epochs": 2,
                            "diagnostics": False, "device": "cpu"})
    assert result.status == "completed"
    scores = [r["val_r2"] for r in result.history]
    assert all(math.isfinite(s) and s <= 1 for s in scores)
    assert result.best_val_top1 == max(scores)


def test_the_rnn_reads_a_fashion_mnist_sized_image_as_28_steps_of_28_inputs(tmp_path):
    data = load_dataset("fashion_mnist", batch_size=5, data_dir=str(write_mnist(tmp_path)))
    assert (data.spec.channels, data.spec.size) == (1, 28)
    model = trainer.create_model("rnn", spec=data.spec, outputs=data.num_classes)
    widths = []
    model.input.register_forward_hook(lambda m, inputs, out: widths.append(inputs[0].shape))
    calls = []
    model.recurrent.register_forward_hook(lambda m, inputs, out: calls.append(1))
    x, _ = next(iter(data.train.batches(0)))
    assert x.shape == (5, 1, 28, 28) and model(x).shape == (5, 10)
    assert len(calls) == 28 and widths == [torch.Size([5, 28])] * 28
