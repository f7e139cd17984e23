"""Predictive coding (the ``predictive_coding`` mechanism) against closed forms: with fixed
predictions the errors settle at minus autograd's gradient of each node (one sweep at eta = 1
is backprop), on sequential models and on ResNet-8's graph (BatchNorm, shortcuts), and the
graph engine forms the block-by-block engine's update sweep for sweep; strict predictions are
close to it only while the output error is small; each option changes what it says; strict
predictions and learned error weights refuse non-sequential models in one line."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from relaxation_cases import converted_step, named_grads, settling, small_model
from relaxation_cases import digits as _digits
from relaxation_cases import grads as _grads
from relaxation_cases import relative as _relative
from torch import nn

import trainer
from catalogue.errors import UsageError
from trainer.mechanisms.predictive_coding import ERROR_WEIGHTS, Settings, freeze, settle
from trainer.mechanisms.relaxation import RESIDUAL, chain

RULE = "predictive_coding"


def _mlp(dtype=torch.float32):
    return small_model("mlp", dtype)


def _lenet():
    return small_model("lenet", torch.float64, size=28)


def _autograd(model, x, y, scale=1.0):
    reference = copy.deepcopy(model)
    (scale * F.cross_entropy(reference(x), y)).backward()
    return _grads(reference)


def _coded(model, x, y, scale=1.0, **options):
    return converted_step(model, RULE, x, y, scale, **options)


def test_the_rule_declares_its_options_and_a_whole_model_update():
    declared = trainer.rule_declaration(RULE)
    assert declared.mechanism == "predictive_coding" and not declared.terms
    assert declared.declared_mechanism.update == "model" and not declared.learns_feedback
    assert dict(trainer.get_rule(RULE).options) == {
        "inference_steps": 100, "inference_lr": 0.1, "prediction": "fixed",
        "backward": "exact", "derivatives": "on", "error_weights": "identity",
        "error_weights_lr": 0.025}
    from trainer.mechanisms import mechanism_of
    assert mechanism_of(declared).plan_reason(declared)  # the B planner does not apply


def _node_gradients(model, x, y):
    """-N dL/dx_l for every hidden node of the plain MLP (the ReLU outputs), by autograd."""
    W = [m for m in model if isinstance(m, nn.Linear)]
    h, nodes = x.flatten(1), []
    for layer in W[:-1]:
        h = torch.relu(layer(h))
        nodes.append(h)
    loss = F.cross_entropy(W[-1](h), y)
    return [-len(x) * g for g in torch.autograd.grad(loss, nodes)], loss


def test_fixed_predictions_settle_at_minus_the_gradient_of_every_node_on_the_mlp():
    x, y = _digits()
    model = _mlp(torch.float64)
    x = x.double()
    want, _ = _node_gradients(model, x, y)
    converted = trainer.convert(copy.deepcopy(model), RULE)
    blocks = freeze(*chain(converted), x)
    logits = blocks[-1].out.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    feedback = [b.layer.weight.detach() for b in blocks]
    errors = []
    for steps in (10, 100, 200):
        settings = Settings.of({**converted.creditsweep_rule.options, "inference_steps": steps})
        settled = settle(blocks, feedback, -len(x) * grad, settings)
        errors.append(max(float((e - w).norm() / w.norm())
                          for e, w in zip(settled.errors[:-1], want)))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-6, errors
    assert errors[1] < 1e-3, errors  # the default T = 100 at eta = 0.1


def test_eta_one_one_sweep_is_autograd_on_the_mlp():
    x, y = _digits()
    model = _mlp()
    reference = _autograd(model, x, y)
    coded = _coded(model, x, y, inference_lr=1.0, inference_steps=1)
    for got, want in zip(_grads(coded), reference):
        assert float((got - want).norm() / want.norm()) <= 1e-5
    # a second sweep changes no error: the value nodes stand still
    again = _coded(model, x, y, inference_lr=1.0, inference_steps=2)
    assert float(getattr(again, RESIDUAL)) <= 1e-6


def test_the_default_settling_gives_autograds_update_on_the_mlp():
    """The residual is the last sweep's change of the errors relative to them: from a zero
    start the deeper of the MLP's two hidden nodes, a second-order lag, still moves by
    about (T-1) eta^2 (1-eta)^(T-1) of its fixed point at step T (3e-5 at T = 100)."""
    x, y = _digits()
    model = _mlp(torch.float64)
    x = x.double()
    reference = _autograd(model, x, y)
    errors, residuals = settling(model, RULE, x, y, reference, (1, 10, 100))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3, errors
    bound = 99 * 0.1 ** 2 * 0.9 ** 99
    assert residuals == sorted(residuals, reverse=True) and residuals[-1] < bound, residuals


def test_fixed_predictions_give_autograds_update_on_lenet():
    """Convolutions, max-pooling and Flatten: each block's message is its vector-Jacobian
    product. Four hidden nodes settle more slowly than the MLP's two: at eta = 0.1 the
    deepest node's error still holds ~C(T,3) eta^3 (1-eta)^(T-3) of its start (6e-3 at
    T = 100), gone by T = 200."""
    model = _lenet()
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (8,))
    reference = _autograd(model, x, y)
    for got, want in zip(_grads(_coded(model, x, y, inference_lr=1.0, inference_steps=1)),
                         reference):
        assert float((got - want).norm() / want.norm()) <= 1e-5
    errors = [_relative(_grads(_coded(model, x, y, inference_steps=steps)), reference)
              for steps in (10, 100, 200)]
    assert errors == sorted(errors, reverse=True) and errors[1] < 2e-2 and errors[2] < 1e-4, \
        errors


class _Tanh(nn.Sequential):
    def __init__(self, activation=nn.Tanh):
        torch.manual_seed(1)
        super().__init__(nn.Linear(5, 8), activation(), nn.Linear(8, 8), activation(),
                         nn.Linear(8, 3))


def _strict_error(model, x, y, scale):
    reference = _autograd(model, x, y, scale)
    coded = _coded(model, x, y, scale, prediction="strict", inference_steps=300)
    return _relative(_grads(coded), reference), float(getattr(coded, RESIDUAL))


def test_strict_predictions_match_the_gradient_only_while_the_output_error_is_small():
    """Strict predictions re-evaluate every prediction, f' and Jacobian at the settled value
    nodes, which move from the forward pass by O(output error): the update's relative
    deviation from autograd's is first order in the output error. A loss scaled by s scales
    the output error by s, so the deviation must fall tenfold per decade of s (the tolerance:
    its slope c from s = 1e-3, 1.3 for this net, times s), be below 1e-2 at s = 1e-3 and
    far (> 20 %) at s = 1, cross-entropy's per-example error on an untrained net."""
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    model = _Tanh().double()
    deviations = {}
    for scale in (1e-3, 1e-2, 1.0):
        deviations[scale], residual = _strict_error(model, x, y, scale)
        assert residual < 1e-6  # settled: what differs is the fixed point, not T
    slope = deviations[1e-3] / 1e-3
    assert deviations[1e-3] < 1e-2, deviations
    assert deviations[1e-2] == pytest.approx(slope * 1e-2, rel=0.1), deviations
    assert deviations[1.0] > 0.2, deviations
    fixed = _relative(_grads(_coded(model, x, y, inference_steps=300)), _autograd(model, x, y))
    assert fixed < 1e-8  # the same net and loss with fixed predictions: the gradient


