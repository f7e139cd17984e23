"""Direct feedback alignment: each layer's input gradient is the output error projected through
that layer's own fixed random matrix, checked against the closed form on a small MLP."""

import pytest
import torch
import torch.nn.functional as F

import trainer
from trainer.checkpoint import read, write

DFA = "direct_feedback_alignment"


def _mlp(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8).double()
    return trainer.convert(model, DFA, **{"feedback_init": "unit", **options})


def test_weight_gradients_equal_the_closed_form():
    model = _mlp()
    x = torch.randn(6, 1, 8, 8, dtype=torch.double)
    y = torch.randint(0, 10, (6,))
    F.cross_entropy(model(x), y).backward()
    l1, l2, l3 = (layer for _, layer in trainer.feedback_layers(model))
    # The forward pass by hand.
    h0 = x.flatten(1)
    a1 = h0 @ l1.weight.T + l1.bias
    h1 = a1.relu()
    a2 = h1 @ l2.weight.T + l2.bias
    h2 = a2.relu()
    logits = h2 @ l3.weight.T + l3.bias
    e = (logits.softmax(1) - F.one_hot(y, 10)) / len(y)  # dL/dlogits of the mean loss
    # Output layer: the true gradient. Hidden layer l: e through the matrix of the layer that
    # reads its output, times its local derivative, times its input.
    expected = {
        "l3": e.T @ h2,
        "l2": ((e @ l3.direct_feedback) * (a2 > 0)).T @ h1,
        "l1": ((e @ l2.direct_feedback) * (a1 > 0)).T @ h0,
    }
    for name, layer in (("l1", l1), ("l2", l2), ("l3", l3)):
        torch.testing.assert_close(layer.weight.grad, expected[name].detach())
    # No error travels through a later layer's W or B: changing them changes nothing below.
    before = l1.weight.grad.clone()
    model.zero_grad()
    with torch.no_grad():
        l2.weight_backward.mul_(-3.0)
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(l1.weight.grad, before)
    assert l3.direct_feedback.shape == (10, 256) and l1.direct_feedback.shape == (10, 64)


def test_calibration_matches_backprops_norm_once_and_keeps_the_direction():
    """feedback_init=calibrated: at the first backward each D is rescaled so that the error it
    delivers has the norm of the error backprop would carry there from the error above it
    (delta_l W_l, delta_l the error at the layer's output); later backwards leave D alone."""
    unit, calibrated = _mlp(), _mlp(feedback_init="calibrated", feedback_scale=3.0)
    x = torch.randn(6, 1, 8, 8, dtype=torch.double)
    y = torch.randint(0, 10, (6,))
    for model in (unit, calibrated):  # D drawn from the same generator state in both
        torch.manual_seed(1)
        model(x)
    drawn = {n: m.direct_feedback.clone() for n, m in trainer.feedback_layers(calibrated)}
    for name, layer in trainer.feedback_layers(unit):  # the scale multiplies the unit draw
        torch.testing.assert_close(drawn[name], 3.0 * layer.direct_feedback)
    F.cross_entropy(calibrated(x), y).backward()
    l1, l2, l3 = (layer for _, layer in trainer.feedback_layers(calibrated))
    a1 = x.flatten(1) @ l1.weight.T + l1.bias
    a2 = a1.relu() @ l2.weight.T + l2.bias
    e = (F.linear(a2.relu(), l3.weight, l3.bias).softmax(1) - F.one_hot(y, 10)) / len(y)
    delta2 = (e @ l3.direct_feedback) * (a2 > 0)
    for delivered, reference in ((e @ l3.direct_feedback, e @ l3.weight),
                                 (e @ l2.direct_feedback, delta2 @ l2.weight)):
        torch.testing.assert_close(delivered.norm(), reference.detach().norm())
    for name, layer in trainer.feedback_layers(calibrated):  # only the norm changed
        ratio = layer.direct_feedback / drawn[name]
        torch.testing.assert_close(ratio, ratio.flatten()[0].expand_as(ratio))
    settled = {n: m.direct_feedback.clone() for n, m in trainer.feedback_layers(calibrated)}
    F.cross_entropy(calibrated(2 * x), y).backward()
    for name, layer in trainer.feedback_layers(calibrated):
        torch.testing.assert_close(layer.direct_feedback, settled[name])


def test_matrices_are_fixed_and_restored_from_a_checkpoint(tmp_path):
    model = _mlp()
    x = torch.randn(4, 1, 8, 8, dtype=torch.double)
    model(x)
    saved = {n: m.direct_feedback.clone() for n, m in trainer.feedback_layers(model)}
    write({"model": model.state_dict()}, tmp_path)
    fresh = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8).double(), DFA)
    fresh.load_state_dict(read(tmp_path)["model"])
    fresh(x)  # the restored D is used, not a new draw
    for name, layer in trainer.feedback_layers(fresh):
        torch.testing.assert_close(layer.direct_feedback, saved[name])


@pytest.mark.parametrize("arch,floor", [("mlp", 0.8), ("resnet8", 0.5)])
def test_dfa_trains(arch, floor):
    result = trainer.train(dict(rule=DFA, arch=arch, epochs=3, seed=1))
    assert result.status == "completed"
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert result.best_val_top1 > floor  # digits: chance is 0.1


def test_a_model_without_a_linear_output_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 8), torch.nn.Flatten())
    with pytest.raises(ValueError, match="last weight layer is a Linear"):
        trainer.convert(model, DFA)
