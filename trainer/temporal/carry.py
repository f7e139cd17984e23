"""What the temporal rules keep of the rate RNN's previous state (``RateRNN.through_time``):
the forward pass is untouched, only what autograd may differentiate through changes.

- ``Windows(k)``: truncated BPTT, window form. The sequence is cut into windows of ``k`` steps
  counted back from the last step, and the state is detached where each window starts, so an
  error travels back at most to the start of its window (the first window may be shorter). A
  last-step loss thus reaches exactly the last ``k`` steps; ``k >= T`` is BPTT.
- ``LeakOnly``: e-prop. z_{t-1} is detached inside the recurrent input, the leak path v_{t-1}
  kept: the error reaches earlier steps only through each neuron's own leak, which is the
  eligibility trace (``trainer.temporal.eprop`` computes the same gradient forward in time).
"""

from __future__ import annotations

from torch import Tensor, nn

from catalogue.errors import UsageError
from trainer.recurrent import RateRNN, TimeCarry


class Windows(TimeCarry):
    """Truncated BPTT: the state detached every ``k`` steps, counted back from the last."""

    def __init__(self, k: int) -> None:
        self.k, self.steps = int(k), 0

    def start(self, steps: int) -> None:
        self.steps = steps

    def carry(self, v: Tensor, z: Tensor, t: int) -> tuple[Tensor, Tensor]:
        if t and (self.steps - t) % self.k == 0:
            return v.detach(), z.detach()
        return v, z


class LeakOnly(TimeCarry):
    """e-prop: the recurrent input's z_{t-1} detached, the leak path's v_{t-1} kept."""

    def carry(self, v: Tensor, z: Tensor, t: int) -> tuple[Tensor, Tensor]:
        return v, z.detach()


def rate_rnn_of(model: nn.Module, rule: str) -> RateRNN:
    """The model's rate RNN (the model itself or its one RateRNN module), or a one-line
    UsageError: a temporal rule changes how the error flows through the RNN's steps."""
    found = [m for m in model.modules() if isinstance(m, RateRNN)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UsageError(f"{rule} trains a rate RNN (architecture family rnn); this "
                         f"{type(model).__name__} has {what} RateRNN modules")
    return found[0]
