"""Direct feedback alignment: each layer's input gradient is the output error projected through
that layer's own fixed random matrix, checked against the closed form on a small MLP."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import trainer
from catalogue.errors import UsageError
from trainer.checkpoint import read, write
from trainer.mechanisms.direct import split_units

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
    (delta_l W_l, delta_l the error at the layer's output), times feedback_scale; later
    backwards leave D alone."""
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
        torch.testing.assert_close(delivered.norm(), 3.0 * reference.detach().norm())
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


@pytest.mark.parametrize("arch,floor,options", [
    ("mlp", 0.8, {}), pytest.param("resnet8", 0.5, {}, marks=pytest.mark.slow),
    # a variant through the whole loop, diagnostics' model replicas included
    pytest.param("resnet8", 0.5, {"modules": 2, "within": "direct", "feedback_dilation": 1},
                 marks=pytest.mark.slow),
])
def test_dfa_trains(arch, floor, options):
    result = trainer.train(dict(rule=DFA, arch=arch, epochs=3, seed=1, metaparameters=options))
    assert result.status == "completed"
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert result.best_val_top1 > floor  # digits: chance is 0.1


def test_a_model_without_a_linear_output_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 8), torch.nn.Flatten())
    with pytest.raises(ValueError, match="last weight layer is a Linear"):
        trainer.convert(model, DFA)


# --- modules and hybrid: which tensors receive e @ D, and backprop through W between them ---

