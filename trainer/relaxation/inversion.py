"""One layer's inversion loop (Podlaski & Machens 2020), without the model around it: the
joint matrix [[-I, B], [W, -alpha I]], its spectrum and the Euler map's (closed forms from the
eigenvalues of the smaller of WB and BW), the Euler step that contracts fastest, descent of B
on the smoothed spectral abscissa, the simulated state and the steady state. The mechanism
(``trainer.mechanisms.dynamic_inversion``) runs it layer by layer down an MLP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# SSA descent on B (the reference code's SSA_opt): stop once the loop's spectral abscissa is
# below -MARGIN, with the gradient taken at SHIFT above the abscissa (the smoothed abscissa of
# some epsilon; at the abscissa itself the Lyapunov equations are singular).
SSA_MARGIN = 0.01
SSA_SHIFT = 0.1
SSA_LR = 0.5
SSA_MAX_STEPS = 200
SSA_MIN_LR = 1e-4
# The Euler step search: a geometric grid over [dt * STEP_FLOOR, dt], then a linear one between
# the best coarse step's neighbours. One evaluation is a few vector operations over the
# eigenvalues mu, so the grids cost nothing next to the eigendecomposition.
STEP_FLOOR = 1e-4
STEP_COARSE = 65
STEP_FINE = 33

def joint_matrix(W: Tensor, B: Tensor, alpha: float) -> Tensor:
    """[[-I, B], [W, -alpha I]]: the loop's dynamics on (r, r_up)."""
    d_out, d_in = W.shape
    top = torch.cat([-torch.eye(d_in, dtype=W.dtype, device=W.device), B], 1)
    bottom = torch.cat([W, -alpha * torch.eye(d_out, dtype=W.dtype, device=W.device)], 1)
    return torch.cat([top, bottom], 0)


@dataclass(frozen=True)
class LoopSpectrum:
    """The eigenvalues mu of the smaller of WB and BW, from which the loop's continuous and
    Euler spectra follow in closed form.

    An eigenvalue lam of the joint matrix with eigenvector (x, y) has x = B y / (lam + 1) and
    W B y = (lam + 1)(lam + alpha) y: each mu gives the two roots of
    lam^2 + (1 + alpha) lam + alpha - mu = 0; the others are -1 (x in W's null space, when
    d_in > d_out) or -alpha (y in B's, when d_out > d_in). The Euler map (upper units first)
    likewise has, per mu, the roots of (z - 1 + dt alpha)(z - 1 + dt) = dt^2 mu z, and
    1 - dt or 1 - dt alpha for the others."""

    mu: Tensor
    d_in: int
    d_out: int

    @classmethod
    def of(cls, W: Tensor, B: Tensor) -> "LoopSpectrum":
        W, B = W.double(), B.double()
        d_out, d_in = W.shape
        small = W @ B if d_out <= d_in else B @ W
        return cls(torch.linalg.eigvals(small), d_in, d_out)

    def abscissa(self, alpha: float) -> float:
        """The largest real part of the joint matrix's eigenvalues: < 0 is a stable loop."""
        root = torch.sqrt((1 - alpha) ** 2 + 4 * self.mu)  # principal: Re >= 0, the larger
        largest = float(((-(1 + alpha) + root) / 2).real.max())
        return max([largest, *self._others(-1.0, -alpha)])

    def euler_radius(self, alpha: float, dt: float) -> float:
        """The spectral radius of one Euler step: < 1 is a simulation that converges."""
        return float(self.euler_radii(alpha, torch.tensor([dt], dtype=torch.float64))[0])

    def euler_radii(self, alpha: float, dts: Tensor) -> Tensor:
        """The Euler map's spectral radius at each step in ``dts`` (one vector operation)."""
        dt = dts.double()[:, None]
        b = 2 - dt * alpha - dt + dt * dt * self.mu[None, :]
        c = (1 - dt * alpha) * (1 - dt)
        root = torch.sqrt(b * b - 4 * c)
        radii = torch.maximum((b + root).abs(), (b - root).abs()).amax(1) / 2
        for other in self._others((1 - dts.double()).abs(), (1 - dts.double() * alpha).abs()):
            radii = torch.maximum(radii, other)
        return radii

    def fastest_step(self, alpha: float, dt_max: float) -> tuple[float, float]:
        """The Euler step in (0, ``dt_max``] whose map has the smallest spectral radius, and
        that radius: after T steps the error left is about radius^T, so for a fixed T this is
        the step that settles furthest. Small steps all contract slowly (radius -> 1 as
        dt -> 0) and too large ones not at all, so the search is a geometric grid, refined
        between the best point's neighbours; ties go to the larger step."""
        coarse = dt_max * torch.logspace(math.log10(STEP_FLOOR), 0, STEP_COARSE,
                                         dtype=torch.float64)
        best = _last_argmin(self.euler_radii(alpha, coarse))
        low, high = coarse[max(best - 1, 0)], coarse[min(best + 1, STEP_COARSE - 1)]
        steps = torch.cat([coarse[best:best + 1], torch.linspace(low, high, STEP_FINE,
                                                                dtype=torch.float64)])
        radii = self.euler_radii(alpha, steps)
        chosen = _last_argmin(radii)
        return float(steps[chosen]), float(radii[chosen])

    def _others(self, lower: Any, upper: Any) -> list[Any]:
        return ([lower] if self.d_in > self.d_out else []) + (
            [upper] if self.d_out > self.d_in else [])


