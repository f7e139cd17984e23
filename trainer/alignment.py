"""The rule's regularizer summed over a converted model's layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.convert import feedback_layers
from trainer.layers import FeedbackLayer
from trainer.regularizer import weighted_regularizer


NoiseBuffers = dict[tuple, Tensor]


def layer_regularizer(layer: FeedbackLayer, noise_buffers: NoiseBuffers | None = None
                      ) -> Tensor | None:
    """R_l for one layer after its forward pass, or None when its rule has no regularizer.

    Noise rules draw fresh N(0, sigma^2) noise of the input's shape for every layer and step;
    ``noise_buffers`` lets layers of equal input shape draw into one buffer in turn (each
    layer's regularizer is finished before the next draws), which saves an allocation.
    """
    rule = layer.rule
    coefficients = {p: c for p, c in rule.coefficients.items() if c}
    cache = layer.pop_regularizer_cache()
    if not coefficients:
        return None
    if not rule.rule.needs_layer_input:
        return weighted_regularizer(layer, coefficients, None)
    if cache is None:
        raise RuntimeError(f"{rule.name}: alignment_loss needs a training-mode forward pass "
                           "with gradients enabled first")
    x, out = cache
    if rule.rule.uses_noise:
        key = (x.shape, x.dtype, x.device)
        buffers = {} if noise_buffers is None else noise_buffers
        if key not in buffers:
            buffers[key] = torch.empty_like(x)
        noise = buffers[key].normal_(0.0, rule.values["sigma"])
        return weighted_regularizer(layer, coefficients, noise)
    # The real input: f(x, W) is the forward output less the bias, already computed.
    r = None if out is None else layer.without_bias(out)
    return weighted_regularizer(layer, coefficients, x, r)


def alignment_loss(model: nn.Module) -> Tensor:
    """Sum over layers of the rule's R_l; its gradient reaches only the B's.

    Call after a training-mode forward pass. A zero tensor for rules without a regularizer.
    """
    buffers: NoiseBuffers = {}
    terms = [t for _, layer in feedback_layers(model)
             if (t := layer_regularizer(layer, buffers)) is not None]
    if terms:
        return torch.stack(terms).sum()
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)
