"""The rule's regularizer summed over a converted model's layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.convert import feedback_layers
from trainer.layers import FeedbackLayer
from trainer.noise import StepNoise
from trainer.regularizer import (input_free_value_and_grads, regularizer_value_and_grad,
                                 weighted_regularizer)


NOISE_POOL = "_creditsweep_noise_pool"  # a model attribute: the flat noise buffers, reused


Cache = tuple[Tensor, Tensor | None] | None


def _regularizer_inputs(layer: FeedbackLayer, cache: Cache, noise: StepNoise | None
                        ) -> tuple[Tensor | None, Tensor | None]:
    """(x, r) for the layer's regularizer: nothing for decay/self rules; this step's shared
    noise (``trainer.noise``) for the noise rules; else the real input, with f(x, W) the
    forward output less the bias, already computed."""
    rule = layer.rule
    if not rule.rule.needs_layer_input:
        return None, None
    if cache is None:
        raise RuntimeError(f"{rule.name}: alignment_loss needs a training-mode forward pass "
                           "with gradients enabled first")
    x, out = cache
    if rule.rule.uses_noise:
        if noise is None:
            noise = StepNoise()
            noise.plan(x, rule.noise, rule.values["sigma"])
        return noise.take(x, rule.noise, rule.values["sigma"]), None
    return x, None if out is None else layer.without_bias(out)


def layer_regularizer(layer: FeedbackLayer, cache: Cache, noise: StepNoise | None = None
                      ) -> Tensor | None:
    """R_l for one layer from what its forward pass left (``cache``: the padded input and the
    output), or None when its rule has no regularizer."""
    coefficients = {p: c for p, c in layer.rule.coefficients.items() if c}
    if not coefficients:
        return None
    return weighted_regularizer(layer, coefficients, *_regularizer_inputs(layer, cache, noise))


def _caches_and_noise(model: nn.Module) -> tuple[list[tuple[FeedbackLayer, Cache]], StepNoise]:
    """Every feedback layer with what its forward pass left, and this step's noise, planned
    for every layer that will draw from it."""
    layers = [(layer, layer.pop_regularizer_cache()) for _, layer in feedback_layers(model)]
    noise = StepNoise(model.__dict__.setdefault(NOISE_POOL, {}))
    for layer, cache in layers:
        if (cache is not None and layer.rule.rule.uses_noise
                and any(layer.rule.coefficients.values())):
            noise.plan(cache[0], layer.rule.noise, layer.rule.values["sigma"])
    return layers, noise


def _zero(model: nn.Module) -> Tensor:
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)


def alignment_loss(model: nn.Module) -> Tensor:
    """Sum over layers of the rule's R_l; its gradient reaches only the B's.

    Call after a training-mode forward pass. A zero tensor for rules without a regularizer.
    """
    layers, noise = _caches_and_noise(model)
    terms = [t for layer, cache in layers
             if (t := layer_regularizer(layer, cache, noise)) is not None]
    return torch.stack(terms).sum() if terms else _zero(model)


def alignment_value_and_grads(model: nn.Module) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """What ``alignment_loss`` gives, without autograd: its value, and (B, dR/dB) for every
    layer with a regularizer, for the training step to add to B.grad after the task loss's
    backward. Layers whose regularizer reads no input (decay and self only) are done in one
    batch of multi-tensor kernels; a small model's step is otherwise mostly per-layer calls."""
    layers, noise = _caches_and_noise(model)
    values: list[Tensor] = []
    grads: list[tuple[Tensor, Tensor]] = []
    batched: dict[tuple[float, float], list[FeedbackLayer]] = {}
    for layer, cache in layers:
        coefficients = {p: c for p, c in layer.rule.coefficients.items() if c}
        if not coefficients:
            continue
        if not layer.rule.rule.needs_layer_input:
            key = (coefficients.get("decay", 0.0), coefficients.get("self", 0.0))
            batched.setdefault(key, []).append(layer)
            continue
        value, grad = regularizer_value_and_grad(layer, coefficients,
                                                 *_regularizer_inputs(layer, cache, noise))
        values.append(value)
        grads.append((layer.weight_backward, grad))
    for (decay, self_), group in batched.items():
        Bs = [layer.weight_backward for layer in group]
        value, group_grads = input_free_value_and_grads(
            Bs, [layer.weight.detach() for layer in group], decay, self_)
        values.append(value)
        grads.extend(zip(Bs, group_grads))
    return (torch.stack(values).sum() if values else _zero(model)), grads