def test_strict_predictions_on_a_linear_network_settle_in_closed_form():
    """With linear maps the Jacobians do not depend on the value nodes and the output error
    is held, so the strict errors are still e_l = -N dL/dx_l, whatever the output error; the
    values settle at the forward pass displaced by them, mu_l = W_l mu_{l-1} + b_l + e_l, and
    each update reads its settled input, dW_l = -e_l^T mu_{l-1} / N: away from autograd's by
    the displacement, which is what the nonlinear case adds to."""
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    model = _Tanh(nn.Identity).double()
    scale, n = 10.0, len(x)
    W1, W2, W3 = (m for m in model if isinstance(m, nn.Linear))
    h1 = W1(x)
    h1.retain_grad()
    h2 = W2(h1)
    h2.retain_grad()
    out = W3(h2)
    out.retain_grad()
    (scale * F.cross_entropy(out, y)).backward()
    e1, e2, e3 = (-n * h.grad for h in (h1, h2, out))
    mu1 = (h1 + e1).detach()
    mu2 = (W2(mu1) + e2).detach()
    coded = _coded(model, x, y, scale, prediction="strict", inference_steps=1000)
    for i, (error, source) in enumerate(((e1, x), (e2, mu1), (e3, mu2))):
        torch.testing.assert_close(coded[2 * i].weight.grad, -(error.t() @ source) / n)
        torch.testing.assert_close(coded[2 * i].bias.grad, -error.sum(0) / n)
    assert _relative(_grads(coded), _grads(model)) > 0.2  # far from the gradient here


