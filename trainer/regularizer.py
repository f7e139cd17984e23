"""A layer's weighted sum of primitives, with dR/dB in closed form and shared intermediates.

Plain autograd through the primitives' definitions (tests/primitives_oracle.py) would spend
one convolution more per input-using primitive than needed. Every input-using primitive's gradient is a kernel gradient
``kgrad(u, v) = d<v, f(u, K)>/dK`` (linear in u and in v):

    amp:    -(1/N) kgrad(x, r)         r  = f(x, W)
    sparse: (2/N) kgrad(x, f(x, B))
    null:   (2/N) kgrad(g(r, B), r)

so terms that share an argument collapse into one kgrad call, and each value comes for free from
tensors that exist anyway (amp's value is -<x, g(r, B)>/N or -<r, f(x, B)>/N, or -<B, kgrad>/N).
The result is returned through a tiny autograd Function so ``loss.backward()`` delivers the
closed-form gradient to B. Tests check value and gradient against autograd on the definitions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from trainer.layers import FeedbackLayer


class ClosedFormGradient(torch.autograd.Function):
    """Returns a precomputed value whose gradient w.r.t. B is a precomputed tensor."""

    @staticmethod
    def forward(ctx: Any, B: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None, None


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> in one pass, without materialising a * b (activation-sized on a conv layer)."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _combination(terms: list[tuple[Tensor, float]]) -> tuple[Tensor, float]:
    """(t, k) with sum_i s_i a_i = k * t: the first tensor is taken as is and the rest added to
    it with a fused multiply-add, so one term costs nothing and each further one pass."""
    (first, s0), rest = terms[0], terms[1:]
    if not rest:
        return first, s0
    out = torch.add(first, rest[0][0], alpha=rest[0][1] / s0)
    for tensor, s in rest[1:]:
        out.add_(tensor, alpha=s / s0)
    return out, s0


def _sum_kernel_gradients(layer: FeedbackLayer,
                          terms: list[tuple[Tensor, Tensor, float]]) -> Tensor | None:
    """sum_i s_i kgrad(u_i, v_i), grouped so that a shared u or v costs one call. kgrad is
    linear in each argument, so the scalars are applied to the (small) kernel gradient."""
    if not terms:
        return None
    by_out: dict[int, list] = {}
    by_in: dict[int, list] = {}
    for u, v, s in terms:
        by_out.setdefault(id(v), []).append((u, v, s))
        by_in.setdefault(id(u), []).append((u, v, s))
    total: Tensor | None = None
    if len(by_out) <= len(by_in):
        for group in by_out.values():
            u, k = _combination([(gu, s) for gu, _, s in group])
            part = layer.kernel_gradient(u, group[0][1]).mul_(k)
            total = part if total is None else total.add_(part)
    else:
        for group in by_in.values():
            v, k = _combination([(gv, s) for _, gv, s in group])
            part = layer.kernel_gradient(group[0][0], v).mul_(k)
            total = part if total is None else total.add_(part)
    return total


def weighted_regularizer(layer: FeedbackLayer, coefficients: Mapping[str, float],
                         x: Tensor | None, r: Tensor | None = None) -> Tensor:
    """sum_p c_p R_p(B) for the layer's B, with dR/dB in closed form, as a tensor whose
    autograd gradient is that closed form (``regularizer_value_and_grad`` says the rest)."""
    value, grad = regularizer_value_and_grad(layer, coefficients, x, r)
    return ClosedFormGradient.apply(layer.weight_backward, value, grad)


def regularizer_value_and_grad(layer: FeedbackLayer, coefficients: Mapping[str, float],
                               x: Tensor | None, r: Tensor | None = None, *,
                               decay_grad: bool = True) -> tuple[Tensor, Tensor]:
    """(sum_p c_p R_p(B), its gradient with respect to B), both without autograd.

    ``x`` is the regularizer's input (noise or the real, detached layer input; None when no
    term uses one); ``r`` may pass f(x, W) when the forward pass already computed it. Values
    are inner products taken in one pass; no activation-sized temporary is made for them.
    ``decay_grad=False`` leaves decay's 2 c B out of the gradient, for an optimizer that
    applies it as weight decay (``trainer.optim``); the value still includes it.
    """
    B = layer.weight_backward
    W = layer.weight.detach()
    with torch.no_grad():
        value = B.new_zeros(())
        grad = torch.zeros_like(B)
        kernel_terms: list[tuple[Tensor, Tensor, float]] = []
        amp_value_from: Tensor | None = None
        uses_input = any(coefficients.get(p, 0.0) for p in ("amp", "null", "sparse"))
        if uses_input:
            assert x is not None, "an input-using primitive needs the layer input"
            n = x.shape[0]
            needs_r = coefficients.get("amp", 0.0) or coefficients.get("null", 0.0)
            if needs_r and r is None:
                r = layer.apply_kernel(x, W)
        if c := coefficients.get("decay", 0.0):
            value += c * _inner(B, B)
            if decay_grad:
                grad.add_(B, alpha=2 * c)
        if c := coefficients.get("self", 0.0):
            value -= c * _inner(W, B)
            grad.add_(W, alpha=-c)
        if c := coefficients.get("sparse", 0.0):
            fB = layer.apply_kernel(x, B)
            value += c * _inner(fB, fB) / n
            kernel_terms.append((x, fB, 2 * c / n))
            if coefficients.get("amp", 0.0):
                amp_value_from = -_inner(r, fB) / n
        if c := coefficients.get("null", 0.0):
            g = layer.apply_transpose(r, B, x.shape)
            value += c * _inner(g, g) / n
            kernel_terms.append((g, r, 2 * c / n))
            if coefficients.get("amp", 0.0) and amp_value_from is None:
                amp_value_from = -_inner(x, g) / n  # <f(x,B), r> = <x, g(r,B)>
        if c := coefficients.get("amp", 0.0):
            kernel_terms.append((x, r, -c / n))
            if amp_value_from is not None:
                value += c * amp_value_from
        kgrad = _sum_kernel_gradients(layer, kernel_terms)
        if kgrad is not None:
            grad += kgrad
        if coefficients.get("amp", 0.0) and amp_value_from is None:
            # amp is linear in B: its value is <B, d amp/dB>, and amp is the only kgrad term.
            value += _inner(B, kgrad)
    return value, grad


def input_free_value_and_grads(Bs: list[Tensor], Ws: list[Tensor], decay: float,
                               self_: float, *, decay_grad: bool = True
                               ) -> tuple[Tensor, list[Tensor] | None]:
    """decay and self over many layers at once, with the multi-tensor (foreach) kernels:
    R = sum_l decay ||B_l||^2 - self <W_l, B_l>, dR/dB_l = 2 decay B_l - self W_l. A small
    model's step would otherwise pay a few Python-issued kernels per layer for this.
    ``decay_grad=False``: the gradient without decay's part, None when nothing is left."""
    with torch.no_grad():
        value = None
        if decay:
            norms = torch.stack(torch._foreach_norm(Bs))
            value = decay * torch.dot(norms, norms)
        if self_:
            overlap = torch.stack([_inner(w, b) for w, b in zip(Ws, Bs)]).sum()
            value = -self_ * overlap if value is None else value.sub_(overlap, alpha=self_)
        if value is None:
            value = Bs[0].new_zeros(())
        if decay_grad and decay:
            grads = torch._foreach_mul(Bs, 2 * decay)
            if self_:
                torch._foreach_add_(grads, Ws, alpha=-self_)
        elif self_:
            grads = torch._foreach_mul(Ws, -self_)
        else:
            grads = None if not decay_grad else [torch.zeros_like(b) for b in Bs]
    return value, grads


