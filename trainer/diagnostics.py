"""How well B carries W's information: weight angle, norm ratio and gradient angle per layer;
how close the rule's update of W comes to the true gradient (update angle); and how close the
error each layer's output receives comes to the true one (delta angle)."""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from trainer.angles import vector_angle
from trainer.conversion import weight_layers
from trainer.curvature import exact_backward
from trainer.layers import FeedbackLayer, GradientProbe

LossFn = Callable[[Tensor, Tensor], Tensor]


def measure_alignment(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn
                      ) -> dict[str, Any]:
    """Per-layer diagnostics on one batch, with no side effects.

    The gradient angle compares, for the same upstream error, the input gradient the layer sends
    through B with the one W would send (BatchNorm in eval mode). Plain (backprop) layers have
    B = W: 0 deg, ratio 1. Everything runs on copies, as the update and delta angles' do, so
    that nothing a backward or a feedback draw may change in a mechanism's state (a D
    calibrated at its first backward, brSF's magnitudes and the generator they come from, the
    last B a layer used) changes in the model.
    """
    with _own_generator(x):
        return _measure_alignment(model, x, y, loss_fn)


@contextlib.contextmanager
def _own_generator(x: Tensor) -> Iterator[None]:
    """The global generator (and the input's CUDA device's) as it was before: a replica's
    training-mode pass draws (brSF's magnitudes), and a seeded run must not depend on whether
    it was measured."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _measure_alignment(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn
                       ) -> dict[str, Any]:
    probes: dict[str, GradientProbe] = {}
    replica = copy.deepcopy(model).eval()
    for name, layer in weight_layers(replica):
        if isinstance(layer, FeedbackLayer):
            probes[name] = layer.probe = GradientProbe()
    params = [p for p in replica.parameters() if p.requires_grad]
    with torch.enable_grad():
        torch.autograd.grad(loss_fn(replica(x), y), params, allow_unused=True)

    per_layer: dict[str, dict[str, float]] = {}
    for name, layer in weight_layers(replica):  # B as shown outside training: brSF draws none
        if isinstance(layer, FeedbackLayer):
            per_layer[name] = layer.mechanism.diagnostics(layer, probes[name].gradient_angle)
        else:
            per_layer[name] = {"weight_angle": 0.0, "norm_ratio": 1.0, "gradient_angle": 0.0}
        per_layer[name].update(norms(layer, per_layer[name]["norm_ratio"]))
    for name, angles in against_true_gradient(model, x, y, loss_fn).items():
        per_layer[name].update(angles)
    return {"layers": per_layer, "summary": summarize(per_layer)}


def norms(layer: nn.Module, norm_ratio: float) -> dict[str, float]:
    """‖W‖ and ‖B‖ (Frobenius; B as the mechanism carries the error, ‖B‖/‖W‖ times ‖W‖).
    Recorded every epoch because a BatchNorm network's loss curvature scales as 1/‖W‖²: a
    rule that grows W lowers λ_max without changing the function, and a comparison of λ_max
    across rules needs the norms beside it."""
    weight = float(layer.weight.detach().norm())
    return {"weight_norm": weight, "feedback_norm": norm_ratio * weight}


def update_angles(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> dict[str, float]:
    """Per weight layer, the angle between the update the rule forms for W on this batch and
    the true gradient (``against_true_gradient``)."""
    return {name: angles["update_angle"]
            for name, angles in against_true_gradient(model, x, y, loss_fn).items()}


def delta_angles(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> dict[str, float]:
    """Per weight layer, the angle between the error δ_l its output receives in the rule's
    backward and the true ∂L/∂a_l (``against_true_gradient``); empty for a whole-model rule."""
    return {name: angles["delta_angle"]
            for name, angles in against_true_gradient(model, x, y, loss_fn).items()
            if "delta_angle" in angles}


def against_true_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn
                          ) -> dict[str, dict[str, float]]:
    """Per weight layer, the rule's backward against the true one on this batch, both in
    training mode as a step takes them:

    - ``update_angle``: the update the rule forms for W against the true gradient. The one
      measure every mechanism shares: a whole-model rule's update is what its settling decides;
    - ``delta_angle``: the error δ_l = ∂L/∂a_l the layer's output a_l (its pre-activation)
      receives in the rule's backward against the true one; every call of a layer (each time
      step of a recurrent model) is one block of the vector. A rule whose update is formed for
      the whole model (``update="model"``: relaxation, predictive coding, dynamic inversion,
      RFLO, ModProp) delivers no per-layer error through autograd, so it has none; nor has a
      layer whose true or delivered error is zero (the angle is undefined there).

    Each pass runs on a copy of the model, so that nothing of the model (BatchNorm's running
    statistics, a rule's noise or relaxation state, any .grad) is touched."""
    names = [name for name, _ in weight_layers(model)]
    per_layer_rule = _delivers_layer_errors(model)
    rule = _backward(copy.deepcopy(model), x, y, loss_fn, per_layer_rule)
    with exact_backward(copy.deepcopy(model)) as exact:
        true = _backward(exact, x, y, loss_fn, per_layer_rule)
    result: dict[str, dict[str, float]] = {}
    for name, delivered, exact_grad in zip(names, rule.weight_grads, true.weight_grads):
        result[name] = {"update_angle": vector_angle(delivered, exact_grad)}
        angle = _angle_over_calls(rule.output_grads.get(name, []),
                                  true.output_grads.get(name, []))
        if angle is not None:
            result[name]["delta_angle"] = angle
    return result


def summarize(per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each measure's mean and maximum over the layers that have it (a layer may lack one: a
    delta angle where no error reached it)."""
    if not per_layer:
        return {}
    keys = dict.fromkeys(key for values in per_layer.values() for key in values)
    columns = {key: [v[key] for v in per_layer.values() if key in v] for key in keys}
    summary: dict[str, float] = {}
    for key, values in columns.items():
        summary[f"{key}_mean"] = statistics.fmean(values)
        summary[f"{key}_max"] = max(values)
    summary["norm_ratio_min"] = min(columns["norm_ratio"])
    return summary


def _delivers_layer_errors(model: nn.Module) -> bool:
    """Whether the model's rule forms each layer's update from the error autograd delivers to
    the layer's output (a plain model: backprop's does)."""
    configured = getattr(model, "creditsweep_rule", None)
    return configured is None or configured.rule.declared_mechanism.update != "model"


@dataclass
class _Pass:
    """One backward pass on a replica: W's gradients, and per weight layer the gradient each
    call's output received (None for a call none reached), in the order of the calls."""

    weight_grads: list[Tensor]
    output_grads: dict[str, list[Tensor | None]] = field(default_factory=dict)


