"""Truncated BPTT: the layers stay plain (B is W) and the rate RNN detaches its state at the
start of every window of ``truncation`` steps (``trainer.temporal.carry.Windows``)."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, register_behaviour
from trainer.temporal.carry import Windows, rate_rnn_of


class Truncated(Mechanism):
    name = "truncated"

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        rate_rnn_of(model, rule.name)

    def swaps_layers(self) -> bool:
        return False

    def link(self, model: nn.Module) -> None:
        configured = model.creditsweep_rule
        rnn = rate_rnn_of(model, configured.name)
        rnn.through_time = Windows(int(configured.options["truncation"]))


register_behaviour(Truncated())
