"""e-prop's online form (Bellec et al. 2020) on the rate RNN: the gradient computed forward in
time from explicit eligibility traces, as a neuron could, instead of by a backward pass.

For v_t = d v_{t-1} + (1-d)(W_in x_t + W z_{t-1} + b), z_t = ReLU(v_t), a synapse j <- i keeps

    eps_{ji,t} = d eps_{ji,t-1} + (1-d) z_{i,t-1}      (x_{i,t} for W_in, 1 for b)
    e_{ji,t}   = f'(v_{j,t}) eps_{ji,t}                 (the eligibility trace)

and, with the learning signal L_t = (dL/dy_t) B (B = W_out for symmetric e-prop, or the
readout's fixed random B; y_t the readout at step t), its gradient is sum_t L_{j,t} e_{ji,t}.
The readout gets its ordinary gradient sum_t (dL/dy_t)^T z_t. eps depends on the presynaptic
side only in this model, but e is formed per synapse, as the rule states it.

This is the gradient the training form (``trainer.temporal.carry.LeakOnly``: BPTT with z_{t-1}
detached in the recurrent input) gives; the tests hold the two against each other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.recurrent import RateRNN, as_sequence


def _trace(eps: Tensor, drive: Tensor, d: float) -> Tensor:
    """eps_t = d eps_{t-1} + (1-d) drive (per sample, presynaptic)."""
    return d * eps + (1.0 - d) * drive


@torch.no_grad()
def online_gradients(model: RateRNN, x: Tensor, output_grad: Tensor,
                     feedback: Tensor | None = None) -> dict[str, Tensor]:
    """The e-prop gradient of every parameter of ``model`` (named as ``named_parameters``
    does), for the input ``x`` and ``output_grad`` = dL/dy: (N, outputs) for a model read at
    its last step, (N, T, outputs) for one read at every step. ``feedback``: the learning
    signal's B, in W_out's shape (default W_out: symmetric e-prop)."""
    seq = as_sequence(x)
    n, steps, features = seq.shape
    d, hidden = model.leak, model.hidden
    W_in, b = model.input.weight, model.input.bias
    W, W_out = model.recurrent.weight, model.readout.weight
    B = W_out if feedback is None else feedback
    if B.shape != W_out.shape:
        raise ValueError(f"feedback B must have W_out's shape {tuple(W_out.shape)}, "
                         f"got {tuple(B.shape)}")
    grads = {"input.weight": torch.zeros_like(W_in), "input.bias": torch.zeros_like(b),
             "recurrent.weight": torch.zeros_like(W),
             "readout.weight": torch.zeros_like(W_out),
             "readout.bias": torch.zeros_like(model.readout.bias)}
    eps_in, eps_rec = seq.new_zeros(n, features), seq.new_zeros(n, hidden)
    eps_b = seq.new_zeros(n, 1)
    v = z = seq.new_zeros(n, hidden)
    for t in range(steps):
        x_t, z_prev = seq[:, t], z
        eps_in = _trace(eps_in, x_t, d)
        eps_rec = _trace(eps_rec, z_prev, d)
        eps_b = _trace(eps_b, torch.ones_like(eps_b), d)
        drive = x_t @ W_in.t() + b + z_prev @ W.t()
        v = d * v + (1.0 - d) * drive
        z = torch.relu(v)
        dy = _output_grad_at(output_grad, t, steps, model.read_every)
        if dy is None:
            continue
        post = (v > 0).to(v.dtype)  # f'(v_{j,t})
        signal = dy @ B  # L_t
        for name, eps in (("input.weight", eps_in), ("recurrent.weight", eps_rec),
                          ("input.bias", eps_b)):
            e = post[:, :, None] * eps[:, None, :]  # e_{ji,t}, per sample
            grads[name] += torch.einsum("nj,nji->ji", signal, e).reshape(grads[name].shape)
        grads["readout.weight"] += dy.t() @ z
        grads["readout.bias"] += dy.sum(0)
    return grads


def _output_grad_at(output_grad: Tensor, t: int, steps: int, every: bool) -> Tensor | None:
    """dL/dy_t: row t of a per-step gradient; a last-step model's only at the last step."""
    if every:
        return output_grad[:, t]
    return output_grad if t == steps - 1 else None
