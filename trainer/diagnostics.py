"""How well B carries W's information: weight angle, norm ratio and gradient angle per layer."""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainer.conversion import weight_layers
from trainer.layers import FeedbackLayer, GradientProbe


def measure_alignment(model: nn.Module, x: Tensor, y: Tensor,
                      loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, Any]:
    """Per-layer diagnostics on one batch, with BatchNorm in eval mode and no side effects.

    The gradient angle compares, for the same upstream error, the input gradient the layer sends
    through B with the one W would send. Plain (backprop) layers have B = W: 0 deg, ratio 1.
    """
    layers = weight_layers(model)
    probes: dict[str, GradientProbe] = {}
    was_training = model.training
    model.eval()
    try:
        for name, layer in layers:
            if isinstance(layer, FeedbackLayer):
                probes[name] = layer.probe = GradientProbe()
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for _, layer in layers:
            if isinstance(layer, FeedbackLayer):
                layer.probe = None
        model.train(was_training)

    per_layer: dict[str, dict[str, float]] = {}
    for name, layer in layers:
        if isinstance(layer, FeedbackLayer):
            per_layer[name] = layer.mechanism.diagnostics(layer, probes[name].gradient_angle)
        else:
            per_layer[name] = {"weight_angle": 0.0, "norm_ratio": 1.0, "gradient_angle": 0.0}
    return {"layers": per_layer, "summary": summarize(per_layer)}


def summarize(per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
    if not per_layer:
        return {}
    columns = {k: [v[k] for v in per_layer.values()] for k in next(iter(per_layer.values()))}
    summary: dict[str, float] = {}
    for key, values in columns.items():
        summary[f"{key}_mean"] = statistics.fmean(values)
        summary[f"{key}_max"] = max(values)
    summary["norm_ratio_min"] = min(columns["norm_ratio"])
    return summary
