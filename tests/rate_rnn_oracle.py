"""Independent oracles for the rate RNN's temporal rules, written from the equations alone:

    v_t = d v_{t-1} + (1-d)(W_in x_t + W z_{t-1} + b),  z_t = ReLU(v_t),  y_t = W_out z_t + b_out.

``unrolled`` is the forward pass as an explicit loop over the same weights (for torch autograd
as the oracle of BPTT, and of e-prop with ``detach_recurrent``). ``backward_by_hand`` runs the
backward recursion itself, without autograd, with the recurrent error through any B (FA), cut
(e-prop), or stopped where a truncation window starts.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weights(model) -> dict[str, Tensor]:
    """The RateRNN's parameters, detached, under the equations' names."""
    return {"W_in": model.input.weight.detach(), "b": model.input.bias.detach(),
            "W": model.recurrent.weight.detach(), "W_out": model.readout.weight.detach(),
            "b_out": model.readout.bias.detach()}


def unrolled(w: dict[str, Tensor], x: Tensor, d: float, every: bool, *,
             detach_recurrent: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(output, [v_t], [z_t]) of the forward loop on (N, T, F) inputs; autograd runs through
    whichever of ``w`` require a gradient."""
    n, steps, _ = x.shape
    v = z = x.new_zeros(n, w["W"].shape[0])
    vs, zs, ys = [], [], []
    for t in range(steps):
        z_in = z.detach() if detach_recurrent else z
        v = d * v + (1 - d) * (x[:, t] @ w["W_in"].T + w["b"] + z_in @ w["W"].T)
        z = torch.relu(v)
        vs.append(v)
        zs.append(z)
        ys.append(z @ w["W_out"].T + w["b_out"])
    return (torch.stack(ys, 1) if every else ys[-1]), vs, zs


def backward_by_hand(w: dict[str, Tensor], x: Tensor, d: float, dy: Tensor, every: bool, *,
                     B_rec: Tensor | None, B_out: Tensor | None = None,
                     cuts: frozenset[int] = frozenset()) -> dict[str, Tensor]:
    """The gradients of W_in, b, W, W_out, b_out by the explicit recursion

        dL/dz_t = dL/dy_t B_out + (1-d) a_{t+1} B_rec,   a_t = dL/dv_t = f'(v_t) dL/dz_t + d a_{t+1},

    with a_{t+1}'s terms dropped where step t+1 starts a truncation window (``cuts``) and the
    recurrent term dropped everywhere when ``B_rec`` is None. B_rec = W, B_out = W_out is BPTT."""
    _, vs, zs = unrolled(w, x, d, every)
    steps = x.shape[1]
    B_out = w["W_out"] if B_out is None else B_out
    grads = {k: torch.zeros_like(p) for k, p in w.items()}
    a_next = torch.zeros_like(vs[0])
    for t in reversed(range(steps)):
        dy_t = dy[:, t] if every else (dy if t == steps - 1 else torch.zeros_like(dy))
        flows = t + 1 < steps and t + 1 not in cuts
        dz = dy_t @ B_out
        if flows and B_rec is not None:
            dz = dz + (1 - d) * a_next @ B_rec
        a = (vs[t] > 0).to(x.dtype) * dz + (d * a_next if flows else 0)
        z_prev = zs[t - 1] if t else torch.zeros_like(zs[0])
        grads["W_in"] += (1 - d) * a.T @ x[:, t]
        grads["b"] += (1 - d) * a.sum(0)
        grads["W"] += (1 - d) * a.T @ z_prev
        grads["W_out"] += dy_t.T @ zs[t]
        grads["b_out"] += dy_t.sum(0)
        a_next = a
    return grads
