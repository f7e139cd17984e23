"""ModProp's behaviour: ``trainer.temporal.modprop`` under the rule's options (mu, the number
of cell types, the window). Its credit goes back through the true W_out and through W_ab, the
cell-type means of W, so those are the B the diagnostics compare with W; W_in carries none.

The types are the RNN's own when it declares them (``RateRNN.cell_types()``, under Dale's
law: inhibitory and excitatory), and then ``cell_types`` must be their number (2, its
default); otherwise they are ``cell_types`` contiguous blocks of units."""

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

DECLARED = "creditsweep_declared_types"  # on the recurrent layer: the RNN's cell types or None


CACHE = "creditsweep_modulatory"  # on the recurrent layer: (W's version, W_ab)


def unit_types(layer: Any) -> Tensor:
    """The types W_ab averages over: the RNN's declared ones, else the option's blocks, on
    W's device."""
    declared = getattr(layer, DECLARED, None)
    if declared is None:
        declared = cell_types(layer.weight.shape[0], int(layer.rule.options["cell_types"]))
    return declared.to(layer.weight.device)


def modulatory_weights(layer: Any) -> Tensor:
    """W_ab of the layer's current W, computed once per change of W: the forward pass asks
    at every time step."""
    key = (layer.weight._version, layer.weight.data_ptr())
    cached = getattr(layer, CACHE, None)
    if cached is None or cached[0] != key:
        cached = (key, type_means(layer.weight.detach(), unit_types(layer)))
        setattr(layer, CACHE, cached)
    return cached[1]


class ModProp(TemporalMechanism):
    name = "modprop"

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        super().check(model, rule, options)
        assert isinstance(model, RateRNN)
        count = int(options["cell_types"])
        declared = model.cell_types()
        if declared is not None and count != int(declared.max()) + 1:
            raise UsageError(f"{rule.name}: cell_types={count}, but the RNN declares its "
                             f"{int(declared.max()) + 1} types by Dale's law (inhibitory, "
                             f"excitatory): leave cell_types at 2, or set excitatory=0")
        if count > model.hidden:
            raise UsageError(f"{rule.name}: cell_types={count} is more than the RNN's "
                             f"{model.hidden} units")

    def link(self, model: nn.Module) -> None:
        super().link(model)
        assert isinstance(model, RateRNN)
        setattr(model.recurrent, DECLARED, model.cell_types())

    def feedback_weight(self, layer: Any) -> Tensor:
        if getattr(layer, ROLE, None) == "recurrent":
            return modulatory_weights(layer)
        return layer.weight

    def recurrent_update(self, model: RateRNN, states: list[tuple[Tensor, Tensor, Tensor]],
                         errors: list[Tensor | None]) -> RecurrentGrads:
        options = model.recurrent.rule.options
        return modprop_update(states, errors, model.readout.weight.detach(),
                              model.recurrent.weight.detach(), model.leak,
                              float(options["mu"]), unit_types(model.recurrent),
                              int(options["window"]))


register_behaviour(ModProp())
