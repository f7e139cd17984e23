"""Curvature from Hessian-vector products: a Lanczos core, the top eigenvalue, spectra; and
the task loss's Hessian.

Only products ``v -> H v`` are needed, never H itself. ``lanczos`` runs the three-term
recurrence from a start vector and returns the tridiagonal T_k; its eigenvalues (Ritz values)
approximate H's extreme eigenvalues from within, and its eigenvectors give a Gauss quadrature
of the start vector's spectral measure: for any function f,

    <v, f(H) v> / <v, v>  ~  sum_j w_j f(theta_j),

exactly for polynomials of degree < 2k. A vector here is a list of tensors (one per
parameter), so the same core serves two different curvatures:

- the *regularizer curvature*, the Hessian of one layer's R in its B, for B's plan
  (``trainer.dynamics.measure``): the largest Ritz value for the stability limit, the
  quadrature from W for how much of W's direction B has recovered after a run;
- the *loss curvature*, the Hessian of the true task loss in the parameters it trains (B
  excluded), for ``--curvature`` (``task_hessian`` and what follows, used by
  ``trainer.generalization``): its top eigenvalue and Hutchinson trace, and the top
  eigenvalue of a block a model declares (``curvature_groups``: a rate RNN's W_rec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Vector = list[Tensor]
HVP = Callable[[Vector], Vector]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """<a, b> in the tensors' own precision (a BLAS dot; copying a ResNet's widest layer to
    float64 at every step would cost more than its Hessian-vector product)."""
    return float(sum(torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)))


def _axpy(alpha: float, x: Sequence[Tensor], y: Sequence[Tensor]) -> Vector:
    return [yi + alpha * xi for xi, yi in zip(x, y)]


def _scale(alpha: float, x: Sequence[Tensor]) -> Vector:
    return [alpha * xi for xi in x]


@dataclass(frozen=True)
class Tridiagonal:
    """T_k of a Lanczos run from a start vector of squared norm ``start_norm2``."""

    alphas: np.ndarray  # diagonal, length k
    betas: np.ndarray  # off-diagonal, length k - 1
    start_norm2: float

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """(Ritz values, quadrature weights): the nodes and weights of the start vector's
        spectral measure (weights sum to 1)."""
        matrix = np.diag(self.alphas) + np.diag(self.betas, 1) + np.diag(self.betas, -1)
        values, vectors = np.linalg.eigh(matrix)
        return values, vectors[0] ** 2

    def largest(self) -> float:
        return float(self.ritz()[0].max())

    def smallest(self) -> float:
        return float(self.ritz()[0].min())


def lanczos(hvp: HVP, start: Sequence[Tensor], steps: int, tol: float = 1e-10) -> Tridiagonal:
    """``steps`` Lanczos steps from ``start`` (fewer when the Krylov space closes, as for
    H = c I, where one step is exact). Each step reorthogonalizes against the previous two
    vectors only; a few ghost Ritz values do not hurt the extremes or the quadrature."""
    if steps < 1:
        raise ValueError(f"Lanczos needs at least one step, got {steps}")
    norm2 = _dot(start, start)
    if not math.isfinite(norm2) or norm2 == 0:
        raise ValueError("Lanczos start vector is zero or not finite")
    q = _scale(1 / math.sqrt(norm2), start)
    q_prev: Vector | None = None
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for _ in range(steps):
        w = [t.detach() for t in hvp(q)]
        alpha = _dot(q, w)
        if not math.isfinite(alpha):
            raise ArithmeticError("the Hessian-vector product is not finite")
        w = _axpy(-alpha, q, w)
        if q_prev is not None:
            w = _axpy(-beta, q_prev, w)
        for basis in (q, q_prev) if q_prev is not None else (q,):  # local reorthogonalization
            w = _axpy(-_dot(basis, w), basis, w)
        alphas.append(alpha)
        beta_next = math.sqrt(max(_dot(w, w), 0.0))
        if beta_next <= tol * max(1.0, abs(alpha)):
            break  # the Krylov space is invariant: T is exact
        betas.append(beta_next)
        q_prev, q, beta = q, _scale(1 / beta_next, w), beta_next
    return Tridiagonal(np.asarray(alphas), np.asarray(betas[:len(alphas) - 1]), norm2)


def random_like(like: Sequence[Tensor], seed: int) -> Vector:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in like]


def top_eigenvalue(hvp: HVP, like: Sequence[Tensor], *, steps: int = 20, seed: int = 0) -> float:
    """The largest (algebraic) eigenvalue of H, from a random start: Lanczos converges to both
    ends of the spectrum, so a negative eigenvalue of larger magnitude cannot mask it."""
    return lanczos(hvp, random_like(like, seed), steps).largest()


def hutchinson_trace(hvp: HVP, like: Sequence[Tensor], *, samples: int = 10,
                     seed: int = 0) -> float:
    """tr(H) ~ mean of z'Hz over Rademacher vectors z."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        z = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t.dtype).to(t.device)
             for t in like]
        total += _dot(z, hvp(z))
    return total / samples


