"""e-prop's training form: BPTT with z_{t-1} detached inside the recurrent input
(``trainer.temporal.carry.LeakOnly``), which autograd turns into eligibility traces times the
learning signal (``trainer.temporal.eprop`` computes the same forward in time).

Every Linear is swapped, but only the readout's backward differs from the exact one: it carries
the learning signal into the hidden units through W_out^T (``feedback=symmetric``) or through
its fixed random B (``feedback=random``, drawn by convert at W_out's scale, never trained). The
input and recurrent layers carry the error by W itself (their input gradients are never used:
the input is data, the recurrent input detached), and every W gets its ordinary gradient.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from catalogue.rule import Rule
from trainer.mechanisms import FeedbackLayer, Mechanism, register_behaviour
from trainer.temporal.carry import LeakOnly, rate_rnn_of

# Set by ``link`` on the readout: the one layer whose B may differ from W.
SIGNAL = "carries_learning_signal"


class Eligibility(Mechanism):
    name = "eligibility"

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        rate_rnn_of(model, rule.name)

    def link(self, model: nn.Module) -> None:
        rnn = rate_rnn_of(model, model.creditsweep_rule.name)
        rnn.through_time = LeakOnly()
        setattr(rnn.readout, SIGNAL, True)

    def feedback_weight(self, layer: FeedbackLayer) -> Tensor:
        if getattr(layer, SIGNAL, False) and layer.rule.options["feedback"] == "random":
            return layer.weight_backward
        return layer.weight.detach()


register_behaviour(Eligibility())