class _Tiny(nn.Sequential):
    def __init__(self):
        torch.manual_seed(1)
        super().__init__(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(),
                         nn.Linear(5, 2))


def _hand(model, x, y, derivatives, feedback=None):
    """The first layer's update at the fixed point, by hand: eps_L = -N dL/dy, each error
    the one above through M (f' in the message only when derivatives are on), and
    dW_1 = -(f' * eps_1)^T x / N (f' always in the update)."""
    W1, W2, W3 = (model[i].weight.detach() for i in (0, 2, 4))
    M2, M3 = (W2, W3) if feedback is None else feedback
    a1 = F.linear(x, W1, model[0].bias.detach())
    x1 = torch.tanh(a1)
    a2 = F.linear(x1, W2, model[2].bias.detach())
    logits = F.linear(torch.tanh(a2), W3, model[4].bias.detach())
    n = len(x)
    top = -(torch.softmax(logits, 1) - F.one_hot(y, 2))  # -N dL/dy (mean loss)
    eps2 = top @ M3  # the output layer has no f'
    eps1 = (eps2 * (1 - torch.tanh(a2) ** 2) if derivatives else eps2) @ M2
    return -((eps1 * (1 - x1 ** 2)).t() @ x) / n


@pytest.mark.parametrize("derivatives", ["on", "off"])
def test_derivatives_off_drops_f_prime_from_the_message_only(derivatives):
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    model = _Tiny()
    want = _hand(model, x, y, derivatives == "on")
    one_sweep = _coded(model, x, y, inference_lr=1.0, inference_steps=1,
                       derivatives=derivatives)
    torch.testing.assert_close(one_sweep[0].weight.grad, want)
    settled = _coded(model, x, y, inference_steps=300, derivatives=derivatives)
    torch.testing.assert_close(settled[0].weight.grad, want, rtol=1e-4, atol=1e-6)
    other = _hand(model, x, y, derivatives != "on")
    assert float((one_sweep[0].weight.grad - other).norm()) > 1e-3 * float(want.norm())


def test_random_backward_weights_carry_the_message_and_stay_fixed():
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    coded = _coded(_Tiny(), x, y, inference_lr=1.0, inference_steps=1, backward="random")
    Bs = tuple(coded[i].weight_backward.detach().clone() for i in (2, 4))
    for i in (0, 2, 4):
        B = coded[i].weight_backward
        assert not B.requires_grad and B.grad is None
        assert float((B - coded[i].weight).detach().norm()) > 0.1
    torch.testing.assert_close(coded[0].weight.grad, _hand(coded, x, y, True, feedback=Bs))
    torch.optim.SGD(coded.parameters(), lr=0.1).step()
    for B, i in zip(Bs, (2, 4)):
        torch.testing.assert_close(coded[i].weight_backward.detach(), B)


def test_learned_backward_weights_track_the_weight_update():
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    coded = _coded(_Tiny(), x, y, inference_lr=1.0, inference_steps=1, backward="learned")
    Bs = tuple(coded[i].weight_backward.detach().clone() for i in (2, 4))
    torch.testing.assert_close(coded[0].weight.grad, _hand(coded, x, y, True, feedback=Bs))
    gaps = {}
    for i in (0, 2, 4):
        layer = coded[i]
        assert layer.weight_backward.requires_grad
        torch.testing.assert_close(layer.weight_backward.grad, layer.weight.grad)  # dB = dW^T
        gaps[i] = (layer.weight_backward - layer.weight).detach().clone()
    torch.optim.SGD(coded.parameters(), lr=0.5).step()  # W and B take the same step
    for i in (0, 2, 4):
        torch.testing.assert_close((coded[i].weight_backward - coded[i].weight).detach(),
                                   gaps[i])