def _last_argmin(values: Tensor) -> int:
    """The index of the smallest value, the last one among equals."""
    return int(values.numel() - 1 - torch.argmin(values.flip(0)))


def spectral_abscissa(W: Tensor, B: Tensor, alpha: float) -> float:
    """The largest real part of [[-I, B], [W, -alpha I]]'s eigenvalues."""
    return LoopSpectrum.of(W, B).abscissa(alpha)


def surely_stable(W: Tensor, B: Tensor, alpha: float) -> bool:
    """A cheap sufficient test: the joint matrix's symmetric part is negative definite, i.e.
    ||B + W^T||_2^2 < 4 alpha (its Schur complement), which holds for B = -W^T and alpha > 0
    and while B stays near -W^T."""
    if alpha <= 0:
        return False
    gap = float(torch.linalg.matrix_norm((B + W.t()).double(), ord=2))
    return gap * gap < 4 * alpha


def ssa_gradient(M: Tensor, shift: float) -> Tensor:
    """The gradient of the smoothed spectral abscissa with respect to M, at s = the abscissa +
    ``shift``: QP / tr(QP), where P and Q solve the Lyapunov equations
    (M - sI) P + P (M - sI)^T = I and (M - sI)^T Q + Q (M - sI) = I (Vanbiervliet et al.
    2009). Solved in M's eigenbasis, M = V diag(lam) V^-1: with A = M - sI,
    P = V [(V^-1 V^-T) / (lam_i + lam_j - 2s)] V^T and Q = V^-T [(V^T V) / (...)] V^-1."""
    lam, V = torch.linalg.eig(M.double())
    s = float(lam.real.max()) + shift
    shifted = lam - s
    pair = shifted[:, None] + shifted[None, :]
    V_inv = torch.linalg.inv(V)
    Y = (V_inv @ V_inv.t()) / pair
    Z = (V.t() @ V) / pair
    QP = (V_inv.t() @ Z @ Y @ V.t()).real
    return QP / torch.trace(QP)


def stabilize(W: Tensor, B: Tensor, alpha: float, lr: float = SSA_LR,
              max_steps: int = SSA_MAX_STEPS) -> tuple[Tensor, float, int]:
    """B descended on the smoothed spectral abscissa of the joint matrix until the abscissa
    is below -SSA_MARGIN; returns (B, the abscissa, the gradients taken). Only B moves, as in
    the reference code. Its fixed rate is replaced by a step that doubles after a step that
    lowered the abscissa and halves until one does: each gradient costs an eigendecomposition
    of the whole (d_in + d_out)-square matrix, each trial step only the small one."""
    d_in = W.shape[1]
    W64, B64 = W.double(), B.double().clone()
    abscissa = spectral_abscissa(W64, B64, alpha)
    steps = 0
    while abscissa >= -SSA_MARGIN and steps < max_steps:
        direction = ssa_gradient(joint_matrix(W64, B64, alpha), SSA_SHIFT)[:d_in, d_in:]
        steps += 1
        while lr >= SSA_MIN_LR:
            trial = B64 - lr * direction
            lowered = spectral_abscissa(W64, trial, alpha)
            if lowered < abscissa:
                B64, abscissa, lr = trial, lowered, 2 * lr
                break
            lr /= 2
        else:
            break  # no step along the gradient lowers the abscissa
    return B64.to(B.dtype), abscissa, steps


def simulate(W: Tensor, B: Tensor, alpha: float, delta: Tensor, dt: float, steps: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """The loop by Euler from r = r_up = 0, a row per example (delta is N x d_out); returns
    (r after ``steps`` steps (N x d_in), the squared norm of the last step's change of r, the
    squared norm of r)."""
    r = delta.new_zeros(delta.shape[0], W.shape[1])
    r_up = torch.zeros_like(delta)
    W_t, B_t = W.t(), B.t()
    change = delta.new_zeros(())
    for step in range(steps):
        r_up = r_up + dt * (-alpha * r_up + r @ W_t - delta)
        move = dt * (r_up @ B_t - r)
        r = r + move
        if step == steps - 1:
            change = move.square().sum()
    return r, change, r.square().sum()


def steady_state(W: Tensor, B: Tensor, alpha: float, delta: Tensor) -> Tensor:
    """The loop's steady state r* = B (W B - alpha I)^-1 delta by least squares, on the
    smaller system as the reference code: (W B - alpha I) z = delta, r = B z when d_out <= d_in,
    else (B W - alpha I) r = B delta (the same r where either is solvable)."""
    d_out, d_in = W.shape
    if d_out <= d_in:
        system = W @ B - alpha * torch.eye(d_out, dtype=W.dtype, device=W.device)
        z = torch.linalg.lstsq(system, delta.t()).solution
        return (B @ z).t()
    system = B @ W - alpha * torch.eye(d_in, dtype=W.dtype, device=W.device)
    return torch.linalg.lstsq(system, (delta @ B.t()).t()).solution.t()
