"""The noise rules' input noise: its distributions and the one shared draw per step."""

import math

import pytest
import torch
from torch import nn

import trainer
from catalogue.errors import UsageError
from catalogue.training import TrainConfig
from trainer.alignment import NOISE_POOL
from trainer.noise import StepNoise, fill_noise


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_each_distribution_has_mean_zero_and_variance_sigma_squared(distribution):
    torch.manual_seed(0)
    sample = fill_noise(torch.empty(400_000), distribution, 0.7)
    assert abs(float(sample.mean())) < 0.005
    assert float(sample.var()) == pytest.approx(0.49, rel=0.01)
    if distribution == "uniform":  # U(-a, a) with a = sigma * sqrt(3), nothing beyond
        assert float(sample.abs().max()) <= 0.7 * math.sqrt(3) + 1e-6
        assert float(sample.abs().max()) > 0.7 * math.sqrt(3) * 0.99
    else:
        assert float(sample.abs().max()) > 0.7 * math.sqrt(3) * 1.5  # tails a uniform lacks


def test_unknown_distribution_is_refused_everywhere():
    with pytest.raises(UsageError, match="normal, uniform"):
        trainer.convert(nn.Sequential(nn.Linear(3, 2)), "weight_mirror", noise="cauchy")
    with pytest.raises(UsageError, match="normal, uniform"):
        TrainConfig.from_dict({"rule": "weight_mirror", "noise_distribution": "laplace"})


def test_a_step_draws_once_for_every_layer_and_afresh_at_the_next_step():
    step = StepNoise()
    big, small = torch.empty(4, 3, 8, 8), torch.empty(4, 5)
    for x in (big, small):
        step.plan(x, "normal", 1.0)
    a, b = step.take(big, "normal", 1.0), step.take(small, "normal", 1.0)
    assert a.shape == big.shape and b.shape == small.shape
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one draw
    torch.testing.assert_close(b.reshape(-1), a.reshape(-1)[:20])
    pool: dict = {}
    first = StepNoise(pool)
    first.plan(big, "uniform", 2.0)
    drawn = first.take(big, "uniform", 2.0).clone()
    second = StepNoise(pool)
    second.plan(big, "uniform", 2.0)
    again = second.take(big, "uniform", 2.0)
    assert not torch.equal(drawn, again)  # fresh numbers, same buffer
    assert len(pool) == 1
    with pytest.raises(RuntimeError, match="planned"):
        StepNoise().take(big, "normal", 1.0)


def test_a_model_step_shares_one_buffer_and_each_layer_sees_sigma():
    """Every noise layer of a converted MLP reads the model's one flat buffer, at the rule's
    sigma, and the regularizer's value is what the layer's noise gives."""
    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "weight_mirror", sigma=0.5,
                            noise="uniform")
    model.train()
    model(torch.randn(32, 1, 8, 8))
    trainer.alignment_loss(model)
    pool = getattr(model, NOISE_POOL)
    (key, flat), = pool.items()
    assert key[2:] == ("uniform", 0.5)
    assert flat.numel() == 32 * 256  # the widest layer input: 256 features x 32 examples
    assert float(flat.abs().max()) <= 0.5 * math.sqrt(3) + 1e-6
    assert float(flat.var()) == pytest.approx(0.25, rel=0.1)


def test_noise_distribution_reaches_the_trained_model():
    config = TrainConfig(rule="information_alignment", noise_distribution="uniform",
                         epochs=1, max_steps_per_epoch=2, diagnostics=False,
                         feedback_plan=False)
    model, _ = trainer.loop.build(config)
    assert model.creditsweep_rule.noise == "uniform"
    assert all(layer.rule.noise == "uniform" for _, layer in trainer.feedback_layers(model))


def test_a_distribution_given_to_a_rule_without_noise_is_noted():
    from catalogue.training import option_notes
    assert option_notes("weight_mirror", {"noise_distribution": "uniform"}) == []
    (note,) = option_notes("feedback_alignment", {"noise_distribution": "uniform"})
    assert "no effect on feedback_alignment" in note
    assert option_notes("feedback_alignment", {"noise_distribution": "normal"}) == []


def test_a_sampled_choice_reaches_the_trial_as_its_name():
    from search.trainable import split_sampled
    meta, knobs = split_sampled("weight_mirror", {"alpha": 0.01, "noise_distribution": "uniform",
                                                  "batch_size": 32.0})
    assert meta == {"alpha": 0.01}
    assert knobs == {"noise_distribution": "uniform", "batch_size": 32}


def test_a_sweeps_closing_table_shows_a_categorical_best_as_its_name(capsys):
    from search.cli.sweep import _emit_outcome
    from search.sweep import SweepOutcome
    outcome = SweepOutcome(study="s", storage="sqlite:///x.db", sweep="1", added=2,
                           experiment_path="p", best_value=0.5,
                           best_params={"alpha": 0.001234567, "noise_distribution": "uniform"},
                           wall_time=3.0)
    _emit_outcome(outcome, "table")
    out = capsys.readouterr().out
    assert "uniform" in out and "0.001235" in out


@pytest.mark.parametrize("noise_batch, drawn", [(8, 8), (0, 32), (100, 32)])
def test_a_noise_batch_draws_that_many_examples_per_step(noise_batch, drawn):
    """--noise-batch k: each noise layer's regularizer reads k noise examples (all of the
    training batch for 0, or for k beyond it); R is their mean, so its scale does not move."""
    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "weight_mirror",
                            noise_batch=noise_batch, beta=1.0, alpha=0.0, sigma=1.0)
    assert model.creditsweep_rule.noise_batch == noise_batch
    with torch.no_grad():  # B = W, so that amp's expectation is far from zero
        for _, layer in trainer.feedback_layers(model):
            layer.weight_backward.copy_(layer.weight)
    model.train()
    values = []
    for _ in range(40):
        model(torch.randn(32, 1, 8, 8))
        values.append(float(trainer.alignment_loss(model).detach()))
    (flat,) = getattr(model, NOISE_POOL).values()
    assert flat.numel() == drawn * 256  # the widest layer input: 256 features
    # amp's expectation is -sigma^2 <W, B> = -|W|^2 summed over layers, whatever the count.
    expected = -sum(float(layer.weight.detach().square().sum())
                    for _, layer in trainer.feedback_layers(model))
    assert sum(values) / len(values) == pytest.approx(expected, rel=0.15)


def test_a_noise_batch_is_a_count_and_is_noted_for_rules_without_noise():
    from catalogue.rule import get_rule
    from catalogue.training import option_notes
    for bad in (-1, 2.5, True):
        with pytest.raises(UsageError, match="noise batch must be an integer >= 0"):
            get_rule("weight_mirror", noise_batch=bad)
    with pytest.raises(UsageError, match="noise batch"):
        TrainConfig(rule="weight_mirror", noise_batch=-2).validate()
    assert option_notes("information_alignment", {"noise_batch": 16}) == []
    (note,) = option_notes("symmetric_alignment", {"noise_batch": 16})
    assert "--noise-batch 16 has no effect on symmetric_alignment" in note
    config = TrainConfig(rule="information_alignment", noise_batch=16, epochs=1,
                         max_steps_per_epoch=2, diagnostics=False, feedback_plan=False)
    model, _ = trainer.loop.build(config)
    assert all(layer.rule.noise_batch == 16 for _, layer in trainer.feedback_layers(model))
