"""Test oracle: the five regularization primitives R(B), written exactly as defined
(docs/design.md §2).

Every function here is the *definition*: autograd through it gives the true dR/dB, which is what
the tests compare both the closed forms and the fused training-time computation
(``trainer.regularizer``) against. It lives with the tests because nothing in the package runs
it: training uses the fused closed forms. ``f(x, K)`` is the layer's forward map with kernel K
and ``g(r, K)`` its transposed map; x and W are detached inputs. Each is a mean over the batch of
a sum over all other axes, with no 1/2 factors.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

KernelMap = Callable[[Tensor, Tensor], Tensor]


def decay(B: Tensor) -> Tensor:
    """||B||^2: shrinks B; the only term that keeps a learned B bounded on its own."""
    return (B * B).sum()


def amp(x: Tensor, W: Tensor, B: Tensor, f: KernelMap) -> Tensor:
    """-mean <f(x, W), f(x, B)>: pulls B's outputs towards W's on the same input."""
    return -(f(x, W) * f(x, B)).sum() / x.shape[0]


def null(x: Tensor, W: Tensor, B: Tensor, f: KernelMap, g: KernelMap) -> Tensor:
    """mean ||g(f(x, W), B)||^2: pushes B's transpose to send W's outputs to zero."""
    return g(f(x, W), B).pow(2).sum() / x.shape[0]


def sparse(x: Tensor, B: Tensor, f: KernelMap) -> Tensor:
    """mean ||f(x, B)||^2: penalises B's response to the real activations."""
    return f(x, B).pow(2).sum() / x.shape[0]


def self_(W: Tensor, B: Tensor) -> Tensor:
    """-<W, B>: pulls B straight towards W (needs W itself: non-local)."""
    return -(W * B).sum()
