"""The angle between two tensors, which the diagnostics, the planner and the mechanisms read."""

from __future__ import annotations

import torch
from torch import Tensor


def vector_angle(a: Tensor, b: Tensor) -> float:
    """Angle in degrees between two tensors seen as flat vectors (0 when either is zero)."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    denom = a.norm() * b.norm()
    if denom == 0:
        return 0.0
    cos = torch.clamp((a @ b) / denom, -1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cos)))
