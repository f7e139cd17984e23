"""How well B carries W's information: weight angle, norm ratio and gradient angle per layer,
and how close the rule's update of W comes to the true gradient (update angle)."""

from __future__ import annotations

import copy
import statistics
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainer.angles import vector_angle
from trainer.conversion import weight_layers
from trainer.curvature import exact_backward
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
    for name, angle in update_angles(model, x, y, loss_fn).items():
        per_layer[name]["update_angle"] = angle
    return {"layers": per_layer, "summary": summarize(per_layer)}


def update_angles(model: nn.Module, x: Tensor, y: Tensor,
                  loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
    """Per weight layer, the angle between the update the rule forms for W on this batch and
    the true gradient, both in training mode as a step takes them.

    The one measure every mechanism shares: a whole-model rule (relaxation) has no per-layer
    backward to probe, and its update is what its settling decides. Each pass runs on a copy
    of the model, so that nothing of the model (BatchNorm's running statistics, a rule's
    noise or relaxation state, any .grad) is touched."""
    def weight_grads(replica: nn.Module) -> list[Tensor]:
        replica.train()
        weights = [layer.weight for _, layer in weight_layers(replica)]
        with torch.enable_grad():
            return list(torch.autograd.grad(loss_fn(replica(x), y), weights))

    rule_grads = weight_grads(copy.deepcopy(model))
    with exact_backward(copy.deepcopy(model)) as exact:
        true_grads = weight_grads(exact)
    return {name: vector_angle(a, b) for (name, _), a, b
            in zip(weight_layers(model), rule_grads, true_grads)}


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
