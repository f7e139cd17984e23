"""What the whole-model temporal rules (RFLO, ModProp) share as mechanisms: the rate RNN's
forward pass keeps its states, and its output is wrapped so that loss.backward() hands dL/dy
to the rule's routine, which returns every parameter's update as its gradient.

The readout is trained by its ordinary gradient, dW_out = sum_t e_t z_t^T, db_out = sum_t e_t
(e_t = dL/dy_t); the rule decides W_in's, b's and W's from the states and the errors.
The layers are swapped for feedback layers (B fixed, never trained) so that the diagnostics'
exact copy (``exact_backward``) runs the plain op and gets the true gradient.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, ModelUpdate
from trainer.recurrent import RateRNN
from trainer.temporal.rflo import RecurrentGrads

ROLE = "creditsweep_temporal_role"  # each layer's place in the RNN: input, recurrent, readout


def step_errors(model: RateRNN, grad: Tensor, steps: int) -> list[Tensor | None]:
    """Each step's dL/dy_t: every step's for a readout of every step, else the last step's."""
    if model.read_every:
        return [grad[:, t] for t in range(steps)]
    return [None] * (steps - 1) + [grad]


class _TemporalUpdate(ModelUpdate):
    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        model: RateRNN = ctx.state["model"]
        mechanism: TemporalMechanism = ctx.state["mechanism"]
        states = ctx.state["states"]
        errors = step_errors(model, grad, len(states))
        recurrent = mechanism.recurrent_update(model, states, errors)
        out_w = sum(e.t() @ z for e, (_, _, z) in zip(errors, states) if e is not None)
        out_b = sum(e.sum(0) for e in errors if e is not None)
        return (None, None, recurrent.input, recurrent.bias, recurrent.recurrent, out_w, out_b)


class TemporalMechanism(Mechanism):
    """A rule that forms the rate RNN's update from its states and output errors."""

    def recurrent_update(self, model: RateRNN, states: list[tuple[Tensor, Tensor, Tensor]],
                         errors: list[Tensor | None]) -> RecurrentGrads:
        raise NotImplementedError

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        if not isinstance(model, RateRNN):
            raise UsageError(f"{rule.name} trains the rate RNN (arch rnn*), not a "
                             f"{type(model).__name__}: its update runs over the RNN's time steps")

    def link(self, model: nn.Module) -> None:
        assert isinstance(model, RateRNN)
        model.keep_states = True
        for role in ("input", "recurrent", "readout"):
            setattr(getattr(model, role), ROLE, role)

    def plan_reason(self, rule: Rule) -> str | None:
        return f"{rule.name}'s B is fixed: no regularizer trains it"

    def after_forward(self, model: nn.Module, inputs: tuple, output: Any) -> Any:
        if not isinstance(model, RateRNN):
            return None
        states = [(x.detach(), v.detach(), z.detach()) for x, v, z in model.states]
        model.states = []
        if not (model.training and torch.is_grad_enabled()) or not isinstance(output, Tensor):
            return None
        if getattr(model.recurrent, "exact_backward", False):
            return None  # the diagnostics' and curvature's true gradient
        params = (model.input.weight, model.input.bias, model.recurrent.weight,
                  model.readout.weight, model.readout.bias)
        return _TemporalUpdate.apply(output.detach(),
                                     {"model": model, "mechanism": self, "states": states},
                                     *params)
