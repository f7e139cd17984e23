"""A tiny float64 rate RNN and its forward pass written out in numpy, for the temporal rules'
tests: v_t = d v_{t-1} + (1-d)(W_in x_t + W z_{t-1} + b), z_t = ReLU(v_t), y_t = W_out z_t +
b_out, and the output errors e_t = dL/dy_t of the two tasks in closed form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import trainer
from trainer.recurrent import RateRNN, TimeCarry

FEATURES, HIDDEN, OUTPUTS, STEPS, ROWS = 2, 3, 2, 4, 5


@dataclass
class Case:
    model: RateRNN  # converted to the rule
    x: torch.Tensor  # (N, T, F)
    y: torch.Tensor  # class labels (last) or targets (N, T, outputs) (every)


def case(rule: str, *, leak: float = 0.5, readout: str = "last", hidden: int = HIDDEN,
         steps: int = STEPS, excitatory: float = 0.0, **options) -> Case:
    model = RateRNN(FEATURES, hidden, OUTPUTS, leak=leak, readout=readout,
                    excitatory=excitatory).double()
    trainer.convert(model, rule, **options)
    model.train()
    x = torch.randn(ROWS, steps, FEATURES, dtype=torch.float64)
    y = (torch.randn(ROWS, steps, OUTPUTS, dtype=torch.float64) if readout == "every"
         else torch.randint(0, OUTPUTS, (ROWS,)))
    return Case(model, x, y)


def loss(case: Case, output: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at the last step, or half the squared error summed over the steps, mean
    over the rows."""
    if case.model.read_every:
        return 0.5 * (output - case.y).square().sum() / case.x.shape[0]
    return F.cross_entropy(output, case.y)


def rule_grads(case: Case) -> dict[str, np.ndarray]:
    """The rule's update, as loss.backward() leaves it in each parameter's .grad."""
    case.model.zero_grad(set_to_none=True)
    loss(case, case.model(case.x)).backward()
    return {name: p.grad.numpy().copy() for name, p in case.model.named_parameters()
            if p.grad is not None}


def weights(model: RateRNN) -> dict[str, np.ndarray]:
    m = model
    return {"W_in": m.input.weight.detach().numpy(), "b": m.input.bias.detach().numpy(),
            "W": m.recurrent.weight.detach().numpy(), "W_out": m.readout.weight.detach().numpy(),
            "b_out": m.readout.bias.detach().numpy(),
            "B": m.readout.weight_backward.detach().numpy()}


def forward(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, v, z, e): (N, T, .) arrays of the inputs, voltages, rates and output errors."""
    w, d = weights(case.model), case.model.leak
    x = case.x.numpy()
    rows, steps, _ = x.shape
    hidden = w["W"].shape[0]
    v = np.zeros((rows, steps, hidden))
    z = np.zeros_like(v)
    v_prev = z_prev = np.zeros((rows, hidden))
    for t in range(steps):
        v[:, t] = d * v_prev + (1 - d) * (x[:, t] @ w["W_in"].T + z_prev @ w["W"].T + w["b"])
        z[:, t] = np.maximum(v[:, t], 0.0)
        v_prev, z_prev = v[:, t], z[:, t]
    y = z @ w["W_out"].T + w["b_out"]
    e = np.zeros_like(y)
    if case.model.read_every:
        e = (y - case.y.numpy()) / rows
    else:
        logits = y[:, -1]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(rows), case.y.numpy()] -= 1.0
        e[:, -1] = p / rows
    return x, v, z, e


def readout_grads(z: np.ndarray, e: np.ndarray) -> dict[str, np.ndarray]:
    return {"readout.weight": np.einsum("ntk,nti->ki", e, z),
            "readout.bias": e.sum((0, 1))}


class Detached(TimeCarry):
    """e-prop as autograd gives it: the recurrent input's z_{t-1} detached, the leak kept."""

    def carry(self, v, z, t):
        return v, z.detach()


def plain_copy(model: RateRNN, through_time: TimeCarry | None = None) -> RateRNN:
    """The converted model's weights in a plain RNN, whose backward is autograd's."""
    plain = RateRNN(model.input.in_features, model.hidden, model.readout.out_features,
                    leak=model.leak, readout="every" if model.read_every else "last").double()
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.endswith("weight_backward")})
    if through_time is not None:
        plain.through_time = through_time
    return plain


def autograd_grads(case: Case, plain: RateRNN) -> dict[str, np.ndarray]:
    loss(case, plain(case.x)).backward()
    return {name: p.grad.numpy() for name, p in plain.named_parameters()}
