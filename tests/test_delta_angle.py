"""The delta angle: per weight layer, the angle between the error δ_l its output a_l receives
in the rule's backward and the true ∂L/∂a_l, held against the errors written out by hand:
feedback alignment's δ through B, direct feedback alignment's e·D through the nonlinearity and
the pooling, truncated BPTT's δ cut at the window, and none for a whole-model rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import trainer
from tests.rate_rnn_oracle import unrolled, weights
from trainer.diagnostics import delta_angles, measure_alignment
from trainer.recurrent import RateRNN

CLASSES = 10


def _angle(a: Tensor, b: Tensor) -> float:
    """Degrees between two tensors as flat vectors, written out."""
    a, b = a.flatten().double(), b.flatten().double()
    return math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))


def _output_error(logits: Tensor, y: Tensor) -> Tensor:
    """e = ∂L/∂logits of the mean cross-entropy: (softmax - onehot) / N."""
    return (logits.softmax(1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)) / len(y)


def _batch(shape: tuple[int, ...], seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64),
            torch.randint(0, CLASSES, (shape[0],), generator=g))


def _converted(model: nn.Module, rule: str, **options) -> nn.Module:
    return trainer.convert(model.double(), rule, **options).train()


@pytest.mark.parametrize("arch, shape", [("mlp", (16, 1, 8, 8)), ("lenet", (8, 1, 28, 28))])
def test_backprop_delivers_the_true_error_to_every_layer(arch, shape):
    torch.manual_seed(0)
    model = _converted(trainer.create_model(arch, num_classes=CLASSES, in_channels=1,
                                            image_size=shape[-1]), "backprop")
    angles = delta_angles(model, *_batch(shape), F.cross_entropy)
    assert len(angles) == len(list(trainer.conversion.weight_layers(model)))
    assert max(angles.values()) < 1e-5


def test_feedback_alignment_carries_the_error_down_through_b():
    """δ_L = e exactly; δ_{L-1} = (e B_L) ⊙ f'(a_{L-1}) against (e W_L) ⊙ f'(a_{L-1}), and one
    layer further down each is carried by its own matrix (B, or W)."""
    torch.manual_seed(0)
    model = _converted(nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                                     nn.Linear(5, CLASSES)), "feedback_alignment")
    x, y = _batch((32, 6))
    first, second, last = model[0], model[2], model[4]
    a1 = first(x).detach()
    a2 = second(a1.relu()).detach()
    e = _output_error(last(a2.relu()).detach(), y)
    slope1, slope2 = (a1 > 0).double(), (a2 > 0).double()
    delivered2 = (e @ last.weight_backward.detach()) * slope2
    true2 = (e @ last.weight.detach()) * slope2
    delivered1 = (delivered2 @ second.weight_backward.detach()) * slope1
    true1 = (true2 @ second.weight.detach()) * slope1

    angles = delta_angles(model, x, y, F.cross_entropy)
    assert angles["4"] < 1e-5
    assert angles["2"] == pytest.approx(_angle(delivered2, true2), abs=1e-6)
    assert angles["0"] == pytest.approx(_angle(delivered1, true1), abs=1e-6)
    assert 30.0 < angles["2"] < 150.0  # a random B: far from the true error, not degenerate


def test_direct_feedback_alignment_reaches_each_conv_layer_as_e_d_through_relu_and_pooling():
    """LeNet (in-place ReLUs, max pooling): a layer's δ is the next layer's projected input
    gradient e·D_{l+1}, routed back through the pooling and masked by f'(a_l); the true one is
    autograd's on the same forward written out with W."""
    torch.manual_seed(0)
    model = _converted(trainer.create_model("lenet", num_classes=CLASSES, in_channels=1,
                                            image_size=28), "direct_feedback_alignment")
    x, y = _batch((8, 1, 28, 28))
    with torch.no_grad():
        model(x)  # draws each layer's D, which the replicas then share
    conv1, conv2, conv3, fc1, fc2 = (model[i] for i in (0, 3, 6, 9, 11))

    with torch.enable_grad():
        a1 = F.conv2d(x, conv1.weight, conv1.bias, padding=conv1.padding)
        h1, where1 = F.max_pool2d(a1.relu(), 2, return_indices=True)
        a2 = F.conv2d(h1, conv2.weight, conv2.bias)
        h2, where2 = F.max_pool2d(a2.relu(), 2, return_indices=True)
        a3 = F.conv2d(h2, conv3.weight, conv3.bias)
        a4 = F.linear(a3.relu().flatten(1), fc1.weight, fc1.bias)
        logits = F.linear(a4.relu(), fc2.weight, fc2.bias)
        true = torch.autograd.grad(F.cross_entropy(logits, y), [a1, a2, a3, a4])
    e = _output_error(logits.detach(), y)

    def projected(layer: nn.Module, shape: torch.Size) -> Tensor:
        return (e @ layer.direct_feedback.flatten(1)).view(shape)

    delivered = [
        F.max_unpool2d(projected(conv2, h1.shape), where1, 2, output_size=a1.shape[-2:])
        * (a1 > 0),
        F.max_unpool2d(projected(conv3, h2.shape), where2, 2, output_size=a2.shape[-2:])
        * (a2 > 0),
        projected(fc1, a3.flatten(1).shape).view(a3.shape) * (a3 > 0),
        projected(fc2, a4.shape) * (a4 > 0),
    ]

    angles = delta_angles(model, x, y, F.cross_entropy)
    for name, mine, exact in zip(("0", "3", "6", "9"), delivered, true):
        assert angles[name] == pytest.approx(_angle(mine, exact), abs=1e-6), name
    assert angles["11"] < 1e-5
    assert all(60.0 < angles[name] < 120.0 for name in ("0", "3"))  # random D at init


