"""``--curvature`` on the rate RNN: W_rec's Hessian block and the whole Hessian against dense
autograd Hessians of an independently written forward, the true loss whatever a temporal rule
cuts, the task's loss (MSE for regression) and the loss gap's definition."""

import copy

import pytest
import torch
import torch.nn.functional as F

import trainer
from catalogue.training import TrainConfig
from trainer.curvature import curvature_groups, top_hessian_eigenvalue
from trainer.datasets.base import Dataset
from trainer.datasets.batches import TensorBatches
from trainer.generalization import measure
from trainer.loop import evaluate
from trainer.recurrent import RateRNN, TimeCarry

LEAK = 0.5


def _rnn(readout="last", outputs=3):
    torch.manual_seed(2)
    model = RateRNN(2, 3, outputs, leak=LEAK, readout=readout).double()
    with torch.no_grad():  # b > 0 keeps most units active, so the Hessian is not mostly zeros
        model.input.bias.uniform_(0.2, 0.6)
    return model


def _unrolled(x, w_in, b, w_rec, w_out, b_out, every):
    """The rate RNN written out: v_t = d v + (1-d)(W_in x_t + W_rec z + b), z = ReLU(v)."""
    v = z = torch.zeros(x.shape[0], w_rec.shape[0], dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        v = LEAK * v + (1 - LEAK) * (x[:, t] @ w_in.T + b + z @ w_rec.T)
        z = torch.relu(v)
        outputs.append(z @ w_out.T + b_out)
    return torch.stack(outputs, 1) if every else outputs[-1]


def _dense(model, x, y, loss, recurrent_only):
    """The loss's Hessian in W_rec alone, or in every parameter, by autograd."""
    fixed = [p.detach() for p in (model.input.weight, model.input.bias, model.recurrent.weight,
                                  model.readout.weight, model.readout.bias)]
    every = model.read_every
    if recurrent_only:
        def of_w_rec(w_rec):
            return loss(_unrolled(x, fixed[0], fixed[1], w_rec, *fixed[3:], every), y)

        return torch.autograd.functional.hessian(of_w_rec, fixed[2])
    shapes = [p.shape for p in fixed]

    def of_all(theta):
        pieces, start = [], 0
        for shape in shapes:
            pieces.append(theta[start:start + shape.numel()].reshape(shape))
            start += shape.numel()
        return loss(_unrolled(x, *pieces, every), y)

    return torch.autograd.functional.hessian(of_all, torch.cat([p.reshape(-1) for p in fixed]))


def _case(task):
    x = torch.rand(16, 4, 2, dtype=torch.double)  # 16 sequences of 4 steps of 2 inputs
    if task == "classification":
        return _rnn("last"), x, torch.randint(0, 3, (16,)), F.cross_entropy
    return _rnn("every", 2), x, torch.randn(16, 4, 2, dtype=torch.double), F.mse_loss


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("group", ["recurrent", "all"])
def test_the_top_eigenvalue_matches_the_dense_hessian_of_a_tiny_rnn(task, group):
    model, x, y, loss = _case(task)
    dense = _dense(model, x, y, loss, recurrent_only=group == "recurrent")
    dense = dense.reshape(int(dense.numel() ** 0.5), -1)
    expected = float(torch.linalg.eigvalsh(dense).max())
    # As many Lanczos steps as the block has dimensions: exact up to rounding.
    value = top_hessian_eigenvalue(model, [(x[:10], y[:10]), (x[10:], y[10:])], loss,
                                   steps=len(dense), group=group)
    assert abs(expected) > 1e-3  # a block that is not trivially zero
    assert value == pytest.approx(expected, rel=1e-6)


class _LeakOnly(TimeCarry):
    """e-prop's cut: the recurrent input does not carry the error back to z_{t-1}."""

    def carry(self, v, z, t):
        return v, z.detach()


def test_a_temporal_rules_cut_is_undone_for_the_measurement_and_restored_after():
    model, x, y, loss = _case("classification")
    converted = trainer.convert(copy.deepcopy(model), "feedback_alignment")
    cut = _LeakOnly()
    converted.through_time = cut
    expected = top_hessian_eigenvalue(model, [(x, y)], loss, steps=9, group="recurrent")
    assert top_hessian_eigenvalue(converted, [(x, y)], loss, steps=9,
                                  group="recurrent") == pytest.approx(expected, rel=1e-9)
    assert converted.through_time is cut


def test_only_a_recurrent_model_has_a_recurrent_group():
    rnn = trainer.create_model("rnn32", num_classes=10, in_channels=1, image_size=8)
    mlp = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    assert [p is rnn.recurrent.weight for p in curvature_groups(rnn)["recurrent"]] == [True]
    assert set(curvature_groups(mlp)) == {"all"}
    converted = trainer.convert(rnn, "feedback_alignment")  # the group follows the swap
    assert curvature_groups(converted)["recurrent"][0] is converted.recurrent.weight


def _data(x, y, val_x, val_y, task):
    def source(a, b):
        return TensorBatches(a, b, 8, shuffle=False, seed=0)

    return Dataset("tiny", y.shape[-1] if task == "regression" else 3, 0, 0,
                   source(x, y), source(val_x, val_y), len(x), len(val_x), task=task)


def _measured(model, data):
    config = TrainConfig(curvature=True, curvature_batches=2, curvature_steps=5,
                         input_noise=(0.5,))
    val = evaluate(model, data.val, torch.device("cpu"), data.task)
    return measure(model, data, config, torch.device("cpu"), val)


def test_regression_measures_under_mse_and_its_loss_gap_is_the_shifted_targets_closed_form():
    """Val = the training examples with every target raised by c: the val loss is
    mean((r - c)^2) = train loss - 2 c mean(r) + c^2, r the training residuals."""
    model, x, y, _ = _case("regression")
    c = 0.3
    result = _measured(model, _data(x, y, x, y + c, "regression"))
    with torch.no_grad():
        residual = model(x) - y
    expected = float(-2 * c * residual.mean() + c ** 2)
    assert result["loss_gap"] == pytest.approx(expected, rel=1e-9)
    assert result["train_loss_eval"] == pytest.approx(float(residual.pow(2).mean()), rel=1e-9)
    assert "generalization_gap" not in result and "train_r2_eval" in result
    assert set(result["noisy_val_r2"]) == {"0", "0.5"}
    # The curvature is the MSE's (the first two batches of 8, in their fixed order).
    assert result["top_eigenvalue_recurrent"] == pytest.approx(top_hessian_eigenvalue(
        model, [(x[:8], y[:8]), (x[8:], y[8:])], F.mse_loss, steps=5, group="recurrent"),
        rel=1e-9)


def test_classification_gaps_vanish_on_the_training_set_and_grow_on_relabelled_examples():
    model, x, y, _ = _case("classification")
    same = _measured(model, _data(x, y, x, y, "classification"))
    assert same["loss_gap"] == pytest.approx(0.0, abs=1e-12)
    assert same["generalization_gap"] == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    wrong = _measured(model, _data(x, y, x, (predicted + 1) % 3, "classification"))
    # Every val label is one the model does not predict: val top-1 0, val loss higher.
    assert wrong["generalization_gap"] == pytest.approx(same["train_top1_eval"])
    assert wrong["loss_gap"] > 0


def test_an_rnn_run_records_both_eigenvalues_and_the_loss_gap_every_n_epochs():
    result = trainer.train(dict(arch="rnn32", rule="feedback_alignment", epochs=2, lr=0.01,
                                max_steps_per_epoch=5, curvature=True, curvature_every=1,
                                curvature_steps=4))
    assert result.status == "completed", result.reason
    for record in result.history:
        c = record["curvature"]
        assert c["top_eigenvalue"] > 0 and c["top_eigenvalue_recurrent"] > 0
        assert c["loss_gap"] == pytest.approx(record["val_loss"] - c["train_loss_eval"])