def test_learned_error_weights_are_drawn_as_the_reference_and_saved_with_the_model():
    model = trainer.convert(_lenet(), RULE, error_weights="learned")
    layers = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    shapes = [tuple(getattr(layer, ERROR_WEIGHTS).shape) for layer in layers[:-1]]
    assert shapes == [(6, 6), (16, 16), (120, 120), (84, 84)]  # channels, a Linear's features
    assert not hasattr(layers[-1], ERROR_WEIGHTS)  # the output has none
    V = torch.cat([getattr(layer, ERROR_WEIGHTS).flatten() for layer in layers[:-1]])
    assert float(V.min()) >= 0  # |N(0, 0.05^2)|: mean 0.05 sqrt(2/pi)
    assert float(V.mean()) == pytest.approx(0.05 * math.sqrt(2 / math.pi), rel=0.05)
    state = model.state_dict()
    assert {f"{i}.{ERROR_WEIGHTS}" for i in (0, 3, 6, 9)} <= set(state)
    fresh = trainer.convert(_lenet(), RULE, error_weights="learned")
    fresh.load_state_dict(state)
    torch.testing.assert_close(getattr(fresh[0], ERROR_WEIGHTS), getattr(model[0],
                                                                        ERROR_WEIGHTS))
    assert not any(ERROR_WEIGHTS in k for k in trainer.convert(_lenet(), RULE).state_dict())


def test_learned_error_weights_mix_the_prediction_before_the_comparison():
    """Before any step each error is mu_hat - mu_hat V (the value starts at the prediction):
    V mixes a Linear's features, and a convolution's channels at every position."""
    model = trainer.convert(_lenet(), RULE, error_weights="learned")
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    blocks = freeze(*chain(model), x)
    settings = Settings.of({**model.creditsweep_rule.options, "inference_steps": 0})
    layers = [b.layer for b in blocks]
    weights = [getattr(layer, ERROR_WEIGHTS) for layer in layers[:-1]] + [None]
    settled = settle(blocks, [layer.weight.detach() for layer in layers],
                     torch.zeros_like(blocks[-1].out), settings, weights)
    conv = blocks[0].out  # (rows, 6, 14, 14)
    mixed = (conv.permute(0, 2, 3, 1) @ weights[0]).permute(0, 3, 1, 2)
    torch.testing.assert_close(settled.errors[0], conv - mixed)
    flat = blocks[3].out  # (rows, 84)
    torch.testing.assert_close(settled.errors[3], flat - flat @ weights[3])


def test_learned_error_weights_receive_the_papers_update():
    """dV = -rate * mu_hat^T eps / N: after one sweep at eta = 1 the errors are -N dL/dx
    whatever V (the sweep replaces each error by its message), so the update is
    rate * mu_hat^T dL/dx summed over the batch, with autograd's dL/dx of each node."""
    x, y = _digits()
    model = _mlp(torch.float64)
    x = x.double()
    converted = trainer.convert(copy.deepcopy(model), RULE, error_weights="learned",
                                inference_lr=1.0, inference_steps=1, error_weights_lr=0.3)
    before = [getattr(m, ERROR_WEIGHTS).clone() for m in converted[1:-1:2]]
    converted.train()
    F.cross_entropy(converted(x), y).backward()
    minus_n_grads, _ = _node_gradients(model, x, y)
    activations, h = [], x.flatten(1)
    for layer in [m for m in model if isinstance(m, nn.Linear)][:-1]:
        h = torch.relu(layer(h)).detach()
        activations.append(h)
    for V0, layer, mu_hat, eps in zip(before, converted[1:-1:2], activations, minus_n_grads):
        want = V0 - 0.3 * (mu_hat.t() @ eps) / len(x)
        torch.testing.assert_close(getattr(layer, ERROR_WEIGHTS), want)
        assert float((want - V0).norm()) > 1e-3 * float(V0.norm())
    torch.testing.assert_close(converted[1].weight.grad, _autograd(model, x, y)[0])


