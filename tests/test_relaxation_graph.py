"""Activation relaxation on computation graphs (trainer/relaxation/graph.py) against closed
forms: with exact backward weights and eta = 1 one sweep is autograd's gradient on the ResNets,
BatchNorm's own weight and bias included; at eta = 0.1 the error falls with T; derivatives=off
drops f' from the messages (a residual model relaxed by hand); learned and random B."""

import copy

import pytest
import torch
import torch.nn.functional as F
from relaxation_cases import converted_step, named_grads, relative, settling
from torch import nn

import trainer
from trainer.mechanisms.relaxation import RESIDUAL

RULE = "activation_relaxation"


_named_grads, _relative = named_grads, relative


def _autograd(model, x, y):
    reference = copy.deepcopy(model).train()
    F.cross_entropy(reference(x), y).backward()
    return reference


def _relaxed(model, x, y, **options):
    return converted_step(model, RULE, x, y, **options)


def _resnet(arch="resnet8", size=8, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    model = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=size,
                                 **kwargs).to(dtype)
    x = torch.randn(8, 1, size, size, dtype=dtype)
    return model, x, torch.randint(0, 10, (8,))


def test_eta_one_one_sweep_is_autograd_on_resnet8_batchnorm_included():
    """Shortcuts (identity and projection), BatchNorm in training mode (the batch's own
    statistics: autograd's gradient for this batch), F.relu, adaptive average pooling."""
    model, x, y = _resnet()
    reference = _autograd(model, x, y)
    relaxed = _relaxed(model, x, y, inference_lr=1.0, inference_steps=1)
    want, got = _named_grads(reference), _named_grads(relaxed)
    assert set(got) == set(want) and any(".bn" in n for n in want)
    for name in want:
        assert float((got[name] - want[name]).norm() / want[name].norm()) <= 1e-5, name
    # BatchNorm saw the batch once: its running statistics are the plain forward's
    for (name, ours), theirs in zip(relaxed.named_buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs, msg=name)
    # a second sweep changes nothing: the residual says T was enough
    again = _relaxed(model, x, y, inference_lr=1.0, inference_steps=2)
    assert _relative(_named_grads(again), want) <= 1e-5
    assert float(getattr(again, RESIDUAL)) <= 1e-5


def test_eta_one_one_sweep_is_autograd_on_the_imagenet_resnet():
    """torchvision's ResNet-18 with its 7x7 stem and max-pooling: in-place ReLU and the
    in-place add of the shortcut are glue like any other op."""
    torch.manual_seed(0)
    model = trainer.create_model("resnet18", num_classes=10, in_channels=1, image_size=32,
                                 small_input=False)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 10, (2,))
    want = _named_grads(_autograd(model, x, y))
    got = _named_grads(_relaxed(model, x, y, inference_lr=1.0, inference_steps=1))
    assert _relative(got, want) <= 1e-5


def test_eta_small_the_error_falls_with_T_on_resnet8():
    """Measured (float64, 8 px, batch 8): 4.8e1 at T = 10, 3.3e-1 at 100, 2.1e-4 at 200,
    4.8e-8 at 300. Below 1e-2 takes T ~ 150 here, not 100: each of the seven nodes on the
    longest path is a first-order lag of rate eta behind the node above it, so the bottom
    node needs about depth / eta sweeps to start moving (the MLP's two hidden nodes need
    about a quarter of the sweeps)."""
    model, x, y = _resnet(dtype=torch.float64)
    want = _named_grads(_autograd(model, x, y))
    errors, residuals = settling(model, RULE, x, y, want, (10, 100, 200), inference_lr=0.1)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-2, errors
    assert residuals == sorted(residuals, reverse=True) and residuals[-1] < 1e-3, residuals


