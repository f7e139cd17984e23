"""RFLO's behaviour: the online traces of ``trainer.temporal.rflo`` with the readout's fixed
random B (stored as the readout's ``weight_backward``, drawn by ``convert`` at W_out's scale)."""

from __future__ import annotations

from torch import Tensor

from trainer.mechanisms import register_behaviour
from trainer.recurrent import RateRNN
from trainer.temporal.mechanism import TemporalMechanism
from trainer.temporal.rflo import RecurrentGrads, rflo_update


class RFLO(TemporalMechanism):
    name = "rflo"

    def recurrent_update(self, model: RateRNN, states: list[tuple[Tensor, Tensor, Tensor]],
                         errors: list[Tensor | None]) -> RecurrentGrads:
        return rflo_update(states, errors, model.readout.weight_backward.detach(), model.leak)


register_behaviour(RFLO())