@pytest.mark.parametrize("prediction", ["fixed", "strict"])
def test_the_update_is_a_descent_direction(prediction):
    """W.grad holds the update the optimizer subtracts: a small step lowers the loss."""
    x, y = _digits()
    coded = _coded(_mlp(), x, y, prediction=prediction)
    with torch.no_grad():
        before = float(F.cross_entropy(coded(x), y))
    torch.optim.SGD(coded.parameters(), lr=0.05).step()
    with torch.no_grad():
        assert float(F.cross_entropy(coded(x), y)) < before - 1e-3


def test_evaluation_and_no_grad_forwards_are_left_alone():
    x, _ = _digits(8)
    model = trainer.convert(_mlp(), RULE)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert not out.requires_grad and not hasattr(model, RESIDUAL)


@pytest.mark.parametrize("options, why", [
    ({"prediction": "strict"}, "prediction=strict needs an nn.Sequential .* strict "
                               "predictions are recomputed block by block"),
    ({"error_weights": "learned"}, "error_weights=learned needs an nn.Sequential .* V mixes "
                                   "the channels of the one weight layer producing each"),
])
def test_strict_predictions_and_learned_error_weights_refuse_other_models_in_one_line(
        options, why):
    model = trainer.create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(UsageError, match=why) as caught:
        trainer.convert(model, RULE, **options)
    assert "\n" not in str(caught.value) and "CifarResNet" in str(caught.value)
    assert not trainer.feedback_layers(model)  # refused before anything was swapped
    trainer.convert(model, RULE)  # fixed predictions with identity error weights train it


@pytest.mark.parametrize("options", [{"backward": "learned"},
                                     {"prediction": "strict", "error_weights": "learned"}])
def test_training_records_the_residual(options):
    result = trainer.train({"rule": RULE, "arch": "mlp", "epochs": 1,
                            "max_steps_per_epoch": 3, "device": "cpu", "diagnostics": True,
                            "metaparameters": {"inference_steps": 5, **options}})
    assert result.status == "completed"
    assert result.feedback_plan["summary"]["verdict"] == "not applicable"
    residual = result.history[-1]["relaxation_residual"]
    assert 0 < residual < 1


def test_a_training_step_moves_the_error_weights_outside_the_optimizer():
    """V is a buffer stepped by the backward pass at its own rate: no optimizer group holds
    it, and the task curvature, which differentiates the parameters, never meets it."""
    from catalogue.training import TrainConfig
    from trainer.curvature import task_parameters
    from trainer.loop import train_step
    from trainer.optim import make_optimizer
    x, y = _digits(16)
    model = trainer.convert(_mlp(), RULE, error_weights="learned", inference_steps=5)
    optimizer = make_optimizer(model, TrainConfig(rule=RULE))
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    V = getattr(model[1], ERROR_WEIGHTS)
    assert id(V) not in held and all(p is not V for p in task_parameters(model))
    before = V.clone()
    model.train()
    train_step(model, optimizer, x, y)
    assert float((V - before).norm()) > 0


# --- fixed predictions on the model's graph (the CIFAR and ImageNet ResNets) ----------------

def _resnet(dtype=torch.float64):
    torch.manual_seed(0)
    model = trainer.create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    x = torch.randn(8, 1, 8, 8, dtype=dtype)
    return model.to(dtype), x, torch.randint(0, 10, (8,))


_named_grads = named_grads


def test_eta_one_one_sweep_is_autograd_on_resnet8_batchnorm_included():
    """From a zero start one sweep at eta = 1 sets each error to its whole message: the
    backward pass of autograd, through the shortcuts (identity and projection) and BatchNorm
    in training mode."""
    model, x, y = _resnet()
    reference = copy.deepcopy(model).train()
    F.cross_entropy(reference(x), y).backward()
    coded = _coded(model, x, y, inference_lr=1.0, inference_steps=1)
    want, got = _named_grads(reference), _named_grads(coded)
    assert set(got) == set(want) and any(".bn" in n for n in want)
    for name in want:
        assert float((got[name] - want[name]).norm() / want[name].norm()) <= 1e-8, name
    assert float(getattr(coded, RESIDUAL)) == 1.0  # the only sweep moved every error from 0


