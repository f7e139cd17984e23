"""The optimizer on one mode of a quadratic: stability limit, contraction, relaxation times.

Every rule's R_l is quadratic in B, so B moves like the optimizer on a quadratic with a
constant Hessian H (given W and the input statistics). A mode of H with eigenvalue lambda (the
*regularizer curvature* of that mode), stepped with h = lr_B * lambda (the *step curvature*:
the curvature in units of the step, which changes with the schedule), contracts per step by
rho(h), the spectral radius of the optimizer's 2x2 iteration (``contraction``); B's error in
that mode after a run is the product of the per-step factors, e^-n with n = sum_t -ln rho(h_t):
n *relaxation times*. For plain SGD rho = |1 - h|; with momentum mu and small h,
-ln rho ~ h / (1 - mu).

The stability limit is the largest h at which the iteration still contracts: 2 for SGD,
2(1+mu) for heavy ball, 2(1+mu)/(1+2mu) for Nesterov, which the trainer uses.

Nothing here knows about layers or models: only eigenvalues, learning rates and the schedule's
factors, as numpy arrays.
"""

from __future__ import annotations

import numpy as np

_BINS = 256
_START_STEPS = 100  # steps simulated exactly when momentum starts from rest
PRECISION_FLOOR = 24 * np.log(2)  # -ln of float32's relative precision: B gets no closer


def stability_limit(momentum: float, nesterov: bool) -> float:
    """The largest h = lr * lambda at which SGD still contracts a mode of curvature lambda.

    Nesterov (PyTorch's form) on g = lambda p: v' = mu v + g, p' = p - lr (g + mu v'), so
    [p', v'] = M [p, v] with characteristic polynomial z^2 - (1+mu)(1-h) z + mu(1-h). Jury's
    conditions give |z| < 1 iff 0 < h < 2(1+mu)/(1+2mu). Heavy ball: z^2 - (1+mu-h) z + mu,
    stable iff h < 2(1+mu). Plain SGD (mu = 0): h < 2 in both forms.
    """
    if nesterov and momentum > 0:
        return 2 * (1 + momentum) / (1 + 2 * momentum)
    return 2 * (1 + momentum)


def _characteristic(h: np.ndarray, momentum: float, nesterov: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) of the iteration's characteristic polynomial z^2 + b z + c."""
    mu = momentum
    if nesterov and mu > 0:
        return -(1 + mu) * (1 - h), mu * (1 - h)
    return -(1 + mu - h), np.full_like(h, mu)


def contraction(h: np.ndarray, momentum: float, nesterov: bool) -> np.ndarray:
    """Spectral radius per step of the optimizer's iteration on modes with h = lr * lambda."""
    h = np.asarray(h, dtype=np.float64)
    b, c = _characteristic(h, momentum, nesterov)
    root = np.sqrt((b * b - 4 * c).astype(np.complex128))
    return np.maximum(np.abs((-b + root) / 2), np.abs((-b - root) / 2))


def _binned(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) summarizing a long schedule in at most _BINS groups of equal size."""
    if len(factors) <= _BINS:
        return factors, np.ones_like(factors)
    starts = np.linspace(0, len(factors), _BINS, endpoint=False).astype(np.int64)
    counts = np.diff(np.append(starts, len(factors))).astype(np.float64)
    return np.add.reduceat(np.sort(factors), starts) / counts, counts


def _from_rest(h: np.ndarray, momentum: float, nesterov: bool) -> np.ndarray:
    """-ln |p_T| per mode after the steps h[:, t], starting at p = 1 with no velocity.

    The optimizer's own recurrence, in units of u = lr * v: u' = mu u + h p, then
    p' = p - (h p + mu u') (Nesterov) or p' = p - u' (heavy ball). While the velocity builds
    up, over about 1 / (1 - mu) steps, a slow mode relaxes less than the steady rate says.
    """
    p = np.ones(h.shape[0])
    u = np.zeros(h.shape[0])
    for t in range(h.shape[1]):
        p, u = _optimizer_step(p, u, h[:, t], momentum, nesterov)
    return -np.log(np.maximum(np.abs(p), 1e-300))


def _optimizer_step(p: np.ndarray, u: np.ndarray, h: np.ndarray | float, momentum: float,
                    nesterov: bool) -> tuple[np.ndarray, np.ndarray]:
    """One step of ``_from_rest``'s recurrence: (p, u) after a step at curvature h."""
    with np.errstate(over="ignore", invalid="ignore"):
        u = momentum * u + h * p
        return (p - (h * p + momentum * u) if nesterov else p - u), u


