"""Song, Xu & Lafferty's two-layer network as ``--arch two_layer`` on the ``teacher`` regression,
and the second layer's own weight decay (``readout_weight_decay``, the theory's lambda): the
forward and the data against their closed forms, one training step against the paper's
update, feedback alignment's two claims through the service's trainer, and the refusals."""

import math

import numpy as np
import pytest
import torch

import trainer
from catalogue.errors import UsageError
from catalogue.tasks import InputSpec
from search.cli import main
from trainer.datasets import DATASETS, load_dataset
from trainer.loop import build, train_step
from trainer.optim import make_optimizer, parameter_groups
from trainer.tasks import mse

SMALL = {"train_size": 20, "val_size": 40, "dim": 5}
# Full-batch gradient descent, as the theory: plain steps, a constant rate, no decay of W.
FULL_BATCH = dict(arch="two_layer", dataset="teacher", dataset_options=SMALL, batch_size=20,
                  momentum=0.0, schedule="constant", weight_decay=0.0)


def _sphere(n: int, dim: int) -> torch.Tensor:
    x = torch.randn(n, dim)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("activation, psi", [("relu", torch.relu), ("tanh", torch.tanh)])
def test_the_forward_is_the_papers_closed_form(activation, psi):
    model = trainer.create_model("two_layer100", spec=InputSpec.vector(7), outputs=1,
                                 activation=activation)
    first, second = [m.weight.detach().double() for m in model.modules()
                     if isinstance(m, torch.nn.Linear)]
    assert first.shape == (100, 7) and second.shape == (1, 100)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    for w in (first, second):  # N(0, 1) entries, as the paper draws w_r and beta_r
        assert abs(float(w.std()) - 1) < 0.15 and abs(float(w.mean())) < 0.25
    x = _sphere(9, 7)
    expected = psi(x.double() @ first.T) @ second[0] / math.sqrt(100)
    torch.testing.assert_close(model(x)[:, 0].double(), expected, rtol=1e-5, atol=1e-5)


def test_the_teacher_is_points_on_the_sphere_and_its_networks_output():
    source = DATASETS.get("teacher")
    options = {**SMALL, "teacher_width": 3}
    data = load_dataset("teacher", batch_size=8, options=options)
    v, a = source.teacher(source.settings(options))
    assert v.shape == (3, 5) and a.shape == (3,)
    for split in (data.train, data.val):
        x, y = split.x.double().numpy(), split.y.double().numpy()
        assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
        assert np.allclose(y[:, 0], np.maximum(x @ v.T, 0) @ a / math.sqrt(3), atol=1e-5)
    assert data.spec == InputSpec.vector(5) and data.num_classes == 1
    assert (data.train_size, data.val_size) == (20, 40)
    assert not np.allclose(data.train.x[:20].numpy(), data.val.x[:20].numpy())
    noisy = load_dataset("teacher", batch_size=8, options={**options, "val_size": 4000,
                                                           "noise": 0.3})
    x, y = noisy.val.x.double().numpy(), noisy.val.y.double().numpy()[:, 0]
    residual = y - np.maximum(x @ v.T, 0) @ a / math.sqrt(3)
    assert 0.28 < residual.std() < 0.32 and abs(residual.mean()) < 0.02


