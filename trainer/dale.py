"""Dale's law for the rate RNN: each unit is inhibitory or excitatory, and every weight
leaving it (to another unit, or to the readout) carries its sign.

Cell types are what ModProp's modulatory weights W_ab are averaged over; without them a
zero-mean random W has block means near zero and ModProp trains as e-prop. The recipe is the
reference ModProp code's (Liu et al. 2022, after the LSNN code's signed sampler): magnitudes
|N(0, 1)| signed by the presynaptic type, the inhibitory weights rescaled to the excitatory
total, each postsynaptic unit's inputs balanced to zero sum, the whole scaled to spectral
radius 1. Weights are ``nn.Linear``'s (post, pre): a unit's outgoing weights are a column.
"""

from __future__ import annotations

import torch
from torch import Tensor

from catalogue.architectures import dale_counts

INHIBITORY, EXCITATORY = 0, 1


def unit_types(hidden: int, excitatory: float) -> Tensor:
    """Each unit's type (0 inhibitory, 1 excitatory), inhibitory units first as the reference
    orders them; ``excitatory`` is the excitatory fraction (rounded to whole units). At least
    two of each, so that every unit still has inputs of both signs without itself."""
    count, inhibitory = dale_counts(hidden, excitatory)
    return torch.cat([torch.full((inhibitory,), INHIBITORY),
                      torch.full((count,), EXCITATORY)])


def signs(types: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """-1 for an inhibitory unit, +1 for an excitatory one."""
    return (2 * types - 1).to(dtype)


def _balance_rows(weight: Tensor) -> Tensor:
    """Each row (a postsynaptic unit's inputs) shifted to zero sum, only through its nonzero
    weights of the side that is short (the excitatory ones raised, or the inhibitory ones
    deepened), so that no sign changes and no absent synapse appears."""
    excit, inhib = weight > 0, weight < 0
    total = weight.sum(1, keepdim=True)
    raise_e = torch.where(total < 0, -total / excit.sum(1, keepdim=True), 0.0)
    deepen_i = torch.where(total >= 0, total / inhib.sum(1, keepdim=True), 0.0)
    return weight + excit * raise_e - inhib * deepen_i


def signed_weights(types: Tensor, *, autapses: bool) -> Tensor:
    """A (H, H) weight from the H typed units, as the reference samples it (in float64):
    column j signed by unit j's type; no diagonal unless ``autapses`` (masked before balancing,
    so that the weight used has zero row sums and spectral radius 1 exactly; the reference
    masks it after). Drawn from torch's generator, so the run's seed fixes it."""
    hidden = len(types)
    sign = signs(types, torch.float64)
    weight = torch.randn(hidden, hidden, dtype=torch.float64).abs() * sign
    if not autapses:
        weight.fill_diagonal_(0.0)
    inhib = types == INHIBITORY
    weight[:, inhib] *= weight[:, ~inhib].sum() / -weight[:, inhib].sum()
    weight = _balance_rows(weight)
    return weight / torch.linalg.eigvals(weight).abs().max()


def outgoing(types: Tensor, outputs: int) -> Tensor:
    """(outputs, H) weights from the typed units to a readout: rows of a full signed matrix,
    as the reference's sampler takes its columns (random ones with repeats past H)."""
    rows = (torch.arange(outputs) if outputs <= len(types)
            else torch.randint(len(types), (outputs,)))
    return signed_weights(types, autapses=True)[rows]


@torch.no_grad()
def obey(weight: Tensor, types: Tensor) -> None:
    """Project ``weight`` onto Dale's law: a weight whose sign is not its presynaptic unit's is
    set to 0 (W = s relu(s W), column-wise), in place. It writes only when some weight broke
    the law, so a weight that obeys keeps its autograd version."""
    wrong = weight * signs(types.to(weight.device), weight.dtype) < 0
    if wrong.any():
        weight.masked_fill_(wrong, 0.0)