# --- the loss curvature: the true task loss of a (converted) model ----------------------------

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def exact_backward(model: nn.Module) -> Iterator[nn.Module]:
    """The model with every feedback layer running its plain op and every recurrent model
    carrying its whole state through time (BPTT, whatever a temporal rule cut): the same
    forward, but autograd then differentiates the true loss (through W, never B), twice if
    asked."""
    from trainer.conversion import feedback_layers
    from trainer.recurrent import TimeCarry

    layers = [layer for _, layer in feedback_layers(model)]
    before = [layer.exact_backward for layer in layers]
    carriers = [m for m in model.modules() if isinstance(getattr(m, "through_time", None),
                                                          TimeCarry)]
    carries = [m.through_time for m in carriers]
    for layer in layers:
        layer.exact_backward = True
    for module in carriers:
        module.through_time = TimeCarry()
    try:
        yield model
    finally:
        for layer, flag in zip(layers, before):
            layer.exact_backward = flag
        for module, carry in zip(carriers, carries):
            module.through_time = carry


def task_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the task loss trains: every parameter that requires a gradient but B."""
    from trainer.conversion import feedback_layers

    feedback = {id(layer.weight_backward) for _, layer in feedback_layers(model)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in feedback]


ALL = "all"  # the group of every parameter the task loss trains


def curvature_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameter groups whose Hessian block ``--curvature`` measures: ``all`` (what the
    task loss trains) and the groups a model declares by a ``curvature_groups()`` method of
    its own (the rate RNN: ``recurrent``, W_rec alone, as Liu et al. measure it)."""
    groups = {ALL: task_parameters(model)}
    for module in model.modules():
        declared = getattr(module, "curvature_groups", None)
        if callable(declared):
            groups.update(declared())
    return groups


def task_loss_hvps(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]],
                   loss_fn: LossFn = F.cross_entropy,
                   groups: Mapping[str, Sequence[nn.Parameter]] | None = None
                   ) -> dict[str, HVP]:
    """v -> H v for the mean task loss over ``batches`` (exact double backward, feedback layers
    in exact mode), one per group: the Hessian's diagonal block of that group's parameters
    (default: the whole Hessian, ``all``). The forward and the first backward run once, here,
    with their graph kept: each product is then one double backward through it, about 30 %
    cheaper than redoing all three, and every block shares them. The graph's memory is held as
    long as the returned functions live."""
    params = task_parameters(model)
    position = {id(p): i for i, p in enumerate(params)}
    groups = {ALL: params} if groups is None else groups
    for name, group in groups.items():
        if not group or any(id(p) not in position for p in group):
            raise ValueError(f"curvature group {name!r} is empty or holds a parameter the "
                             "task loss does not train")
    total = sum(len(y) for _, y in batches)
    with exact_backward(model):
        loss = sum(loss_fn(model(x), y) * (len(y) / total) for x, y in batches)
        grads = torch.autograd.grad(loss, params, create_graph=True)

    def block(group: Sequence[nn.Parameter]) -> HVP:
        first = [grads[position[id(p)]] for p in group]

        def hvp(v: Vector) -> Vector:
            products = torch.autograd.grad(first, list(group), grad_outputs=v,
                                           retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if h is None else h.detach()
                    for h, p in zip(products, group)]

        return hvp

    return {name: block(group) for name, group in groups.items()}


def task_loss_hvp(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]],
                  loss_fn: LossFn = F.cross_entropy) -> HVP:
    """v -> H v of the whole Hessian (``task_loss_hvps``' ``all``)."""
    return task_loss_hvps(model, batches, loss_fn)[ALL]


@contextmanager
def task_hessian_blocks(model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy,
                        groups: Mapping[str, Sequence[nn.Parameter]] | None = None
                        ) -> Iterator[dict[str, HVP]]:
    """The loss curvature: the true task loss's Hessian-vector products over ``batches``, one
    per group (``task_loss_hvps``), with the model in eval mode (BatchNorm on its running
    statistics) and its mode restored afterwards. One graph serves every product made inside
    the block (the top eigenvalues and the trace alike)."""
    device = next(model.parameters()).device
    prepared = [(x.to(device), y.to(device)) for x, y in batches]
    if not prepared:
        raise ValueError("the curvature needs at least one batch")
    was_training = model.training
    model.eval()
    try:
        yield task_loss_hvps(model, prepared, loss_fn, groups)
    finally:
        model.train(was_training)


@contextmanager
def task_hessian(model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy
                 ) -> Iterator[HVP]:
    """``task_hessian_blocks``' whole Hessian."""
    with task_hessian_blocks(model, batches, loss_fn) as blocks:
        yield blocks[ALL]


def top_hessian_eigenvalue(model: nn.Module, batches: Batches,
                           loss_fn: LossFn = F.cross_entropy, *, steps: int = 20,
                           seed: int = 0, group: str = ALL) -> float:
    """The loss curvature's top: the largest (algebraic) eigenvalue of the Hessian of the true
    task loss (mean over ``batches``) with respect to the parameters the task loss trains (B
    excluded), or to one ``group`` of them (``curvature_groups``), with the model in eval mode
    (BatchNorm on its running statistics). It does not depend on the rule: B never enters
    the true loss, and a recurrent model carries its state as BPTT does."""
    groups = curvature_groups(model)
    if group not in groups:
        raise ValueError(f"this model has no curvature group {group!r} (it has "
                         f"{', '.join(groups)})")
    with task_hessian_blocks(model, batches, loss_fn, {group: groups[group]}) as blocks:
        return top_eigenvalue(blocks[group], groups[group], steps=steps, seed=seed)


def task_hessian_trace(model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy,
                       *, samples: int = 10, seed: int = 0) -> float:
    """Hutchinson's estimate of the same Hessian's trace."""
    with task_hessian(model, batches, loss_fn) as hvp:
        return hutchinson_trace(hvp, task_parameters(model), samples=samples, seed=seed)