def test_one_step_is_the_papers_update_with_lambda_on_the_second_layer_only():
    """beta <- beta - eta [(2/n) p^-1/2 sum_i e_i psi(W x_i) + lambda beta] and, through the
    fixed random b, w_r <- w_r - eta [(2/n) p^-1/2 sum_i e_i b_r psi'(w_r.x_i) x_i + wd w_r]:
    gradient descent on the mean squared error with lambda on the second layer alone."""
    lr, wd, lam = 0.3, 0.01, 0.2
    config = trainer.TrainConfig(rule="feedback_alignment", lr=lr, readout_weight_decay=lam,
                                 **{**FULL_BATCH, "weight_decay": wd})
    model, data = build(config)
    optimizer = make_optimizer(model, config)
    first, second = model[1], model[4]
    assert [(g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [
        (wd, 1), (lam, 1)]
    assert optimizer.param_groups[0]["params"][0] is first.weight
    assert optimizer.param_groups[1]["params"][0] is second.weight
    x, y = next(iter(data.train.batches(0)))
    w, beta, b = (t.detach().double().clone() for t in
                  (first.weight, second.weight[0], second.weight_backward[0]))
    train_step(model, optimizer, x, y, loss=mse)
    x, y, n, scale = x.double(), y.double()[:, 0], len(x), 100 ** 0 / math.sqrt(400)
    u = x @ w.T
    e = scale * torch.relu(u) @ beta - y
    grad_w = (2 / n) * scale * ((e[:, None] * (u > 0).double()) * b[None, :]).T @ x
    grad_beta = (2 / n) * scale * torch.relu(u).T @ e
    torch.testing.assert_close(first.weight.detach().double(), w - lr * (grad_w + wd * w),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second.weight.detach()[0].double(),
                               beta - lr * (grad_beta + lam * beta), rtol=1e-5, atol=1e-6)


def test_without_readout_weight_decay_every_weight_decays_alike():
    config = trainer.TrainConfig(rule="feedback_alignment", arch="mlp", weight_decay=0.01)
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "feedback_alignment")
    groups = parameter_groups(model, config)
    assert groups[0]["weight_decay"] == 0.01 and len(groups[0]["params"]) == 3
    split = parameter_groups(model, trainer.TrainConfig(
        rule="feedback_alignment", arch="mlp", weight_decay=0.01, readout_weight_decay=0.0))
    assert [len(g["params"]) for g in split[:2]] == [2, 1]
    assert split[1]["weight_decay"] == 0.0 and split[1]["params"][0] is model[5].weight


def _fa(readout_weight_decay: float | None):
    """100 full-batch steps at rate 1.5: the paper's eta = 1.5 x 2 / n = 0.15."""
    result = trainer.train(dict(rule="feedback_alignment", lr=1.5, epochs=100,
                                readout_weight_decay=readout_weight_decay, **FULL_BATCH))
    assert result.status == "completed", result.reason
    return result.history


def _cos_beta_b(record: dict) -> float:
    """cos(beta, b): the second layer's angle between W and its fixed random B."""
    return math.cos(math.radians(record["diagnostics"]["layers"]["4"]["weight_angle"]))


def test_feedback_alignment_fits_and_aligns_beta_with_b_only_when_regularised():
    """The theory's two claims through trainer.train: the training loss falls steadily, and
    beta turns towards b with lambda > 0 (0.05 here, the paper's 0.05 x n / 2 = 0.5); without it
    cos(beta, b) stays of order p^-1/2 = 0.05. An FA whose first layer read beta, or any
    vector but b, would leave beta uncorrelated with b at both."""
    free, regularised = _fa(None), _fa(0.05)
    losses = [r["train_loss"] for r in free]
    assert losses[-1] < 1e-2 * losses[0]
    third = len(losses) // 3  # every third of the run lowers the loss by a good factor
    assert all(losses[i + third] < 0.6 * losses[i] for i in (0, third))
    assert free[-1]["val_r2"] > 0.5
    assert abs(_cos_beta_b(free[-1])) < 0.2
    assert _cos_beta_b(regularised[-1]) > 0.3 > _cos_beta_b(free[-1]) + 0.2


@pytest.mark.parametrize("options, match", [
    ({"model_options": {"activation": "sigmoid"}},
     "two_layer: option activation takes one of relu, tanh, got 'sigmoid'"),
    ({"model_options": {"hidden": 800}}, "two_layer is declared with hidden=400, its value on "
                                         "the hidden axis; for another, name the architecture"),
    ({"readout_weight_decay": -0.1}, "readout_weight_decay must be >= 0"),
])
def test_bad_settings_are_one_line_errors(options, match):
    with pytest.raises(UsageError, match=match) as caught:
        trainer.TrainConfig(rule="feedback_alignment", **{**FULL_BATCH, **options}).validate()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("flags, match", [
    (["--model-option", "activation=sigmoid"], "takes one of relu, tanh, got 'sigmoid'"),
    (["--readout-weight-decay", "-1"], "readout_weight_decay must be >= 0"),
    (["--dataset", "pattern_generation"], "two_layer takes vector or image inputs, but "
                                          "pattern_generation holds sequences"),
    (["--dataset-option", "dim=0"], "teacher: option dim must be at least 1"),
])
def test_the_command_line_refuses_in_one_line_and_writes_nothing(flags, match, tmp_path,
                                                                 capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    argv = ["train", "--rule", "feedback_alignment", "--arch", "two_layer", "--dataset",
            "teacher", *flags, "--storage", f"sqlite:///{db}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_trains_tanh_on_the_teacher(capsys):
    assert main(["train", "--rule", "feedback_alignment", "--arch", "two_layer100",
                 "--dataset", "teacher", "--model-option", "activation=tanh",
                 "--dataset-option", "train_size=20", "--dataset-option", "val_size=20",
                 "--batch-size", "20", "--epochs", "2", "--readout-weight-decay", "0.1",
                 "--no-diagnostics", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "val_r2" in out


def test_the_listings_show_the_teacher_and_the_activation(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert any(ln.startswith("teacher ") and "regression" in ln and "10 vector" in ln
               for ln in out.splitlines())
    assert "teacher: train_size=50 val_size=500 dim=10 teacher_width=8 noise=0" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "two_layer: activation=relu|tanh" in out
    assert next(ln.split() for ln in out.splitlines() if ln.startswith("two_layer1600 "))[
        1:5] == ["two_layer", "hidden", "1600", "vector,image"]


def test_the_mlp_is_a_baseline_on_the_teacher():
    """A vector regression reads out once, so a model that reads out once takes it."""
    result = trainer.train(dict(rule="backprop", arch="mlp", dataset="teacher", epochs=2,
                                dataset_options=SMALL, batch_size=10, diagnostics=False))
    assert result.status == "completed" and math.isfinite(result.history[-1]["val_r2"])


def test_a_sweep_searches_lambda_for_feedback_alignment(ray_session, ray_dir, tmp_path, capsys):
    """The README's command, small: TPE over readout_weight_decay through Ray Tune into the
    study, each trial scored by its validation R^2."""
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["sweep", "--rule", "feedback_alignment", "--arch", "two_layer100",
                 "--dataset", "teacher", "--space", "readout_weight_decay=1e-4:1:log",
                 "--fix", "weight_decay=0", "--momentum", "0", "--schedule", "constant",
                 "--lr", "0.5", "--batch-size", "20", "--dataset-option", "train_size=20",
                 "--dataset-option", "val_size=40", "--epochs", "3", "--trials", "3",
                 "--storage", url]) == 0
    assert "best val R^2 " in capsys.readouterr().out  # the task's score, not top-1
    study = optuna.load_study(study_name="feedback_alignment.two_layer100.teacher", storage=url)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        assert set(t.params) == {"readout_weight_decay"}
        assert 1e-4 <= t.params["readout_weight_decay"] <= 1
        last = t.user_attrs["history"][-1]
        assert t.value == max(t.intermediate_values.values())
        assert math.isfinite(last["val_r2"]) and t.intermediate_values[3] == last["val_r2"]