def regularizer_hvp(layer: FeedbackLayer, coefficients: Mapping[str, float],
                    x: Tensor | None) -> Callable[[list[Tensor]], list[Tensor]]:
    """v -> H v, H the Hessian of sum_p c_p R_p with respect to B (docs/design.md section 3).

    Every R here is quadratic in B, so H is constant given the input x: decay contributes 2I,
    sparse (2/N) kgrad(x, f(x, v)), null (2/N) kgrad(g(r, v), r); amp and self are linear.
    """
    W = layer.weight.detach()
    decay = coefficients.get("decay", 0.0)
    sparse = coefficients.get("sparse", 0.0)
    null = coefficients.get("null", 0.0)
    if (sparse or null) and x is None:
        raise ValueError("an input-using primitive needs the layer input")
    n = x.shape[0] if x is not None else 1
    r = layer.apply_kernel(x, W) if null else None

    def hvp(vector: list[Tensor]) -> list[Tensor]:
        (v,) = vector
        with torch.no_grad():
            out = (2 * decay) * v
            if sparse:
                out = out + (2 * sparse / n) * layer.kernel_gradient(x, layer.apply_kernel(x, v))
            if null:
                g = layer.apply_transpose(r, v, x.shape)
                out = out + (2 * null / n) * layer.kernel_gradient(g, r)
        return [out]

    return hvp
