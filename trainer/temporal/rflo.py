"""RFLO (Murray 2019, "Local online learning in recurrent networks with random feedback") on
the rate RNN of ``trainer.recurrent``, computed online, forward in time, as its definition.

For v_t = d v_{t-1} + (1-d)(W_in x_t + W z_{t-1} + b), z_t = ReLU(v_t), each synapse keeps a
trace of its own presynaptic activity times the postsynaptic f', low-pass filtered by the
neuron's leak (f' inside the filter, as Murray's trace; e-prop puts it after):

    p^rec_{ji,t} = d p^rec_{ji,t-1} + (1-d) f'(v_{j,t}) z_{i,t-1}
    p^in_{jk,t}  = d p^in_{jk,t-1}  + (1-d) f'(v_{j,t}) x_{k,t}
    p^b_{j,t}    = d p^b_{j,t-1}    + (1-d) f'(v_{j,t})

and the update is dW_ji = sum_t L_{j,t} p_{ji,t} with the learning signal L_t = B e_t, the
output error e_t = dL/dy_t through a fixed random B (hidden x outputs), zero at a step with no
output. No weight matrix of the network appears in the credit: it is local in space and time
but for the broadcast L_t.

Training runs the same sum in the other order (``rflo_update``): p_t is the leak-filtered sum
of past f'(v_s) pre_s, so sum_t L_t p_t = (1-d) sum_s [f'(v_s) * Lambda_s] pre_s^T with
Lambda_s = L_s + d Lambda_{s+1}, the learning signal filtered backward through the leak: one
outer product per step instead of an (N, H, H) trace update per step (6.4 times BPTT's step
on the 128-unit RNN, ``bench/step_overhead.py``). ``online_rflo_update`` is the online form
itself, the traces forward in time; the tests hold the two to each other and to a
synapse-by-synapse numpy recursion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Traces:
    """Every synapse's trace for a batch: recurrent (N, H, H), input (N, H, F), bias (N, H)."""

    recurrent: Tensor
    input: Tensor
    bias: Tensor

    @classmethod
    def zeros(cls, rows: int, hidden: int, features: int, like: Tensor) -> "Traces":
        return cls(like.new_zeros(rows, hidden, hidden), like.new_zeros(rows, hidden, features),
                   like.new_zeros(rows, hidden))

    def advance(self, leak: float, x: Tensor, v: Tensor, z_prev: Tensor) -> None:
        """One step: the postsynaptic f'(v_t) times the presynaptic activity, into the filter."""
        slope = (v > 0).to(v.dtype) * (1.0 - leak)
        self.recurrent.mul_(leak).add_(slope[:, :, None] * z_prev[:, None, :])
        self.input.mul_(leak).add_(slope[:, :, None] * x[:, None, :])
        self.bias.mul_(leak).add_(slope)


@dataclass
class RecurrentGrads:
    """The update of the input weights, the input bias b and the recurrent weights."""

    input: Tensor
    bias: Tensor
    recurrent: Tensor


def rflo_update(states: list[tuple[Tensor, Tensor, Tensor]], errors: list[Tensor | None],
                feedback: Tensor, leak: float) -> RecurrentGrads:
    """RFLO's update from the forward pass's ``states`` [(x_t, v_t, z_t)], each step's output
    error ``errors[t]`` (N, outputs) or None, and ``feedback`` B^T (outputs x hidden, the
    readout's shape), summed backward in time: the learning signal filtered through the leak,
    Lambda_s = L_s + d Lambda_{s+1}, gated by f'(v_s), times each step's presynaptic
    activity. The same sum as ``online_rflo_update``'s traces, in the other order."""
    x0, v0, _ = states[0]
    hidden = v0.shape[1]
    grads = RecurrentGrads(v0.new_zeros(hidden, x0.shape[1]), v0.new_zeros(hidden),
                           v0.new_zeros(hidden, hidden))
    filtered = torch.zeros_like(v0)  # Lambda_{s+1}
    for t in range(len(states) - 1, -1, -1):
        x, v, _ = states[t]
        filtered = leak * filtered
        if errors[t] is not None:
            filtered = filtered + errors[t] @ feedback  # + L_t = B e_t
        gated = (1.0 - leak) * (v > 0).to(v.dtype) * filtered
        z_prev = states[t - 1][2] if t else torch.zeros_like(v)
        grads.recurrent += gated.t() @ z_prev
        grads.input += gated.t() @ x
        grads.bias += gated.sum(0)
    return grads


def online_rflo_update(states: list[tuple[Tensor, Tensor, Tensor]],
                       errors: list[Tensor | None], feedback: Tensor,
                       leak: float) -> RecurrentGrads:
    """RFLO's update as it is defined, online: the traces run forward over the steps, each
    step adding L_t p_t (what a synapse could compute as the sequence arrives)."""
    x0, v0, _ = states[0]
    rows, hidden = v0.shape
    traces = Traces.zeros(rows, hidden, x0.shape[1], v0)
    grads = RecurrentGrads(v0.new_zeros(hidden, x0.shape[1]), v0.new_zeros(hidden),
                           v0.new_zeros(hidden, hidden))
    z_prev = torch.zeros_like(v0)
    for (x, v, z), error in zip(states, errors):
        traces.advance(leak, x, v, z_prev)
        if error is not None:
            signal = error @ feedback  # L_t = B e_t, (N, H)
            grads.recurrent += torch.einsum("nj,nji->ji", signal, traces.recurrent)
            grads.input += torch.einsum("nj,njk->jk", signal, traces.input)
            grads.bias += (signal * traces.bias).sum(0)
        z_prev = z
    return grads
