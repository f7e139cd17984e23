"""Activation relaxation (the ``relaxation`` mechanism) against closed forms: with exact
backward weights and eta = 1 one top-down sweep is backprop; at eta = 0.1 the error falls
with T; each option changes what it says; a model with no weight layer is refused in one
line. The graph models (ResNets) are in tests/test_relaxation_graph.py."""

import copy

import pytest
import torch
import torch.nn.functional as F
from relaxation_cases import converted_step, relax, settling, small_model
from relaxation_cases import digits as _digits
from relaxation_cases import grads as _grads
from relaxation_cases import relative as _relative
from torch import nn

import trainer
from catalogue.errors import UsageError
from trainer.mechanisms.relaxation import RESIDUAL

RULE = "activation_relaxation"


def _mlp(dtype=torch.float32):
    return small_model("mlp", dtype)


def _autograd(model, x, y):
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    return _grads(reference)


def _relaxed(model, x, y, **options):
    return converted_step(model, RULE, x, y, **options)


def test_the_rule_declares_its_options_and_no_regularizer():
    declared = trainer.rule_declaration(RULE)
    assert declared.mechanism == "relaxation" and not declared.terms
    assert dict(trainer.get_rule(RULE).options) == {
        "inference_steps": 100, "inference_lr": 0.1, "backward": "exact", "derivatives": "on"}
    from trainer.mechanisms import mechanism_of
    assert mechanism_of(declared).plan_reason(declared)  # the B planner does not apply


def test_eta_one_one_sweep_is_autograd_on_the_mlp():
    x, y = _digits()
    model = _mlp()
    reference = _autograd(model, x, y)
    relaxed = _relaxed(model, x, y, inference_lr=1.0, inference_steps=1)
    assert _relative(_grads(relaxed), reference) <= 1e-5
    for got, want in zip(_grads(relaxed), reference):
        assert float((got - want).norm() / want.norm()) <= 1e-5
    # a second sweep changes nothing: the residual says T was enough
    again = _relaxed(model, x, y, inference_lr=1.0, inference_steps=2)
    assert float(getattr(again, RESIDUAL)) <= 1e-6


def test_eta_small_the_error_falls_with_T_and_is_small_at_100():
    x, y = _digits()
    model = _mlp(torch.float64)
    x = x.double()
    reference = _autograd(model, x, y)
    errors, residuals = settling(model, RULE, x, y, reference, (1, 10, 50, 100),
                                 inference_lr=0.1)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-2, errors
    assert residuals == sorted(residuals, reverse=True) and residuals[-1] < 1e-3, residuals


class _Tiny(nn.Sequential):
    def __init__(self):
        torch.manual_seed(1)
        super().__init__(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(),
                         nn.Linear(5, 2))


def _hand(model, x, y, derivatives, feedback=None):
    """The first layer's update after one eta = 1 sweep, by hand."""
    W1, W2, W3 = (model[i].weight.detach() for i in (0, 2, 4))
    M2, M3 = (W2, W3) if feedback is None else feedback
    a1 = F.linear(x, W1, model[0].bias.detach())
    x1 = torch.tanh(a1)
    a2 = F.linear(x1, W2, model[2].bias.detach())
    logits = F.linear(torch.tanh(a2), W3, model[4].bias.detach())
    n = len(x)
    top = (torch.softmax(logits, 1) - F.one_hot(y, 2)) / n * n  # N * dL/dy (mean loss)
    x2 = top @ M3  # the output layer has no f'
    message = x2 * (1 - torch.tanh(a2) ** 2) if derivatives else x2
    x1_star = message @ M2
    return ((x1_star * (1 - x1 ** 2)).t() @ x) / n  # f' stays in the update


@pytest.mark.parametrize("derivatives", ["on", "off"])
def test_derivatives_off_drops_f_prime_from_the_relaxation(derivatives):
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    model = _Tiny()
    relaxed = _relaxed(model, x, y, inference_lr=1.0, inference_steps=2,
                       derivatives=derivatives)
    want = _hand(model, x, y, derivatives == "on")
    torch.testing.assert_close(relaxed[0].weight.grad, want)
    other = _hand(model, x, y, derivatives != "on")
    assert float((relaxed[0].weight.grad - other).norm()) > 1e-3 * float(want.norm())


