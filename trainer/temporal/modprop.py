"""ModProp (Liu, Smith, Mihalas, Shea-Brown & Sümbül 2022, "Biologically-plausible
backpropagation through arbitrary timespans via local neuromodulators") on the rate RNN of
``trainer.recurrent``.

BPTT's credit dL/dv_t = f'(v_t) [g_t + (1-d) W^T dL/dv_{t+1}] + d dL/dv_{t+1} (g_t = W_out^T
e_t) needs every synapse's weight and every neuron's f' to reach every other neuron. ModProp
keeps the local parts exact (the leak path and the output term, whose f' is the neuron's own)
and replaces the nonlocal recurrent path by a cell-type-level one: W by W_ab, where W_ab[j, i]
is the mean of W over the (type(j), type(i)) block, and f' on that path by a constant mu:

    delta_t = f'(v_t) g_t + d delta_{t+1} + gate_{t+1} mu (1-d) W_ab^T delta_{t+1}

(gate_s = 1 when step s is within the last ``window`` steps, or always with window 0; outside
it the recurrent path is cut, e-prop). The updates are dW = (1-d) sum_t delta_t z_{t-1}^T,
dW_in = (1-d) sum_t delta_t x_t^T, db = (1-d) sum_t delta_t. W_ab has rank <= C, so the
nonlocal credit is C type-level signals passed through the fixed filter
sum_s (d I + mu (1-d) W_ab^T)^s: the paper's cell-type-specific neuromodulators and
pre-determined filter taps. Its online (forward, RTRL-like) form carries per synapse the
eligibility trace plus C type-level traces; this module runs the equivalent backward-in-time
recursion over the stored states (the tests hold it against the forward form). mu = 0 is
e-prop with symmetric feedback; C = H, mu = 1 with every unit active is BPTT.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.temporal.rflo import RecurrentGrads


def cell_types(hidden: int, count: int) -> Tensor:
    """Each unit's type: ``count`` contiguous blocks of (nearly) equal size."""
    sizes = [len(block) for block in torch.arange(hidden).tensor_split(count)]
    return torch.repeat_interleave(torch.arange(count), torch.tensor(sizes))


def type_means(weight: Tensor, types: Tensor) -> Tensor:
    """W_ab: every entry of W replaced by the mean of its (postsynaptic type, presynaptic type)
    block."""
    count = int(types.max()) + 1
    member = torch.nn.functional.one_hot(types, count).to(weight.dtype)  # (H, C)
    sizes = member.sum(0)
    blocks = member.t() @ weight @ member / (sizes[:, None] * sizes[None, :])
    return member @ blocks @ member.t()


def modprop_update(states: list[tuple[Tensor, Tensor, Tensor]], errors: list[Tensor | None],
                   readout: Tensor, recurrent: Tensor, leak: float, mu: float, types: Tensor,
                   window: int = 0) -> RecurrentGrads:
    """ModProp's update from the forward pass's ``states`` [(x_t, v_t, z_t)], each step's
    output error ``errors[t]`` (N, outputs) or None, the readout's W_out and the recurrent W
    (W_ab is taken from it now)."""
    steps = len(states)
    x0, v0, _ = states[0]
    hidden = v0.shape[1]
    modulatory = mu * (1.0 - leak) * type_means(recurrent, types.to(recurrent.device))
    first_gated = 0 if window <= 0 else steps - window
    grads = RecurrentGrads(v0.new_zeros(hidden, x0.shape[1]), v0.new_zeros(hidden),
                           v0.new_zeros(hidden, hidden))
    later = torch.zeros_like(v0)  # delta_{t+1}
    for t in range(steps - 1, -1, -1):
        x, v, _ = states[t]
        delta = leak * later
        if t + 1 < steps and t + 1 >= first_gated:
            delta = delta + later @ modulatory
        if errors[t] is not None:
            delta = delta + (v > 0).to(v.dtype) * (errors[t] @ readout)
        scaled = (1.0 - leak) * delta
        z_prev = states[t - 1][2] if t else torch.zeros_like(v)
        grads.recurrent += scaled.t() @ z_prev
        grads.input += scaled.t() @ x
        grads.bias += scaled.sum(0)
        later = delta
    return grads