@pytest.mark.parametrize("truncation", [1, 2])
def test_truncated_bptt_delivers_the_last_window_and_nothing_before(truncation):
    """Readout at the last step: within the last window truncated BPTT's δ_t is the true one,
    before it zero; over the concatenated time steps cos = ‖δ_window‖ / ‖δ_all‖. The true
    δ_t = (1-d) a_t, with a_t = ∂L/∂v_t by the recursion written out."""
    torch.manual_seed(0)
    steps, leak = 5, 0.5
    model = RateRNN(3, 6, 4, leak=leak, readout="last").double()
    with torch.no_grad():
        model.input.bias.uniform_(0.0, 0.5)  # most units active: every path carries error
    trainer.convert(model, "truncated_bptt", truncation=truncation)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, steps, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)

    w = weights(model)
    logits, vs, _ = unrolled(w, x, leak, False)
    e = _output_error(logits, y)
    true, a_next = [], None
    for t in reversed(range(steps)):
        dz = e @ w["W_out"] if t == steps - 1 else (1 - leak) * a_next @ w["W"]
        a = (vs[t] > 0).double() * dz + (leak * a_next if a_next is not None else 0)
        true.insert(0, (1 - leak) * a)
        a_next = a
    kept = torch.cat([d.flatten() for d in true[steps - truncation:]]).norm()
    expected = math.degrees(math.acos(float(kept / torch.cat([d.flatten() for d in true]).norm())))

    angles = delta_angles(model, x, y, F.cross_entropy)
    assert angles["input"] == pytest.approx(expected, abs=1e-6)
    assert angles["recurrent"] == pytest.approx(expected, abs=1e-6)
    assert angles["readout"] < 1e-6 and expected > 1.0


def test_a_whole_model_rule_records_no_delta_angle_and_the_summary_skips_it():
    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("mlp", num_classes=CLASSES, in_channels=1,
                                                 image_size=8), "activation_relaxation")
    x, y = _batch((16, 1, 8, 8))
    diagnostics = measure_alignment(model, x.float(), y, F.cross_entropy)
    assert all("delta_angle" not in layer and "update_angle" in layer
               for layer in diagnostics["layers"].values())
    assert "delta_angle_mean" not in diagnostics["summary"]


def test_measuring_the_delta_angle_leaves_a_batchnorm_model_as_it_was():
    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("resnet8", num_classes=CLASSES, in_channels=1,
                                                 image_size=8), "direct_feedback_alignment")
    x, y = (t.float() if t.is_floating_point() else t for t in _batch((16, 1, 8, 8)))
    with torch.no_grad():
        model.train()(x)  # D drawn, BatchNorm's statistics moved once
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diagnostics = measure_alignment(model, x, y, F.cross_entropy)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    layers = diagnostics["layers"]
    assert layers["fc"]["delta_angle"] < 1e-3
    assert 60.0 < diagnostics["summary"]["delta_angle_mean"] < 120.0