def _layer_inputs(model, record):
    """A forward hook on each weight layer registering ``record(name, input)`` on its input
    tensor: on a converted layer it runs after the relaxation's own node hook, so it sees the
    node's new value at every sweep."""
    def hook(name):
        def register(module, inputs, output):
            if inputs[0].grad_fn is not None:
                inputs[0].register_hook(lambda grad: record(name, grad))
        return register
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(hook(name))


def test_fixed_predictions_settle_at_minus_the_gradient_of_every_node_on_resnet8():
    """Each error node (a weight layer's input: after BatchNorm and ReLU, or a shortcut's
    sum) settles at eps_u = -N dL/dx_u, autograd's gradient of that input; the engine's
    nodes are -eps_u / N."""
    model, x, y = _resnet()
    want = {}
    reference = copy.deepcopy(model).train()
    _layer_inputs(reference, lambda name, grad: want.__setitem__(name, -len(x) * grad))
    F.cross_entropy(reference(x), y).backward()
    converted = trainer.convert(copy.deepcopy(model), RULE, inference_lr=0.5,
                                inference_steps=60).train()
    settled = {}
    _layer_inputs(converted, lambda name, grad: settled.__setitem__(name, -len(x) * grad))
    F.cross_entropy(converted(x), y).backward()
    assert set(settled) == set(want) and len(want) >= 9  # every layer but the first
    for name in want:
        assert float((settled[name] - want[name]).norm() / want[name].norm()) < 1e-6, name


def test_the_graph_engine_gives_the_sequential_settlings_update_sweep_for_sweep_on_lenet():
    """Mid-transient (eta = 0.3, T = 4), with a random B and f' dropped from the messages:
    fixed predictions on the graph engine and the block-by-block engine (forced by learned
    error weights held at the identity, which leave every error mu - mu_hat) form the same
    update, biases included."""
    model = _lenet()
    x, y = torch.randn(4, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (4,))
    options = {"inference_lr": 0.3, "inference_steps": 4, "backward": "random",
               "derivatives": "off"}
    graph = trainer.convert(copy.deepcopy(model), RULE, **options).train()
    blocks = trainer.convert(copy.deepcopy(model), RULE, error_weights="learned",
                             **options).train()
    with torch.no_grad():
        for (_, a), (_, b) in zip(trainer.feedback_layers(graph),
                                  trainer.feedback_layers(blocks)):
            b.weight_backward.copy_(a.weight_backward)
            if hasattr(b, ERROR_WEIGHTS):
                getattr(b, ERROR_WEIGHTS).copy_(torch.eye(len(getattr(b, ERROR_WEIGHTS))))
    for coded in (graph, blocks):
        F.cross_entropy(coded(x), y).backward()
    for got, want in zip(_grads(graph), _grads(blocks)):
        torch.testing.assert_close(got, want)
    assert _relative(_grads(graph), _autograd(model, x, y)) > 0.1  # far from settled


def test_the_default_settling_on_resnet8_approaches_autograd_with_T():
    """At eta = 0.1 every node is a first-order lag behind the ones above it, so the
    error falls with T; the deepest nodes hold the start longest."""
    model, x, y = _resnet(torch.float32)
    want = _autograd(model, x, y)
    errors = [_relative(_grads(_coded(model, x, y, inference_steps=steps)), want)
              for steps in (50, 200)]
    assert errors[1] < errors[0] and errors[1] < 5e-2, errors


@pytest.mark.parametrize("command", [
    ["sweep", "--arch", "resnet8", "--trials", "2", "--set", "prediction=strict"],
    ["train", "--arch", "resnet18", "--epochs", "1", "--set", "prediction=strict"],
    ["sweep", "--arch", "resnet8", "--trials", "2", "--set", "error_weights=learned"],
])
def test_commands_refuse_the_sequential_options_on_a_resnet_before_writing(command, tmp_path,
                                                                           capsys):
    """The declaration names the families per option value, so the refusal comes up front,
    in one line, before a study is written."""
    from search.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = [*command, "--rule", RULE] + (["--storage", url] if command[0] == "sweep" else [])
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    option = command[-1]
    assert len(error.splitlines()) == 1, error
    assert f"predictive_coding with {option} trains mlp, lenet models, not" in error, error
    assert not (tmp_path / "s.db").exists()
