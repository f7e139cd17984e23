"""B's preconditioned update for a regularizer whose curvature is the layer's input covariance.

Activation alignment's R = alpha sparse + beta amp has the Hessian H = 2 alpha (I kron Sigma) in
B, Sigma the layer input's second moment (a convolution's: of its unfolded patches, summed over
output positions, averaged over the batch), and grad R = (2 alpha B - beta W) Sigma per row of
B. Sigma's spectrum is wide (a ReLU layer's mean direction alone is ~fan-in times its bulk), so
one learning rate that the stiffest mode tolerates leaves the soft ones nearly still.
Multiplying B's gradient on the right by P = (Sigma + eps I)^-1 turns each mode's curvature
2 alpha lambda into 2 alpha lambda / (lambda + eps): every mode above eps relaxes at about the
same rate, and none is stiffer than 2 alpha (docs/design.md section 7, "Preconditioned B").

Sigma is estimated from each step's own input, so that P never lags the activity (one
estimated a few steps earlier let directions that gained variance since be stepped at many
times their curvature, and B diverged within ten steps on resnet8). To make that cheap, a
convolution's Sigma (fan-in C k^2 squared) is taken as a Kronecker product A kron S / tr: A
(C x C) the channels' second moment summed over kernel offsets, S (k^2 x k^2) the offsets'
summed over channels (their partial traces); a linear layer's is exact (k^2 = 1).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catalogue.registry import Registry
from trainer.conversion import feedback_layers
from trainer.layers import FeedbackConv2d, FeedbackLayer

ATTRIBUTE = "feedback_preconditioner"  # the child module of a layer that holds P
SHRINKAGE = 0.1  # eps, at least, as a fraction of Sigma's mean eigenvalue
ROWS_PER_INPUT = 64  # Sigma is estimated from the first examples giving >= 64 x fan-in rows

Hvp = Callable[[list[Tensor]], list[Tensor]]


def patch_rows(layer: FeedbackLayer, x: Tensor) -> Tensor:
    """What each row of B multiplies, as (channels, kernel offsets, examples x positions): for
    a convolution its input (``x`` already padded as its kernel maps read it) seen through each
    kernel offset at every output position, gathered by strided slices of the channel-major
    input (one copy, where unfolding costs several); for a linear layer its inputs at one
    offset."""
    if not isinstance(layer, FeedbackConv2d):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(1)
    ph, pw = layer._int_padding()
    x = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    x = x.transpose(0, 1)  # (C, N, H, W): stacked, the slices are (C, K, rows) at once
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    rows = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    cols = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    views = [x[:, :, i * dh:i * dh + sh * (rows - 1) + 1:sh,
               j * dw:j * dw + sw * (cols - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    return torch.stack(views, dim=1).reshape(x.shape[0], kh * kw, -1)


def kronecker_factors(layer: FeedbackLayer, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """(A, S, rows): Sigma's partial traces, A = sum over offsets (C x C), S = sum over
    channels (k^2 x k^2), both / batch size, in float64, so that tr A = tr S = tr Sigma and
    Sigma ~ A kron S / tr Sigma (exact for a linear layer, and whenever the patches'
    correlation across channels does not depend on the offsets). Two matrix products in x's
    dtype, on one copy of the patches: about one convolution's arithmetic."""
    patches = patch_rows(layer, x)  # (C, K, R)
    channels, _, rows = patches.shape
    flat = patches.reshape(channels, -1)
    n = x.shape[0]
    channel_moment = (flat @ flat.t()).double() / n
    offset_moment = torch.bmm(patches, patches.transpose(1, 2)).sum(0).double() / n
    return channel_moment, offset_moment, rows


def shrinkage(fan_in: int, samples: int) -> float:
    """eps / Sigma's mean eigenvalue: SHRINKAGE, or more when the estimate rests on few
    samples (a sample covariance's bulk spreads as (1 +- sqrt(d/n))^2 for d inputs, n rows),
    so that P does not magnify the directions a small batch happened to under-sample."""
    return max(SHRINKAGE, fan_in / max(samples, 1))


