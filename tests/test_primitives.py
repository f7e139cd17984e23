"""Primitives: autograd on the definitions equals the closed forms of docs/design.md; the fused
training-time regularizer equals autograd on the definitions, value and gradient."""

import pytest
import torch

import primitives_oracle as P
import trainer
from trainer.layers import FeedbackConv2d, FeedbackLinear
from trainer.regularizer import weighted_regularizer

N, IN, OUT = 16, 6, 4


def _grad(fn, B):
    B = B.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(B), B)
    return g


@pytest.fixture
def linear_case():
    X = torch.randn(N, IN, dtype=torch.double)
    W = torch.randn(OUT, IN, dtype=torch.double)
    B = torch.randn(OUT, IN, dtype=torch.double)
    f = lambda x, K: x @ K.t()  # noqa: E731
    g = lambda r, K: r @ K  # noqa: E731
    return X, W, B, f, g


def test_closed_forms_linear(linear_case):
    X, W, B, f, g = linear_case
    R = X @ W.t()
    torch.testing.assert_close(_grad(P.decay, B), 2 * B)
    torch.testing.assert_close(_grad(lambda b: P.amp(X, W, b, f), B), -(R.t() @ X) / N)
    torch.testing.assert_close(_grad(lambda b: P.null(X, W, b, f, g), B), 2 / N * R.t() @ R @ B)
    torch.testing.assert_close(_grad(lambda b: P.sparse(X, b, f), B), 2 / N * B @ X.t() @ X)
    torch.testing.assert_close(_grad(lambda b: P.self_(W, b), B), -W)


def _transpose_by_autograd(f, x_shape):
    """g(r, K) = J_f(., K)^T r, built by autograd itself: the transposed map by definition."""
    def g(r, K):
        x = torch.zeros(x_shape, dtype=r.dtype, requires_grad=True)
        (out,) = torch.autograd.grad(f(x, K), x, r, create_graph=True)
        return out
    return g


def _reference(layer, coefficients, x):
    """sum_p c_p R_p by autograd through the definitions."""
    W = layer.weight.detach()
    f = layer.apply_kernel
    g = _transpose_by_autograd(f, x.shape)
    defs = {"decay": lambda B: P.decay(B), "amp": lambda B: P.amp(x, W, B, f),
            "null": lambda B: P.null(x, W, B, f, g), "sparse": lambda B: P.sparse(x, B, f),
            "self": lambda B: P.self_(W, B)}
    B = layer.weight_backward.detach().clone().requires_grad_()
    value = sum(c * defs[p](B) for p, c in coefficients.items())
    (grad,) = torch.autograd.grad(value, B)
    return value.detach(), grad


def _layers():
    fa = trainer.get_rule("weight_mirror")
    yield "linear", FeedbackLinear(IN, OUT, rule=fa).double(), (N, IN)
    yield "conv", FeedbackConv2d(3, 5, 3, stride=2, padding=1, rule=fa).double(), (4, 3, 9, 8)
    yield "conv-groups-dilation", FeedbackConv2d(4, 6, 3, padding=2, dilation=2, groups=2,
                                                 rule=fa).double(), (3, 4, 7, 7)


COMBOS = {
    "weight_mirror": {"decay": 0.3, "amp": 0.7},
    "information_alignment": {"amp": 0.6, "null": 0.25, "decay": 0.1},
    "symmetric_alignment": {"decay": 0.2, "self": 0.9},
    "activation_alignment": {"sparse": 0.4, "amp": 0.8},
    "all_five": {"decay": 0.1, "amp": 0.2, "null": 0.3, "sparse": 0.4, "self": 0.5},
    "null_alone": {"null": 1.0},
    "sparse_alone": {"sparse": 1.0},
}


@pytest.mark.parametrize("combo", sorted(COMBOS))
@pytest.mark.parametrize("kind", ["linear", "conv", "conv-groups-dilation"])
def test_fused_regularizer_matches_autograd_on_definitions(combo, kind):
    name, layer, shape = next(item for item in _layers() if item[0] == kind)
    with torch.no_grad():
        layer.weight_backward.normal_()
    x = torch.randn(shape, dtype=torch.double)
    coefficients = COMBOS[combo]
    value_ref, grad_ref = _reference(layer, coefficients, x)
    value = weighted_regularizer(layer, coefficients, x)
    (grad,) = torch.autograd.grad(value, layer.weight_backward)
    torch.testing.assert_close(value.detach(), value_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_fused_regularizer_with_precomputed_output_equals_recomputed():
    layer = FeedbackConv2d(3, 4, 3, padding=1, bias=True,
                           rule=trainer.get_rule("activation_alignment")).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    out = layer(x)  # includes the bias: without_bias must remove it
    a = weighted_regularizer(layer, {"sparse": 0.5, "amp": 1.0}, x, layer.without_bias(out))
    b = weighted_regularizer(layer, {"sparse": 0.5, "amp": 1.0}, x)
    torch.testing.assert_close(a, b)