def _steady(eigenvalues: np.ndarray, lr_b: float, factors: np.ndarray, momentum: float,
            nesterov: bool) -> np.ndarray:
    """sum_t -ln rho(h_t) per mode: the decay of the mode's envelope."""
    if not len(factors):
        return np.zeros(len(eigenvalues))
    values, counts = _binned(factors)
    h = lr_b * np.outer(eigenvalues, values)
    with np.errstate(divide="ignore"):
        per_step = -np.log(np.maximum(contraction(h, momentum, nesterov), 1e-300))
    return (per_step * counts).sum(axis=1)


def relaxations(eigenvalues: np.ndarray, lr_b: float, factors: np.ndarray, momentum: float,
                nesterov: bool, from_rest: bool = False) -> np.ndarray:
    """n per mode (``eigenvalues``: each mode's regularizer curvature lambda) over the steps
    ``factors`` (lr_B,t = lr_b * factor_t, so h_t = lr_b * factor_t * lambda); negative if
    unstable.

    ``from_rest``: the run's first steps, where momentum starts at zero, are simulated for
    the modes that stay overdamped through them (the slow ones, whose start-up lag matters);
    a mode that oscillates is measured by its envelope throughout, since the phase of an
    oscillation at one step says nothing of how far it has decayed.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    n = _steady(eigenvalues, lr_b, factors, momentum, nesterov)
    if from_rest and momentum > 0 and len(factors):
        start, rest = factors[:_START_STEPS], factors[_START_STEPS:]
        h = lr_b * np.outer(eigenvalues, start)
        b, c = _characteristic(h, momentum, nesterov)
        slow = ((b * b - 4 * c >= 0) & (h < 1)).all(axis=1)
        if slow.any():
            n[slow] = (_from_rest(h[slow], momentum, nesterov)
                       + _steady(eigenvalues[slow], lr_b, rest, momentum, nesterov))
    return n


def effective_relaxations_many(nodes: np.ndarray, weights: np.ndarray, lr_bs: np.ndarray,
                               factors: np.ndarray, momentum: float, nesterov: bool,
                               from_rest: bool = False) -> np.ndarray:
    """n = -ln(R)/2 for each of several B learning rates, R the residual of W's direction:
    sum_j w_j e^{-2 n_j} over the spectral measure (nodes lambda_j, weights w_j) of R's
    Hessian seen from W (one vectorized pass over all of them)."""
    lr_bs = np.atleast_1d(np.asarray(lr_bs, dtype=np.float64))
    if len(factors) == 0:
        return np.zeros(len(lr_bs))
    n = relaxations(np.outer(lr_bs, nodes).ravel(), 1.0, factors, momentum, nesterov,
                    from_rest).reshape(len(lr_bs), len(nodes))
    with np.errstate(over="ignore", divide="ignore"):
        residual = (weights * np.exp(-2 * n)).sum(axis=1)
        out = -0.5 * np.log(residual)
    out[residual <= 0] = n.min(axis=1)[residual <= 0]
    return out


def effective_relaxations(nodes: np.ndarray, weights: np.ndarray, lr_b: float,
                          factors: np.ndarray, momentum: float, nesterov: bool,
                          from_rest: bool = False) -> float:
    """n = -ln(R)/2 for one B learning rate (see ``effective_relaxations_many``)."""
    return float(effective_relaxations_many(nodes, weights, np.array([lr_b]), factors,
                                            momentum, nesterov, from_rest)[0])


def warmup_relaxations(nodes: np.ndarray, weights: np.ndarray, lr_b: float, most: int,
                       momentum: float, nesterov: bool) -> np.ndarray:
    """n = -ln(R)/2 after each of 1..``most`` steps at the constant rate ``lr_b``, from rest
    (B's warm-up: W frozen, momentum starting at zero), simulated exactly per mode.

    A mode's n is capped at ``PRECISION_FLOOR``: B is float32, so it cannot come closer to
    its fixed point than that, though the iteration may reach it exactly (Nesterov at
    h = lr_b * lambda = 1 does, in two steps)."""
    h = lr_b * np.asarray(nodes, dtype=np.float64)
    p, u = np.ones(len(h)), np.zeros(len(h))
    out = np.empty(most)
    for k in range(most):  # one pass: the run after k + 1 steps is the run after k, one more
        p, u = _optimizer_step(p, u, h, momentum, nesterov)
        n = np.minimum(-np.log(np.maximum(np.abs(p), 1e-300)), PRECISION_FLOOR)
        out[k] = -0.5 * np.log((weights * np.exp(-2 * n)).sum())
    return out