def _backward(replica: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn,
              watch_outputs: bool) -> _Pass:
    """The training-mode forward and backward of ``replica``, W's gradients and, with
    ``watch_outputs``, each weight layer's output gradients (by a hook on each output: the
    gradient as the layer's backward receives it, before any in-place op that follows)."""
    replica.train()
    layers = weight_layers(replica)
    result = _Pass([])
    handles = []
    if watch_outputs:
        for name, layer in layers:
            handles.append(layer.register_forward_hook(_output_watch(
                result.output_grads.setdefault(name, []))))
    try:
        with torch.enable_grad():
            loss = loss_fn(replica(x), y)
            result.weight_grads = list(torch.autograd.grad(
                loss, [layer.weight for _, layer in layers]))
    finally:
        for handle in handles:
            handle.remove()
    return result


def _output_watch(calls: list[Tensor | None]) -> Callable[..., None]:
    """A forward hook that keeps, in ``calls``, the gradient each call's output receives."""
    def watch(module: nn.Module, inputs: Any, out: Any) -> None:
        index = len(calls)
        calls.append(None)
        if isinstance(out, Tensor) and out.requires_grad:
            def keep(grad: Tensor) -> None:
                calls[index] = grad.detach()
            out.register_hook(keep)
    return watch


def _angle_over_calls(delivered: list[Tensor | None], true: list[Tensor | None]
                      ) -> float | None:
    """The angle in degrees between the concatenations of two passes' output gradients, call
    by call (a call one pass reached and the other did not counts as zero there); None when
    either is zero or the passes called the layer differently."""
    if len(delivered) != len(true):
        return None
    dot = norm_delivered = norm_true = 0.0
    for a, b in zip(delivered, true):
        a64 = None if a is None else a.flatten().double()
        b64 = None if b is None else b.flatten().double()
        if a64 is not None:
            norm_delivered += float(a64 @ a64)
        if b64 is not None:
            norm_true += float(b64 @ b64)
        if a64 is not None and b64 is not None:
            dot += float(a64 @ b64)
    if norm_delivered == 0 or norm_true == 0:
        return None
    cos = dot / math.sqrt(norm_delivered * norm_true)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))