class _Residual(nn.Module):
    """h1 = tanh(W1 x + b1), h2 = tanh(W2 h1 + b2 + h1), y = W3 h2 + b3: two nodes (h1 feeds
    a layer and the identity shortcut), tanh's f' everywhere."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h1 = torch.tanh(self.fc1(x))
        return self.fc3(torch.tanh(self.fc2(h1) + h1))


def _by_hand(model, x, y, derivatives, feedback=None):
    """(dW1, dW2, dW3) after eta = 1 sweeps: the fixed point reached in one, by hand, in the
    loss's units (the per-example relaxation divided by N)."""
    W1, W2, W3 = (layer.weight.detach() for layer in (model.fc1, model.fc2, model.fc3))
    M2, M3 = (W2, W3) if feedback is None else feedback
    h1 = torch.tanh(F.linear(x, W1, model.fc1.bias.detach()))
    a2 = F.linear(h1, W2, model.fc2.bias.detach()) + h1
    h2 = torch.tanh(a2)
    logits = F.linear(h2, W3, model.fc3.bias.detach())
    top = (torch.softmax(logits, 1) - F.one_hot(y, 2)) / len(x)  # dL/dy of the mean loss
    x2 = top @ M3
    message = x2 * (1 - h2 ** 2) if derivatives else x2  # back through tanh to fc2's output
    x1 = message @ M2 + message  # through fc2 and the shortcut
    g1, g2 = x1 * (1 - h1 ** 2), x2 * (1 - h2 ** 2)  # f' stays in the update
    return g1.t() @ x, g2.t() @ h1, top.t() @ h2


@pytest.mark.parametrize("derivatives", ["on", "off"])
def test_derivatives_off_drops_f_prime_from_the_messages_on_a_graph(derivatives):
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    model = _Residual()
    relaxed = _relaxed(model, x, y, inference_lr=1.0, inference_steps=2,
                       derivatives=derivatives)
    want = _by_hand(model, x, y, derivatives == "on")
    for layer, grad in zip((relaxed.fc1, relaxed.fc2, relaxed.fc3), want):
        torch.testing.assert_close(layer.weight.grad, grad)
    other = _by_hand(model, x, y, derivatives != "on")[0]
    assert float((relaxed.fc1.weight.grad - other).norm()) > 1e-2 * float(want[0].norm())
    if derivatives == "on":  # the fixed point is autograd's gradient
        torch.testing.assert_close(relaxed.fc1.weight.grad, _autograd(model, x, y).fc1.weight.grad)


def test_random_backward_weights_carry_the_messages_on_a_graph():
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    relaxed = _relaxed(_Residual(), x, y, inference_lr=1.0, inference_steps=2,
                       backward="random")
    Bs = (relaxed.fc2.weight_backward.detach(), relaxed.fc3.weight_backward.detach())
    assert float((Bs[0] - relaxed.fc2.weight.detach()).norm()) > 0.1
    for layer, grad in zip((relaxed.fc1, relaxed.fc2, relaxed.fc3),
                           _by_hand(relaxed, x, y, True, feedback=Bs)):
        torch.testing.assert_close(layer.weight.grad, grad)
        assert layer.weight_backward.grad is None and not layer.weight_backward.requires_grad


def test_learned_backward_weights_receive_the_weight_update_on_resnet8():
    model, x, y = _resnet()
    relaxed = _relaxed(model, x, y, inference_steps=3, backward="learned")
    layers = trainer.feedback_layers(relaxed)
    assert len(layers) == 10
    for name, layer in layers:
        assert layer.weight.grad is not None and float(layer.weight.grad.norm()) > 0, name
        torch.testing.assert_close(layer.weight_backward.grad, layer.weight.grad)  # dB = dW^T
    for name, grad in _named_grads(relaxed).items():
        assert grad is not None and torch.isfinite(grad).all(), name


