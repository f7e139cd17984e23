from __future__ import annotations

from typing import Mapping

from catalogue.mechanism import MechanismDeclaration, register_mechanism


def _backprop_in_disguise(options: Mapping[str, object], units: int | None) -> str | None:
    """The module settings under which every error travels through W: backprop, which a
    search must not report as DFA's best."""
    modules, hybrid = int(options.get("modules") or 0), int(options.get("hybrid") or 0)
    if modules == 1 and hybrid == 0 and options.get("within", "backprop") == "backprop":
        return ("modules=1 with within=backprop is backprop (one module, every error "
                "through W); use --rule backprop")
    if units is not None and hybrid >= units:
        return f"hybrid={hybrid} trains all {units} units by backprop; use --rule backprop"
    return None


register_mechanism(MechanismDeclaration(
    name="direct", summary="the output error reaches each layer through a fixed random matrix "
                           "of its own (classes x input shape)",
    unit_options=("modules", "hybrid"), option_refusal=_backprop_in_disguise))
