"""The feedback layers' backward: grad_input through B, ordinary grad for W and bias."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from trainer.layers import FeedbackConv2d, FeedbackLinear

FA = trainer.get_rule("feedback_alignment")
KP = trainer.get_rule("kolen_pollack")


def _linear(bias: bool, rule=FA) -> FeedbackLinear:
    layer = FeedbackLinear(7, 5, bias=bias, rule=rule).double()
    with torch.no_grad():
        layer.weight_backward.normal_()
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_linear_grad_input_is_grad_out_times_B(bias):
    layer = _linear(bias)
    x = torch.randn(4, 3, 7, dtype=torch.double, requires_grad=True)  # extra leading dim
    grad_out = torch.randn(4, 3, 5, dtype=torch.double)
    layer(x).backward(grad_out)
    torch.testing.assert_close(x.grad, grad_out @ layer.weight_backward.detach())
    plain = nn.Linear(7, 5, bias=bias).double()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "weight_backward"})
    x2 = x.detach().clone().requires_grad_()
    plain(x2).backward(grad_out)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad)
    if bias:
        torch.testing.assert_close(layer.bias.grad, plain.bias.grad)
    assert not torch.allclose(x.grad, x2.grad)  # B really differs from W
    assert layer.weight_backward.grad is None


def test_linear_with_B_equal_W_is_plain_autograd():
    layer = _linear(True)
    with torch.no_grad():
        layer.weight_backward.copy_(layer.weight)
    x = torch.randn(6, 7, dtype=torch.double, requires_grad=True)
    grad_out = torch.randn(6, 5, dtype=torch.double)
    layer(x).backward(grad_out)
    x2 = x.detach().clone().requires_grad_()
    F.linear(x2, layer.weight.detach(), layer.bias.detach()).backward(grad_out)
    torch.testing.assert_close(x.grad, x2.grad)


CONV_CASES = [
    dict(stride=1, padding=1, dilation=1, groups=1, bias=True),
    dict(stride=2, padding=1, dilation=1, groups=1, bias=False),
    dict(stride=2, padding=0, dilation=2, groups=1, bias=True),
    dict(stride=1, padding=2, dilation=1, groups=3, bias=True),
    dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=3, bias=False),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_grad_input_is_transposed_conv_with_B(case):
    layer = FeedbackConv2d(6, 9, 3, rule=FA, **case).double()
    with torch.no_grad():
        layer.weight_backward.normal_()
    x = torch.randn(2, 6, 11, 10, dtype=torch.double, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected = torch.nn.grad.conv2d_input(x.shape, layer.weight_backward.detach(), grad_out,
                                          layer.stride, layer.padding, layer.dilation,
                                          layer.groups)
    torch.testing.assert_close(x.grad, expected)
    plain = nn.Conv2d(6, 9, 3, **case).double()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "weight_backward"})
    x2 = x.detach().clone().requires_grad_()
    plain(x2).backward(grad_out)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad)
    if case["bias"]:
        torch.testing.assert_close(layer.bias.grad, plain.bias.grad)
    # With B = W the whole backward is plain autograd's.
    with torch.no_grad():
        layer.weight_backward.copy_(layer.weight)
    x3 = x.detach().clone().requires_grad_()
    layer(x3).backward(grad_out)
    torch.testing.assert_close(x3.grad, x2.grad)


@pytest.mark.parametrize("padding,mode", [("same", "zeros"), (1, "reflect"), (1, "circular")])
def test_conv_padding_modes_match_nn_conv2d(padding, mode):
    layer = FeedbackConv2d(3, 4, 3, padding=padding, padding_mode=mode, rule=FA).double()
    with torch.no_grad():
        layer.weight_backward.copy_(layer.weight)
    plain = nn.Conv2d(3, 4, 3, padding=padding, padding_mode=mode).double()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "weight_backward"})
    x = torch.randn(2, 3, 8, 8, dtype=torch.double, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, ref = layer(x), plain(x2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad)


def test_kolen_pollack_B_receives_W_gradient():
    for layer, x in ((_linear(True, KP), torch.randn(5, 7, dtype=torch.double)),
                     (FeedbackConv2d(3, 4, 3, padding=1, rule=KP).double(),
                      torch.randn(2, 3, 6, 6, dtype=torch.double))):
        out = layer(x)
        out.backward(torch.randn_like(out))
        assert layer.weight_backward.grad is not None
        torch.testing.assert_close(layer.weight_backward.grad, layer.weight.grad)


def test_sign_symmetry_uses_sign_of_current_W():
    layer = FeedbackLinear(4, 3, rule=trainer.get_rule("sign_symmetry", scale="initial")).double()
    with torch.no_grad():
        layer.weight_backward.normal_()
        layer.weight.mul_(-1)  # W changes: B must follow its signs
    B = layer.feedback_weight()
    torch.testing.assert_close(B, layer.weight_backward.abs() * layer.weight.sign())
    x = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    g = torch.randn(2, 3, dtype=torch.double)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, g @ B.detach())


@pytest.mark.parametrize("make", [
    lambda rule: FeedbackLinear(64, 32, rule=rule),
    lambda rule: FeedbackConv2d(16, 8, 3, rule=rule),
])
def test_a_layer_built_on_its_own_has_a_drawn_B_at_W_scale(make):
    # B used to be torch.empty: whatever the allocator held, NaN included.
    layer = make(trainer.get_rule("feedback_alignment"))
    B, W = layer.weight_backward.detach(), layer.weight.detach()
    assert torch.isfinite(B).all()
    assert 0.5 < float(B.std() / W.std()) < 2.0
    assert abs(float(torch.nn.functional.cosine_similarity(B.flatten(), W.flatten(), dim=0))) < 0.2