class CovariancePreconditioner(nn.Module):
    """P = (A kron S / tr + eps I)^-1 for one layer, from the eigenvectors of A and S: P
    commutes with the Kronecker estimate of Sigma, so its eigenvectors stay the modes and only
    their rates change, each by 1 / (lambda + eps). Its buffers hold the last estimate."""

    def __init__(self, layer: FeedbackLayer) -> None:
        super().__init__()
        if getattr(layer, "groups", 1) != 1:
            raise ValueError("the covariance preconditioner needs an ungrouped layer")
        channels = layer.weight.shape[1]
        offsets = layer.weight[0, 0].numel()
        device, dtype = layer.weight.device, layer.weight.dtype
        self.register_buffer("channel_basis", torch.eye(channels, device=device, dtype=dtype))
        self.register_buffer("offset_basis", torch.eye(offsets, device=device, dtype=dtype))
        self.register_buffer("gains", torch.ones(channels, offsets, device=device, dtype=dtype))

    def refresh(self, layer: FeedbackLayer, x: Tensor) -> None:
        """P from ``x`` (the layer's padded input): the eigendecompositions of A and S,
        estimated from as many of its examples as give ROWS_PER_INPUT rows per input (a
        wide map's first few: its many positions already pin the bulk to about
        (1 +- 1/8)^2, and a copy of all its patches would cost several convolutions)."""
        positions = max(1, patch_rows(layer, x[:1]).shape[-1])
        wanted = -(-ROWS_PER_INPUT * layer.weight[0].numel() // positions)
        channels, offsets, samples = kronecker_factors(layer, x[:max(1, wanted)])
        a, channel_basis = torch.linalg.eigh(channels)
        s, offset_basis = torch.linalg.eigh(offsets)
        total = float(torch.trace(channels))
        if total <= 0:
            self.gains.fill_(1.0)  # no input at all: P = I, the plain update
        else:
            values = torch.outer(a.clamp_min(0.0), s.clamp_min(0.0)) / total
            eps = shrinkage(values.numel(), samples) * total / values.numel()
            self.gains.copy_(1.0 / (values + eps))
        self.channel_basis.copy_(channel_basis)
        self.offset_basis.copy_(offset_basis)

    def apply(self, grad: Tensor, power: float = 1.0) -> Tensor:
        """``grad`` (B's shape) times P^power on the right, row by row: into the eigenbasis
        of A kron S, scaled by gains^power, and back."""
        g = grad.reshape(grad.shape[0], *self.gains.shape)
        rotated = self.channel_basis.t() @ g @ self.offset_basis * self.gains.pow(power)
        back = self.channel_basis @ rotated @ self.offset_basis.t()
        return back.reshape(grad.shape)


Factory = Callable[[FeedbackLayer], nn.Module]
PRECONDITIONERS: Registry[Factory | None] = Registry("feedback preconditioner")
PRECONDITIONERS.register("none", None)
PRECONDITIONERS.register("covariance", CovariancePreconditioner)


def preconditioner_of(layer: FeedbackLayer) -> CovariancePreconditioner | None:
    return getattr(layer, ATTRIBUTE, None)


def preconditioner_name(layer: FeedbackLayer) -> str:
    """The registered name of the layer's preconditioner ('none' without one)."""
    pre = preconditioner_of(layer)
    if pre is None:
        return "none"
    return next(name for name in PRECONDITIONERS.names()
                if PRECONDITIONERS.get(name) is type(pre))


def attach(model: nn.Module, name: str) -> int:
    """Give every learned B whose regularizer has a sparse term the preconditioner ``name``;
    the number of layers that got one (0 for ``none``, or a rule without a sparse term)."""
    factory = PRECONDITIONERS.get(name)
    if factory is None:
        return 0
    count = 0
    for _, layer in feedback_layers(model):
        if layer.rule.rule.learns_feedback and layer.rule.active_coefficients.get("sparse"):
            setattr(layer, ATTRIBUTE, factory(layer))
            count += 1
    return count


def precondition(layer: FeedbackLayer, x: Tensor | None, grad: Tensor) -> Tensor:
    """B's gradient times P, P estimated from this step's regularizer input ``x``; ``grad``
    as it is where the layer has no preconditioner."""
    pre = preconditioner_of(layer)
    if pre is None or x is None:
        return grad
    pre.refresh(layer, x)
    return pre.apply(grad)


def preconditioned_hvp(layer: FeedbackLayer, x: Tensor | None, hvp: Hvp) -> Hvp:
    """v -> P^1/2 H P^1/2 v, P estimated from ``x`` as a step on ``x`` would: the curvature
    a preconditioned step sees, symmetric, with the eigenvalues of H P; ``hvp`` itself where
    the layer has no preconditioner."""
    pre = preconditioner_of(layer)
    if pre is None or x is None:
        return hvp
    pre.refresh(layer, x)

    def preconditioned(vector: list[Tensor]) -> list[Tensor]:
        (v,) = vector
        (hv,) = hvp([pre.apply(v, 0.5)])
        return [pre.apply(hv, 0.5)]

    return preconditioned
