"""The training loop on the embedded digits: accuracy a person expects, divergence, options."""

import math

import pytest
import torch

import trainer

# An MLP (64-256-256-10) reaches about 97-98% on the 359 held-out digits with backprop in ten
# epochs; feedback alignment, which must first align W to a random B, a little less.
EXPECTED_TOP1 = {"backprop": 0.95, "symmetric_alignment": 0.95, "feedback_alignment": 0.90}


@pytest.mark.parametrize("rule", sorted(EXPECTED_TOP1))
def test_rules_learn_digits(rule):
    records = []
    result = trainer.train(dict(rule=rule, arch="mlp", epochs=10), callback=records.append)
    assert result.status == "completed" and result.reason is None
    assert result.best_val_top1 >= EXPECTED_TOP1[rule]
    assert records == result.history and len(records) == 10
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "wall_time", "diagnostics"):
        assert key in last
    assert last["val_top5"] >= last["val_top1"]
    summary = last["diagnostics"]["summary"]
    layers = last["diagnostics"]["layers"]
    assert set(layers) == {"1", "3", "5"}
    if rule == "backprop":
        assert summary["weight_angle_max"] == 0.0 and result.converted_layers == 0
    else:
        assert result.converted_layers == 3
        assert 0 < summary["weight_angle_mean"] < 90 and 0 < summary["gradient_angle_mean"] < 90


def test_symmetric_alignment_aligns_B_to_W_over_training():
    result = trainer.train(dict(rule="symmetric_alignment", arch="mlp", epochs=6,
                                feedback_lr_multiplier=50.0))
    angles = [r["diagnostics"]["summary"]["weight_angle_mean"] for r in result.history]
    assert angles[-1] < angles[0] - 20, angles


def test_resnet_on_digits_with_a_rule():
    result = trainer.train(dict(rule="symmetric_alignment", arch="resnet8", epochs=3, lr=0.1))
    assert result.status == "completed" and result.best_val_top1 > 0.8


def test_seed_makes_runs_repeatable():
    config = dict(rule="weight_mirror", arch="mlp", epochs=2, seed=7)
    a, b = trainer.train(config), trainer.train(config)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    c = trainer.train({**config, "seed": 8})
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


@pytest.mark.parametrize("config", [
    dict(rule="backprop", lr=1e5),
    dict(rule="symmetric_alignment", metaparameters={"alpha": 0.0, "beta": 1e4}),
])
def test_divergence_is_a_status_not_an_exception(config):
    # the ceiling off: this is the non-finite check (tests/test_loss_ceiling.py has the other)
    result = trainer.train(dict(arch="mlp", epochs=3, loss_ceiling=0, **config))
    assert result.status == "diverged"
    assert "non-finite" in result.reason and "epoch 1" in result.reason


def test_weight_decay_skips_B_biases_and_batchnorm():
    model, _ = trainer.loop.build(trainer.TrainConfig(rule="weight_mirror", arch="resnet8"))
    groups = trainer.optim.parameter_groups(model, trainer.TrainConfig(weight_decay=0.1,
                                                                       feedback_lr_multiplier=3))
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        if name.endswith("weight_backward"):
            assert g["weight_decay"] == 0 and g["lr_scale"] == 3
        elif "bn" in name or name.endswith("bias") or ".shortcut.1." in name:
            assert g["weight_decay"] == 0, name
        else:
            assert g["weight_decay"] == 0.1, name


def test_update_noise_moves_B_and_schedules_warm_up():
    from trainer.schedule import lr_factors

    cfg = trainer.TrainConfig(warmup_epochs=1, epochs=4, schedule="step", lr=1.0)
    factors = lr_factors(cfg, 40, 10)
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.01)
    cos = trainer.TrainConfig(epochs=4, schedule="cosine")
    assert lr_factors(cos, 30, 10)[15] == pytest.approx(0.5, abs=0.06)
    assert lr_factors(trainer.TrainConfig(schedule="constant"), 5, 5).tolist() == [1.0] * 5
    quiet = trainer.train(dict(rule="feedback_alignment", arch="mlp", epochs=1, lr=0.01))
    noisy = trainer.train(dict(rule="weight_mirror", arch="mlp", epochs=1, lr=0.01,
                               metaparameters={"alpha": 0.0, "beta": 0.0}, update_noise=1e2))
    assert math.isfinite(noisy.history[-1]["train_loss"])
    ratio = noisy.history[-1]["diagnostics"]["summary"]["norm_ratio_mean"]
    base = quiet.history[-1]["diagnostics"]["summary"]["norm_ratio_mean"]
    assert ratio > 1.2 * base  # only the noise moved B (no regularizer): it grew


@pytest.mark.parametrize("bad,match", [
    (dict(rule="nope"), "unknown rule"),
    (dict(arch="resnet19"), "unknown architecture"),
    (dict(epochs=0), "epochs must be a positive"),
    (dict(lr=-1.0), "lr must be a positive"),
    (dict(device="tpu"), "device must be"),
    (dict(colour="red"), "unknown training option"),
    (dict(rule="weight_mirror", metaparameters={"gamma": 1.0}), "no metaparameter gamma"),
    (dict(epochs=2, stop_after_epochs=3), "stop_after_epochs must be a whole number from 1"),
    (dict(epochs=2, stop_after_epochs=0), "stop_after_epochs must be a whole number from 1"),
])
def test_bad_config_raises_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        trainer.train(bad)


def test_stopping_after_some_epochs_trains_the_first_epochs_of_the_whole_run():
    """A probe is the prefix of the run it stands for: the same schedule, B's plan and steps,
    not a shorter run whose learning rate anneals sooner."""
    base = dict(rule="symmetric_alignment", arch="mlp", epochs=3, max_steps_per_epoch=6,
                feedback_lr_multiplier="auto", diagnostics=False)
    whole = trainer.train(base)
    probe = trainer.train({**base, "stop_after_epochs": 1})
    short = trainer.train({**base, "epochs": 1})
    assert probe.status == "completed" and len(probe.history) == 1
    for key in ("train_loss", "val_loss", "lr"):
        assert probe.history[0][key] == whole.history[0][key]
    assert short.history[0]["lr"] < probe.history[0]["lr"]  # a 1-epoch run anneals in it
    plans = [r.history[0]["feedback_plan"]["summary"]["relaxations_min"] for r in (probe, whole)]
    assert plans[0] == plans[1]  # B planned for the whole run's relaxation times


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_device_uses_cuda():
    result = trainer.train(dict(rule="information_alignment", arch="resnet8", epochs=1))
    assert result.device.startswith("cuda") and result.status == "completed"


@pytest.mark.slow
def test_a_trial_worker_imports_torchvision_only_for_its_resnets():
    """torchvision's import costs a trial worker ~1.5 s before its first step (it loads
    torch._dynamo); only the ImageNet ResNets need it."""
    import subprocess
    import sys

    probe = ("import sys, trainer, search.trainable\n"
             "trainer.create_model('resnet8', num_classes=10, in_channels=1, image_size=8)\n"
             "print('before', 'torchvision' in sys.modules)\n"
             "trainer.create_model('resnet18', num_classes=10, in_channels=1, image_size=8)\n"
             "print('after', 'torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["before", "False", "after", "True"]
