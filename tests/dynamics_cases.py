"""What the tests of B's dynamics share: one symmetric-alignment layer whose B starts
orthogonal to W at W's norm, so B's angle to its fixed point starts at 90 degrees."""

from __future__ import annotations

import torch
from torch import nn

import trainer


def orthogonal_sa_layer(in_features: int = 48, out_features: int = 24, freeze_w: bool = False
                        ) -> tuple[nn.Module, nn.Module]:
    """(model, its layer): B ⟂ W with ‖B‖ = ‖W‖; B* = (β / 2α) W = W at the defaults."""
    model = trainer.convert(nn.Sequential(nn.Linear(in_features, out_features, bias=False)),
                            "symmetric_alignment")
    layer = model[0]
    with torch.no_grad():
        W = layer.weight
        B = torch.randn_like(W)
        B -= (B * W).sum() / (W * W).sum() * W
        layer.weight_backward.copy_(B * W.norm() / B.norm())
    if freeze_w:
        layer.weight.requires_grad_(False)
    return model, layer
