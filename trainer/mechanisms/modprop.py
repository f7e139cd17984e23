"""ModProp's behaviour: ``trainer.temporal.modprop`` under the rule's options (mu, the number
of cell types, the window). Its credit goes back through the true W_out and through W_ab, the
cell-type means of W, so those are the B the diagnostics compare with W; W_in carries none."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import register_behaviour
from trainer.recurrent import RateRNN
from trainer.temporal.mechanism import ROLE, TemporalMechanism
from trainer.temporal.modprop import cell_types, modprop_update, type_means
from trainer.temporal.rflo import RecurrentGrads


class ModProp(TemporalMechanism):
    name = "modprop"

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        super().check(model, rule, options)
        assert isinstance(model, RateRNN)
        if int(options["cell_types"]) > model.hidden:
            raise UsageError(f"{rule.name}: cell_types={options['cell_types']} is more than "
                             f"the RNN's {model.hidden} units")

    def feedback_weight(self, layer: Any) -> Tensor:
        if getattr(layer, ROLE, None) == "recurrent":
            return type_means(layer.weight, cell_types(layer.weight.shape[0],
                                                       int(layer.rule.options["cell_types"])))
        return layer.weight

    def recurrent_update(self, model: RateRNN, states: list[tuple[Tensor, Tensor, Tensor]],
                         errors: list[Tensor | None]) -> RecurrentGrads:
        options = model.recurrent.rule.options
        return modprop_update(states, errors, model.readout.weight.detach(),
                              model.recurrent.weight.detach(), model.leak,
                              float(options["mu"]),
                              cell_types(model.hidden, int(options["cell_types"])),
                              int(options["window"]))


register_behaviour(ModProp())