def _pair(arch: str, size: int = 8, **options: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A plain model (the reference, its true gradients by autograd) and the same weights
    converted under DFA with ``options``."""
    torch.manual_seed(0)
    plain = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=size).double()
    converted = trainer.convert(copy.deepcopy(plain), DFA, **options)
    return plain, converted


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None
            and not any(p is layer.weight_backward for _, layer in trainer.feedback_layers(model))]


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return ((logits.softmax(1) - F.one_hot(y, 10)) / len(y)).detach()


@pytest.mark.parametrize("arch,size", [("mlp", 8), ("lenet", 28), ("resnet8", 8)])
def test_one_module_is_backprop(arch, size):
    plain, one = _pair(arch, size, modules=1)
    x, y = torch.randn(4, 1, size, size, dtype=torch.double), torch.tensor([0, 3, 3, 9])
    _step(plain, x, y), _step(one, x, y)
    for got, want in zip(_grads(one), _grads(plain), strict=True):
        torch.testing.assert_close(got, want)


def test_a_module_per_layer_is_plain_dfa():
    _, dfa = _pair("mlp", feedback_init="unit")
    _, per_layer = _pair("mlp", feedback_init="unit", modules=3)
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.double), torch.tensor([1, 2, 3, 4, 5])
    dfa(x), per_layer(x)  # D drawn; plain DFA also draws one for the first layer's input
    for (_, a), (_, b) in zip(trainer.feedback_layers(dfa), trainer.feedback_layers(per_layer)):
        if b.direct_feedback.numel():
            b.direct_feedback.copy_(a.direct_feedback)
    _step(dfa, x, y), _step(per_layer, x, y)
    for got, want in zip(_grads(per_layer), _grads(dfa), strict=True):
        torch.testing.assert_close(got, want)


def _hand_mlp(model: torch.nn.Module, x: torch.Tensor):
    l1, l2, l3 = (layer for _, layer in trainer.feedback_layers(model))
    a1 = x.flatten(1) @ l1.weight.T + l1.bias
    a2 = a1.relu() @ l2.weight.T + l2.bias
    return (l1, l2, l3), (x.flatten(1), a1, a2)


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_hybrid_is_backprop_on_one_side_and_dfa_on_the_other(side):
    plain, hybrid = _pair("mlp", hybrid=2, hybrid_side=side)
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.double), torch.randint(0, 10, (6,))
    _step(plain, x, y)
    e = _step(hybrid, x, y)
    (l1, l2, l3), (h0, a1, a2) = _hand_mlp(hybrid, x)
    plain_grads = [m.weight.grad for m in plain.modules() if isinstance(m, torch.nn.Linear)]
    if side == "top":  # units [l1] [l2 l3]: l2's input receives e @ D2
        torch.testing.assert_close(l3.weight.grad, plain_grads[2])
        torch.testing.assert_close(l2.weight.grad, plain_grads[1])
        delta1 = (e @ l2.direct_feedback) * (a1 > 0)
        torch.testing.assert_close(l1.weight.grad, (delta1.T @ h0).detach())
    else:  # units [l1 l2] [l3]: l3's input receives e @ D3, through W2 below
        torch.testing.assert_close(l3.weight.grad, plain_grads[2])
        delta2 = (e @ l3.direct_feedback) * (a2 > 0)
        delta1 = (delta2 @ l2.weight) * (a1 > 0)
        torch.testing.assert_close(l2.weight.grad, (delta2.T @ a1.relu()).detach())
        torch.testing.assert_close(l1.weight.grad, (delta1.T @ h0).detach())


def test_a_resnet_stage_module_receives_the_projected_error_at_its_output():
    """modules=4 on a ResNet: stem + stage 1, stage 2, stage 3, head. The stage-1 output is read
    by stage 2's first convolution and its projection shortcut; both are cut off at once, so
    the first module's gradients are backprop's of <e @ D, stage-1 output>, with no other
    path (stage 2's shortcut, its W) from above."""
    plain, model = _pair("resnet8", modules=4)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.double), torch.tensor([0, 1, 2, 3])
    e = _step(model, x, y)
    first = [plain.conv1, plain.bn1, plain.layer1]
    out = plain.layer1(F.relu(plain.bn1(plain.conv1(x))))
    g = (e @ model.layer2.direct_feedback.flatten(1)).view_as(out)
    params = [p for m in first for p in m.parameters()]
    want = torch.autograd.grad((out * g).sum(), params)
    got = [p.grad for m in (model.conv1, model.bn1, model.layer1)
           for n, p in m.named_parameters() if not n.endswith("weight_backward")]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("units,modules,hybrid,side,ends,backprop", [
    (5, 1, 0, "top", (), None),             # one module: backprop
    (5, 5, 0, "top", (0, 1, 2, 3), None),   # one per unit: DFA at every unit
    (5, 2, 0, "top", (1,), None),           # [0 1] [2 3 4]: module k ends at floor(kU/K)
    (5, 3, 0, "top", (0, 2), None),         # [0] [1 2] [3 4]
    (5, 0, 2, "top", (0, 1, 2), 3),         # [0] [1] [2] | [3 4] by backprop
    (5, 0, 3, "bottom", (2, 3), 0),         # [0 1 2] by backprop | [3] [4]
    (5, 1, 3, "bottom", (2,), 0),           # [0 1 2] by backprop | [3 4]
    (4, 1, 2, "top", (1,), 1),              # [0 1] | [2 3] by backprop
    (4, 0, 4, "top", (), 0),                # everything by backprop
])
def test_how_modules_and_hybrid_split_the_units(units, modules, hybrid, side, ends, backprop):
    split = split_units(units, modules, hybrid, side)
    assert (split.ends, split.backprop) == (ends, backprop)


def test_module_options_are_checked_before_training():
    model = trainer.create_model("lenet", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(UsageError, match="modules=6: the model has 5 units"):
        trainer.convert(copy.deepcopy(model), DFA, modules=6)
    with pytest.raises(UsageError, match="modules=3: the model has 5 units, 2 beside"):
        trainer.convert(copy.deepcopy(model), DFA, modules=3, hybrid=3)
    rnn = trainer.create_model("rnn", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(UsageError, match="declares its units"):
        trainer.convert(rnn, DFA, hybrid=1)


def test_a_stages_matrix_is_restored_from_a_checkpoint(tmp_path):
    _, model = _pair("resnet8", modules=4)
    x, y = torch.randn(2, 1, 8, 8, dtype=torch.double), torch.tensor([0, 1])
    _step(model, x, y)  # drawn and calibrated
    write({"model": model.state_dict()}, tmp_path)
    _, fresh = _pair("resnet8", modules=4)
    fresh.load_state_dict(read(tmp_path)["model"])
    _step(fresh, x, y)  # the restored D is used as it is: not redrawn, not recalibrated
    for name in ("layer2", "layer3", "fc"):
        torch.testing.assert_close(fresh.get_submodule(name).direct_feedback,
                                   model.get_submodule(name).direct_feedback)


def test_a_sparse_matrix_has_its_share_of_zeros_and_keeps_the_norm():
    """feedback_sparsity=0.9: nine entries in ten of D are zero and the rest are scaled by
    1/sqrt(0.1), so the delivered error keeps its norm in expectation (here: the squared
    norm of D, the expected squared norm of e @ D per unit |e|^2, within 5 % of the dense one's)."""
    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=32).double(), DFA,
                            feedback_init="unit", feedback_sparsity=0.9)
    model(torch.randn(2, 1, 32, 32, dtype=torch.double))
    first = trainer.feedback_layers(model)[0][1].direct_feedback  # 10 x 1024
    zeros = float((first == 0).double().mean())
    assert 0.88 < zeros < 0.92
    # N(0, 1/n) entries: |D|^2 is 10 (classes) in expectation, dense or sparse
    assert abs(float(first.pow(2).sum()) / 10 - 1) < 0.05


# --- DFA within modules: each layer's input receives its module's own error -----------------

def test_direct_within_one_module_is_plain_dfa():
    _, dfa = _pair("mlp")
    _, within = _pair("mlp", modules=1, within="direct")
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.double), torch.tensor([1, 2, 3, 4, 5])
    for model in (dfa, within):
        torch.manual_seed(3)  # the same D in both, drawn in the same order
        _step(model, x, y)
    for got, want in zip(_grads(within), _grads(dfa), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("init", ["unit", "calibrated"])
def test_a_dilated_kernel_carries_a_modules_error_map(init):
    """LeNet, modules=2, within=direct: modules [conv1 conv2] and [conv3 fc1 fc2]. conv3's
    input (16x5x5) receives s = e @ D; conv2's output gets s by backprop through its pooling,
    and conv2's input (6x14x14) receives s through a fixed 3x3 kernel of dilation 2 in
    gcd(4, 16, 6) = 2 groups, transposed, then resampled to 14x14 by nearest neighbour."""
    plain, model = _pair("lenet", 28, modules=2, within="direct", feedback_dilation=2,
                         feedback_groups=4, feedback_init=init)
    x, y = torch.randn(3, 1, 28, 28, dtype=torch.double), torch.tensor([4, 0, 7])
    e = _step(model, x, y)
    conv1, conv2, conv3 = model[0], model[3], model[6]
    kernel = conv2.direct_feedback
    assert kernel.shape == (16, 3, 3, 3)
    s = (e @ conv3.direct_feedback.flatten(1)).view(3, 16, 5, 5)
    g = F.interpolate(F.conv_transpose2d(s, kernel, padding=2, dilation=2, groups=2),
                      size=(14, 14), mode="nearest")
    h1 = plain[2](plain[1](plain[0](x)))
    h2 = plain[5](plain[4](plain[3](h1.detach())))
    want2 = torch.autograd.grad((h2 * s).sum(), plain[3].weight)[0]
    want1 = torch.autograd.grad((h1 * g).sum(), plain[0].weight)[0]
    torch.testing.assert_close(conv2.weight.grad, want2)
    torch.testing.assert_close(conv1.weight.grad, want1)
    if init == "unit":  # the kernel keeps the map's norm but for the taps the border loses:
        # on 5 positions a dilation-2 tap row reaches 2, 2, 3, 2, 2 of its 3, per axis
        expected = 11 / 15  # sqrt of the mean tap fraction (11/15)^2 over the map
        assert abs(float(g.norm() / s.norm()) / expected - 1) < 0.15  # one draw


def test_every_variant_is_a_searchable_option_that_the_listing_explains(capsys):
    from search.cli import main
    from spaces.registry import default_space

    options = ("feedback_init", "feedback_scale", "feedback_sparsity", "modules", "within",
               "feedback_dilation", "feedback_groups", "hybrid", "hybrid_side")
    space = default_space(DFA).params
    assert set(options) <= set(space)
    # the search keeps to the splits most models have (the valid range is wider)
    assert (space["modules"].low, space["modules"].high) == (0, 4)
    assert (space["hybrid"].low, space["hybrid"].high) == (0, 2)
    assert main(["rules", DFA, "--format", "json"]) == 0
    listed = {row["option"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(options)
    assert "backprop carries there" in listed["feedback_init"]["help"]
    assert listed["modules"]["values"] == "int 0..8 linear (default 0, searched 0..4)"


def test_the_exact_backward_of_a_model_with_modules_is_backprops():
    """trainer.curvature.exact_backward (the true gradient, for the diagnostics' angles and
    --curvature) lifts the module boundaries as it does every layer's projection."""
    from trainer.curvature import exact_backward

    plain, model = _pair("resnet8", modules=4, within="direct", feedback_dilation=1)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.double), torch.tensor([0, 1, 2, 3])
    _step(plain, x, y)
    with exact_backward(model):
        _step(model, x, y)
    for got, want in zip(_grads(model), _grads(plain), strict=True):
        torch.testing.assert_close(got, want)


def test_hybrids_delta_angles_are_zero_in_its_backprop_module_only():
    """The per-layer delta angle (trainer.diagnostics: the error a layer's output receives
    against the true dL/da_l) is 0 for the layers backprop trains and not below them."""
    from trainer.diagnostics import delta_angles

    _, model = _pair("mlp", hybrid=2)
    x, y = torch.randn(32, 1, 8, 8, dtype=torch.double), torch.randint(0, 10, (32,))
    angles = delta_angles(model, x, y, F.cross_entropy)
    assert list(angles) == ["1", "3", "5"]
    assert angles["3"] == pytest.approx(0, abs=1e-4) and angles["5"] == pytest.approx(0, abs=1e-4)
    assert angles["1"] > 30  # the DFA layer's error: e @ D through ReLU', far from the truth


def test_too_many_modules_are_refused_with_the_configuration():
    """The catalogue knows each architecture's units, so a sweep or a transfer refuses
    modules + hybrid beyond them before any trial; the count agrees with the built model's."""
    from catalogue.architectures import architecture
    from catalogue.training import TrainConfig
    from trainer.models import unit_boundaries

    with pytest.raises(UsageError, match="modules=3 \\+ hybrid=2 needs more units than "
                                         "resnet20 has: 4"):
        TrainConfig(rule=DFA, arch="resnet20", metaparameters={"modules": 3, "hybrid": 2}
                    ).validate()
    TrainConfig(rule=DFA, arch="resnet20", metaparameters={"modules": 2, "hybrid": 2}).validate()
    for arch, size in (("mlp8", 8), ("lenet", 28), ("resnet20", 8), ("resnet18", 8),
                       ("two_layer", 8)):
        model = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=size)
        assert len(unit_boundaries(model)) + 1 == architecture(arch).module_units, arch


@pytest.mark.parametrize("arch,options,why", [
    ("resnet20", {"modules": 1}, "modules=1 with within=backprop is backprop"),
    ("lenet", {"hybrid": 5}, "hybrid=5 trains all 5 units by backprop"),
    ("rnn", {"modules": 2}, "rnn declares no units"),
])
def test_settings_that_are_backprop_or_have_no_units_are_refused(arch, options, why):
    """A search must not report backprop as DFA's best, nor spend trials on a model with no
    units; DFA within a single module and a hybrid beside DFA stay valid."""
    from catalogue.training import TrainConfig

    with pytest.raises(UsageError, match=why):
        TrainConfig(rule=DFA, arch=arch, metaparameters=options).validate()
    TrainConfig(rule=DFA, arch="resnet20", metaparameters={"modules": 1, "within": "direct"}
                ).validate()
    TrainConfig(rule=DFA, arch="lenet", metaparameters={"hybrid": 4}).validate()