def test_random_backward_weights_carry_the_message_and_stay_fixed():
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    relaxed = _relaxed(_Tiny(), x, y, inference_lr=1.0, inference_steps=2, backward="random")
    Bs = tuple(relaxed[i].weight_backward.detach().clone() for i in (2, 4))
    for i in (0, 2, 4):
        B = relaxed[i].weight_backward
        assert not B.requires_grad and B.grad is None
        assert float((B - relaxed[i].weight).detach().norm()) > 0.1
    torch.testing.assert_close(relaxed[0].weight.grad,
                               _hand(relaxed, x, y, True, feedback=Bs))
    optimizer = torch.optim.SGD(relaxed.parameters(), lr=0.1)
    optimizer.step()
    for B, i in zip(Bs, (2, 4)):
        torch.testing.assert_close(relaxed[i].weight_backward.detach(), B)


def test_learned_backward_weights_receive_the_weight_update():
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    relaxed = _relaxed(_Tiny(), x, y, inference_lr=1.0, inference_steps=2, backward="learned")
    Bs = tuple(relaxed[i].weight_backward.detach().clone() for i in (2, 4))
    torch.testing.assert_close(relaxed[0].weight.grad, _hand(relaxed, x, y, True, feedback=Bs))
    gaps = {}
    for i in (0, 2, 4):
        layer = relaxed[i]
        assert layer.weight_backward.requires_grad
        torch.testing.assert_close(layer.weight_backward.grad, layer.weight.grad)  # dB = dW^T
        gaps[i] = (layer.weight_backward - layer.weight).detach().clone()
    # Kolen-Pollack with no decay: W and B take the same steps, so B - W never changes
    optimizer = torch.optim.SGD(relaxed.parameters(), lr=0.5)
    optimizer.step()
    for i in (0, 2, 4):
        layer = relaxed[i]
        torch.testing.assert_close((layer.weight_backward - layer.weight).detach(), gaps[i])
        assert float((layer.weight.grad).norm()) > 0


def test_learned_B_is_trained_by_the_training_optimizer():
    from catalogue.training import TrainConfig
    from trainer.optim import make_optimizer
    model = trainer.convert(_mlp(), RULE, backward="learned")
    groups = make_optimizer(model, TrainConfig(rule=RULE)).param_groups
    feedback = [p for g in groups if g.get("feedback") for p in g["params"]]
    assert len(feedback) == 3 and all(g["weight_decay"] == 0 for g in groups
                                      if g.get("feedback"))


def test_evaluation_and_no_grad_forwards_are_left_alone():
    x, y = _digits(8)
    model = trainer.convert(_mlp(), RULE)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert not out.requires_grad and not hasattr(model, RESIDUAL)


def test_eta_one_one_sweep_is_autograd_on_lenet():
    """Convolutions, max-pooling and Flatten: each block's message is its vector-Jacobian
    product, through the pooling's routing and the transposed convolution. In float64: in
    float32 the first convolution's summation order alone differs by ~1e-5."""
    torch.manual_seed(0)
    model = trainer.create_model("lenet", num_classes=10, in_channels=1, image_size=28).double()
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (8,))
    reference = _autograd(model, x, y)
    relaxed = _relaxed(model, x, y, inference_lr=1.0, inference_steps=1)
    for got, want in zip(_grads(relaxed), reference):
        assert float((got - want).norm() / want.norm()) <= 1e-5
    errors = [_relative(_grads(_relaxed(model, x, y, inference_steps=steps)), reference)
              for steps in (1, 10, 100)]
    assert errors == sorted(errors, reverse=True), errors


def test_a_model_without_weight_layers_is_refused_in_one_line():
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(UsageError, match="activation_relaxation relaxes the inputs of a "
                                         "model's Linear/Conv2d layers") as caught:
        trainer.convert(model, RULE)
    assert "\n" not in str(caught.value)