class _Branches(nn.Module):
    """A node feeding two layers whose outputs meet in a product, and one layer applied
    twice (weight sharing): a graph no chain describes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.stem, self.left, self.right = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.shared, self.head = nn.Linear(6, 6, bias=False), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        mixed = torch.sigmoid(self.left(h)) * torch.tanh(self.right(h))
        return self.head(F.gelu(self.shared(self.shared(mixed))))


def test_eta_one_one_sweep_is_autograd_on_branches_products_and_a_shared_layer():
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    model = _Branches().double()
    want = _named_grads(_autograd(model, x, y))
    got = _named_grads(_relaxed(model, x, y, inference_lr=1.0, inference_steps=1))
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_the_true_gradient_path_is_plain_autograd_on_a_resnet():
    """trainer.curvature.exact_backward makes the layers plain ops: no relaxation at all,
    whatever T and eta say."""
    from trainer.curvature import exact_backward
    model, x, y = _resnet(dtype=torch.float64)
    want = _named_grads(_autograd(model, x, y))
    converted = trainer.convert(copy.deepcopy(model), RULE, inference_steps=2).train()
    with exact_backward(converted):
        F.cross_entropy(converted(x), y).backward()
    assert _relative(_named_grads(converted), want) <= 1e-12
    assert not hasattr(converted, RESIDUAL)


def test_a_failed_forward_leaves_nothing_for_the_next():
    """The capture opens at each forward, so a forward that raised half-way leaves no links
    behind for the next step."""
    model, x, y = _resnet(dtype=torch.float64)
    want = _named_grads(_autograd(model, x, y))
    converted = trainer.convert(copy.deepcopy(model), RULE, inference_lr=1.0,
                                inference_steps=1).train()

    def fail(module, inputs, output):
        raise RuntimeError("a forward that fails half-way")

    handle = converted.layer2.register_forward_hook(fail)  # after the first stage's links
    with pytest.raises(RuntimeError, match="half-way"):
        converted(x)
    handle.remove()
    F.cross_entropy(converted(x), y).backward()
    assert _relative(_named_grads(converted), want) <= 1e-12


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.a(x), self.b(x)


def test_a_model_with_more_than_one_output_is_refused_at_its_training_forward():
    from catalogue.errors import UsageError
    model = trainer.convert(_TwoHeads(), RULE).train()
    with pytest.raises(UsageError, match="one output tensor; this _TwoHeads returned a tuple"):
        model(torch.randn(2, 4))
    model.eval()
    with torch.no_grad():
        assert len(model(torch.randn(2, 4))) == 2  # evaluation is left alone


def test_a_second_backward_through_one_forward_says_why_it_cannot_run():
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    model = trainer.convert(_Residual(), RULE, inference_steps=2).train()
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="used by an earlier backward"):
        loss.backward()


def test_the_engine_from_a_zero_start_scales_each_update_by_eta_per_node_above():
    """The engine's own API, as predictive coding with fixed predictions would call it: from
    a zero start one sweep leaves node u at eta^(nodes from the top to u) times dL/dz_u (the
    dynamics are linear), so the updates are eta^2, eta and 1 times autograd's; with many
    sweeps the start is forgotten."""
    from trainer.relaxation import Capture
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    plain = _Residual().double()
    reference = _autograd(plain, x, y)
    want = [layer.weight.grad for layer in (reference.fc1, reference.fc2, reference.fc3)]
    model = trainer.convert(copy.deepcopy(plain), RULE)
    fc1, fc2, fc3 = model.fc1, model.fc2, model.fc3

    def relaxed(steps, lr):
        capture = Capture()
        h1 = torch.tanh(capture.link(fc1, x, fc1.weight.detach()))
        h2 = torch.tanh(capture.link(fc2, h1, fc2.weight.detach()) + h1)
        out = capture.link(fc3, h2, fc3.weight.detach())
        (top,) = torch.autograd.grad(F.cross_entropy(out, y), out, retain_graph=True)
        grads, _ = capture.relax(out, top, [fc1.weight, fc2.weight, fc3.weight],
                                 steps=steps, lr=lr, start_scale=0.0)
        return grads

    for got, scale, grad in zip(relaxed(1, 0.5), (0.25, 0.5, 1.0), want):
        torch.testing.assert_close(got, scale * grad)
    for got, grad in zip(relaxed(400, 0.5), want):
        torch.testing.assert_close(got, grad)
