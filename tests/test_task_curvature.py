"""The true task loss's Hessian of a converted model, against closed forms and dense autograd."""

import copy

import pytest
import torch
from torch import nn

import trainer
from trainer.convert import feedback_layers
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