def test_the_sequential_engine_stays_importable_and_exact_at_eta_one():
    """chain/Frozen (and the tests' block-by-block sweep), for callers that reason about an
    nn.Sequential:
    with eta = 1 one sweep gives autograd's first-layer gradient; a ResNet is refused."""
    from trainer.mechanisms.relaxation import Frozen, chain
    x, y = _digits(16)
    model = _mlp(torch.float64)
    x = x.double()
    reference = _autograd(model, x, y)
    prefix, blocks = chain(model)
    frozen, h = [], x
    for module in prefix:
        h = module(h)
    with torch.no_grad():
        for block in blocks:
            frozen.append(Frozen(block.layer, block.post, h))
            h = frozen[-1].out
        logits = h.clone().requires_grad_(True)
    with torch.enable_grad():
        (top,) = torch.autograd.grad(F.cross_entropy(logits, y) * len(x), logits)
    nodes, _ = relax(frozen, [b.layer.weight.detach() for b in blocks], top, 1, 1.0)
    grad_w, _ = frozen[0].weight_grad(frozen[0].to_weight_output(nodes[0]))
    torch.testing.assert_close(grad_w / len(x), reference[0])
    with pytest.raises(UsageError, match="supports an nn.Sequential"):
        chain(trainer.create_model("resnet8", num_classes=10, in_channels=1, image_size=8))


@pytest.mark.parametrize("backward", ["exact", "learned"])
def test_the_residual_reaches_the_epoch_record(backward):
    """A learned B trains from W's update, with no plan: the planner paces regularizers."""
    result = trainer.train({"rule": RULE, "arch": "mlp", "epochs": 1,
                            "max_steps_per_epoch": 3, "device": "cpu", "diagnostics": True,
                            "metaparameters": {"inference_steps": 5, "backward": backward}})
    assert result.status == "completed"
    assert result.feedback_plan["summary"]["verdict"] == "not applicable"  # and it says why
    residual = result.history[-1]["relaxation_residual"]
    assert 0 < residual < 1


def test_the_residual_survives_the_trip_through_tune_and_into_the_history():
    from search.records import flat_metrics, from_flat, history_row
    record = {"epoch": 1, "val_top1": 0.5, "relaxation_residual": 1e-4}
    assert history_row(from_flat(flat_metrics(record)))["relaxation_residual"] == 1e-4


def test_the_rules_listing_shows_categorical_defaults(capsys):
    from search.cli import main
    assert main(["rules"]) == 0
    assert "backward=exact" in capsys.readouterr().out


@pytest.mark.parametrize("options", [{"derivatives": "off", "inference_steps": 10},
                                     {"backward": "random", "inference_steps": 7},
                                     {"inference_lr": 0.3, "inference_steps": 5}])
def test_the_graph_engine_follows_the_sequential_engine_sweep_for_sweep(options):
    """Away from eta = 1 there is no closed form for the transient: on LeNet (float64) the
    graph engine's update after T sweeps is the block-by-block engine's (chain/Frozen/relax,
    an independent implementation checked against its own closed forms above)."""
    from trainer.mechanisms.relaxation import Frozen, chain
    torch.manual_seed(0)
    model = trainer.create_model("lenet", num_classes=10, in_channels=1, image_size=28).double()
    x, y = torch.randn(4, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (4,))
    relaxed = _relaxed(model, x, y, **options)
    layers = [m for m in relaxed.modules() if hasattr(m, "weight_backward")]
    steps, lr = options["inference_steps"], options.get("inference_lr", 0.1)
    feedback = [layer.weight_backward.detach() if options.get("backward") == "random"
                else layer.weight.detach() for layer in layers]
    _, blocks = chain(relaxed)
    with torch.no_grad():
        frozen, h = [], x
        for block in blocks:
            frozen.append(Frozen(block.layer, block.post, h))
            h = frozen[-1].out
    logits = h.clone().requires_grad_(True)
    (top,) = torch.autograd.grad(F.cross_entropy(logits, y) * len(x), logits)
    nodes, _ = relax(frozen, feedback, top, steps, lr, options.get("derivatives") != "off")
    for block, node, layer in zip(frozen, nodes, layers):
        grad_w, _ = block.weight_grad(block.to_weight_output(node))
        torch.testing.assert_close(layer.weight.grad, grad_w / len(x))
