"""The rule's regularizer summed over a converted model's layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.convert import feedback_layers
from trainer.layers import FeedbackLayer
from trainer.noise import StepNoise
from trainer.regularizer import weighted_regularizer


NOISE_POOL = "_creditsweep_noise_pool"  # a model attribute: the flat noise buffers, reused


def layer_regularizer(layer: FeedbackLayer, cache: tuple[Tensor, Tensor | None] | None,
                      noise: StepNoise | None = None) -> Tensor | None:
    """R_l for one layer from what its forward pass left (``cache``: the padded input and the
    output), or None when its rule has no regularizer. Noise rules read their N(0, sigma^2) or
    uniform input from ``noise``, this step's shared draw (``trainer.noise``)."""
    rule = layer.rule
    coefficients = {p: c for p, c in rule.coefficients.items() if c}
    if not coefficients:
        return None
    if not rule.rule.needs_layer_input:
        return weighted_regularizer(layer, coefficients, None)
    if cache is None:
        raise RuntimeError(f"{rule.name}: alignment_loss needs a training-mode forward pass "
                           "with gradients enabled first")
    x, out = cache
    if rule.rule.uses_noise:
        if noise is None:
            noise = StepNoise()
            noise.plan(x, rule.noise, rule.values["sigma"])
        return weighted_regularizer(layer, coefficients,
                                    noise.take(x, rule.noise, rule.values["sigma"]))
    # The real input: f(x, W) is the forward output less the bias, already computed.
    r = None if out is None else layer.without_bias(out)
    return weighted_regularizer(layer, coefficients, x, r)


def alignment_loss(model: nn.Module) -> Tensor:
    """Sum over layers of the rule's R_l; its gradient reaches only the B's.

    Call after a training-mode forward pass. A zero tensor for rules without a regularizer.
    """
    layers = [(layer, layer.pop_regularizer_cache()) for _, layer in feedback_layers(model)]
    pool = model.__dict__.setdefault(NOISE_POOL, {})
    noise = StepNoise(pool)
    for layer, cache in layers:
        if cache is not None and layer.rule.rule.uses_noise and any(layer.rule.coefficients.values()):
            noise.plan(cache[0], layer.rule.noise, layer.rule.values["sigma"])
    terms = [t for layer, cache in layers
             if (t := layer_regularizer(layer, cache, noise)) is not None]
    if terms:
        return torch.stack(terms).sum()
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)
