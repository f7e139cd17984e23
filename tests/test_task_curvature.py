"""The true task loss's Hessian of a converted model, against closed forms and dense autograd."""

import copy

import pytest
import torch
from torch import nn

import trainer
from trainer.conversion import feedback_layers
from trainer.curvature import task_hessian_trace, top_hessian_eigenvalue


def _squared(out, y):
    return ((out - y) ** 2).sum(1).mean()


@pytest.mark.parametrize("rule", [None, "feedback_alignment", "weight_mirror"])
def test_linear_model_under_squared_loss_is_twice_the_top_of_the_input_covariance(rule):
    torch.manual_seed(0)
    x = torch.randn(64, 5, dtype=torch.double) * torch.tensor([3.0, 1, 1, 0.5, 0.2],
                                                               dtype=torch.double)
    y = torch.randn(64, 3, dtype=torch.double)
    model = nn.Sequential(nn.Linear(5, 3, bias=False)).double()
    if rule is not None:
        trainer.convert(model, rule)
    expected = 2 * float(torch.linalg.eigvalsh(x.T @ x / len(x)).max())
    # Two batches of unequal size: the mean is over examples, not over batches.
    value = top_hessian_eigenvalue(model, [(x[:40], y[:40]), (x[40:], y[40:])], _squared)
    assert value == pytest.approx(expected, rel=1e-8)


def _mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _dense_hessian(model, x, y):
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss(theta):
        pieces, start = [], 0
        for shape in shapes:
            n = shape.numel()
            pieces.append(theta[start:start + n].reshape(shape))
            start += n
        h = torch.tanh(x @ pieces[0].T + pieces[1])
        return nn.functional.cross_entropy(h @ pieces[2].T + pieces[3], y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.slow
def test_top_eigenvalue_and_trace_match_the_dense_hessian_of_a_tiny_mlp():
    model = _mlp()
    x, y = torch.randn(32, 4, dtype=torch.double), torch.randint(0, 3, (32,))
    dense = _dense_hessian(model, x, y)
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert top_hessian_eigenvalue(model, [(x, y)], steps=51) == pytest.approx(
        float(eigenvalues.max()), rel=1e-6)
    trace = task_hessian_trace(model, [(x, y)], samples=3000)
    assert trace == pytest.approx(float(torch.trace(dense)), rel=0.05)


@pytest.mark.parametrize("rule", ["feedback_alignment", "weight_mirror",
                                  "information_alignment"])
def test_a_converted_model_has_the_plain_models_value(rule):
    plain = _mlp()
    converted = trainer.convert(copy.deepcopy(plain), rule)  # same W, B of its own
    x, y = torch.randn(32, 4, dtype=torch.double), torch.randint(0, 3, (32,))
    assert top_hessian_eigenvalue(converted, [(x, y)]) == pytest.approx(
        top_hessian_eigenvalue(plain, [(x, y)]), rel=1e-9)
    # Exact mode was only for the measurement: training goes through B again.
    assert all(layer.exact_backward is False for _, layer in feedback_layers(converted))


def test_a_larger_negative_eigenvalue_does_not_mask_the_largest():
    """Hessian diag(+1, -10, 0, 0): power iteration would return -10; the answer is +1."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False)).double()
    eye = torch.eye(2, dtype=torch.double)

    def saddle(out, _):
        return 0.5 * out[0, 0] ** 2 - 5.0 * out[1, 1] ** 2

    assert top_hessian_eigenvalue(model, [(eye, torch.zeros(2))], saddle) == pytest.approx(
        1.0, abs=1e-9)


def test_batchnorm_is_measured_in_eval_mode_and_the_mode_is_restored():
    model = trainer.create_model("resnet8", num_classes=10, in_channels=1, image_size=8,
                                 small_input=True)
    trainer.convert(model, "feedback_alignment")
    model.train()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = [b.clone() for b in model.buffers()]
    value = top_hessian_eigenvalue(model, [(x, y)], steps=5)
    assert value > 0 and model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # no stats update


def _without_times(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "wall_time", "curvature")}
            for r in history]


def test_a_run_measures_beyond_accuracy_without_changing_the_run():
    config = dict(rule="information_alignment", arch="mlp", dataset="digits", epochs=2,
                  update_noise=1e-3, seed=3)
    plain = trainer.train(config)
    measured = trainer.train({**config, "curvature": True, "curvature_every": 1,
                              "input_noise": (0.1, 2.0)})
    # Its own generators: the training run is the same with the measurement on.
    assert _without_times(measured.history) == _without_times(plain.history)
    for record in measured.history:
        c = record["curvature"]
        assert c["top_eigenvalue"] > 0 and c["trace"] > 0
        assert c["generalization_gap"] == pytest.approx(c["train_top1_eval"]
                                                        - record["val_top1"])
        assert set(c["noisy_val_top1"]) == {"0", "0.1", "2"}
        assert c["noisy_val_top1"]["2"] < c["noisy_val_top1"]["0"]  # noise of sd 2 hurts


def test_a_diverged_run_records_no_measurement():
    result = trainer.train(dict(rule="backprop", arch="mlp", dataset="digits", epochs=2,
                                lr=1e6, curvature=True))
    assert result.status == "diverged" and result.reason
    assert not any("curvature" in r for r in result.history)


@pytest.mark.parametrize("flag, value, message", [
    ("--curvature-batches", "0", "curvature_batches must be a positive integer"),
    ("--curvature-steps", "-3", "curvature_steps must be a positive integer"),
    ("--curvature-every", "-1", "curvature_every must be >= 0"),
    ("--input-noise", "0.1,nan", "input_noise must be positive"),
])
def test_bad_measurement_options_are_one_line_and_write_nothing(tmp_path, capsys, flag, value,
                                                                message):
    from search.cli import main

    db = tmp_path / "s.db"
    assert main(["sweep", "--arch", "mlp", "--trials", "1", "--curvature", flag, value,
                 "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not db.exists()


@pytest.mark.slow
def test_a_sweep_records_the_measurements_and_trials_and_best_show_them(ray_session, ray_dir,
                                                                        tmp_path, capsys):
    import optuna

    from search.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["sweep", "--arch", "mlp", "--rule", "symmetric_alignment", "--trials", "2",
                 "--epochs", "1", "--curvature", "--study", "c", "--storage", url]) == 0
    trials = optuna.load_study(study_name="c", storage=url).trials
    for t in trials:
        assert t.user_attrs["top_eigenvalue"] == t.user_attrs["curvature"]["top_eigenvalue"] > 0
        assert t.user_attrs["history"][-1]["top_eigenvalue"] == t.user_attrs["top_eigenvalue"]
    capsys.readouterr()
    assert main(["trials", "--study", "c", "--storage", url, "--format", "csv"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert "top_eigenvalue" in header.split(",") and "generalization_gap" in header.split(",")
    assert main(["best", "--study", "c", "--storage", url]) == 0
    assert "top Hessian eigenvalue" in capsys.readouterr().out
    out = tmp_path / "report"
    assert main(["report", "--study", "c", "--storage", url, "--out", str(out)]) == 0
    assert (out / "curvature.png").stat().st_size > 10_000
