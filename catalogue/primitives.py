"""The five regularization primitives a rule weights, as data: name, locality, formula.

Their definitions as functions of B live in the tests' oracle (tests/primitives_oracle.py,
torch); this table is what the rule declarations, the spaces and the reports read. f(x, K)
is the layer's forward map with kernel K, g(r, K) its transposed map, r = f(x, W); each
input-using primitive is a mean over the batch of a sum over all other axes (for a
convolution, every output position).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Primitive:
    name: str
    local: bool  # needs nothing beyond the layer's own activity and B
    uses_input: bool  # reads a layer input (noise or the real activation)
    quadratic: bool  # has curvature in B (decay, null, sparse); amp and self are linear
    formula: str


PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        Primitive("decay", local=True, uses_input=False, quadratic=True, formula="||B||^2"),
        Primitive("amp", local=True, uses_input=True, quadratic=False,
                  formula="-mean <f(x,W), f(x,B)>"),
        Primitive("null", local=True, uses_input=True, quadratic=True,
                  formula="mean ||g(f(x,W), B)||^2"),
        Primitive("sparse", local=False, uses_input=True, quadratic=True,
                  formula="mean ||f(x,B)||^2"),
        Primitive("self", local=False, uses_input=False, quadratic=False, formula="-<W, B>"),
    )
}
