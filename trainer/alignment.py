"""The rule's regularizer summed over a converted model's layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from trainer.conversion import feedback_layers
from trainer.layers import FeedbackLayer
from trainer.noise import StepNoise
from trainer.preconditioner import precondition
from trainer.regularizer import (ClosedFormGradient, input_free_value_and_grads,
                                 regularizer_value_and_grad)


NOISE_POOL = "_creditsweep_noise_pool"  # a model attribute: the flat noise buffers, reused


Cache = tuple[Tensor, Tensor | None] | None
DrawNoise = Callable[[FeedbackLayer, Tensor], Tensor]  # (layer, its real input) -> the noise


def regularizer_inputs(layer: FeedbackLayer, cache: Cache, draw_noise: DrawNoise
                       ) -> tuple[Tensor | None, Tensor | None]:
    """(x, r) for the layer's regularizer, from what its training-mode forward left (``cache``):
    nothing for decay/self rules; for the noise rules, the noise ``draw_noise(layer, x)``
    gives (this step's shared draw in training, a seeded one in B's plan); else the real
    input, with f(x, W) the forward output less the bias, already computed."""
    rule = layer.rule
    if not rule.rule.needs_layer_input:
        return None, None
    if cache is None:
        raise RuntimeError(f"{rule.name}: its regularizer needs a training-mode forward pass "
                           "with gradients enabled first")
    x, out = cache
    if rule.rule.uses_noise:
        return draw_noise(layer, x), None
    return x, None if out is None else layer.without_bias(out)


def _step_inputs(layer: FeedbackLayer, cache: Cache, noise: StepNoise | None
                 ) -> tuple[Tensor | None, Tensor | None]:
    """``regularizer_inputs`` in a training step: the noise rules read this step's shared
    noise (``trainer.noise``), ``noise_batch`` examples of it."""
    def draw(layer: FeedbackLayer, x: Tensor) -> Tensor:
        rule, step_noise = layer.rule, noise
        shape = noise_shape(x, rule.noise_batch)
        if step_noise is None:
            step_noise = StepNoise()
            step_noise.plan(shape, rule.noise, rule.values["sigma"])
        return step_noise.take(shape, rule.noise, rule.values["sigma"])

    return regularizer_inputs(layer, cache, draw)


def noise_shape(x: Tensor, noise_batch: int) -> Tensor:
    """A view of ``x`` shaped like the noise its layer draws: ``noise_batch`` examples (all
    of the batch when 0 or more than it). R is a mean over the noise's examples, so fewer of
    them leave its expectation, and every fixed point, as they are and only add variance."""
    return x[:noise_batch] if 0 < noise_batch < x.shape[0] else x


def layer_regularizer(layer: FeedbackLayer, cache: Cache, noise: StepNoise | None = None
                      ) -> Tensor | None:
    """R_l for one layer from what its forward pass left (``cache``: the padded input and the
    output), or None when its rule has no regularizer."""
    coefficients = layer.rule.active_coefficients
    if not coefficients:
        return None
    x, r = _step_inputs(layer, cache, noise)
    value, grad = regularizer_value_and_grad(layer, coefficients, x, r)
    return ClosedFormGradient.apply(layer.weight_backward, value,
                                    precondition(layer, x, grad))


def _caches_and_noise(model: nn.Module) -> tuple[list[tuple[FeedbackLayer, Cache]], StepNoise]:
    """Every feedback layer with what its forward pass left, and this step's noise, planned
    for every layer that will draw from it."""
    layers = [(layer, layer.pop_regularizer_cache()) for _, layer in feedback_layers(model)]
    noise = StepNoise(model.__dict__.setdefault(NOISE_POOL, {}))
    for layer, cache in layers:
        if (cache is not None and layer.rule.rule.uses_noise
                and layer.rule.active_coefficients):
            noise.plan(noise_shape(cache[0], layer.rule.noise_batch), layer.rule.noise,
                       layer.rule.values["sigma"])
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


INPUT_FREE = "_creditsweep_input_free"  # a model attribute: the input-free layers' batches


@dataclass
class _InputFreeBatch:
    """Layers whose regularizer reads no input and shares its (decay, self) coefficients."""

    decay: float
    self_: float
    Bs: list[Tensor]
    Ws: list[Tensor]  # detached views: they follow W's in-place updates
    needs_zero_grad: list[bool]  # B gets no other gradient (see alignment_value_and_grads)


def _input_free_batches(model: nn.Module, layers: list[FeedbackLayer]) -> list[_InputFreeBatch]:
    """The batches, kept on the model between steps: rebuilt only when a layer's rule, B or
    W storage changes, since on a small model building them costs as much as using them."""
    key = tuple((id(layer.rule), id(layer.weight_backward), layer.weight.data_ptr())
                for layer in layers)
    cached = model.__dict__.get(INPUT_FREE)
    if cached is not None and cached[0] == key:
        return cached[1]
    grouped: dict[tuple[float, float], list[FeedbackLayer]] = {}
    for layer in layers:
        coefficients = layer.rule.active_coefficients
        grouped.setdefault((coefficients.get("decay", 0.0), coefficients.get("self", 0.0)),
                           []).append(layer)
    batches = [_InputFreeBatch(decay, self_, [layer.weight_backward for layer in group],
                               [layer.weight.detach() for layer in group],
                               [not layer.mechanism.feedback_gets_weight_grad(layer.rule.rule)
                                for layer in group])
               for (decay, self_), group in grouped.items()]
    model.__dict__[INPUT_FREE] = (key, batches)
    return batches


def alignment_value_and_grads(model: nn.Module, *, decay_grads: bool = True
                              ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """What ``alignment_loss`` gives, without autograd: its value, and (B, dR/dB) for every
    layer with a regularizer, for the training step to add to B.grad after the task loss's
    backward. ``decay_grads=False`` leaves the decay term out of dR/dB (not out of the value)
    for an optimizer that applies it as B's weight decay (``trainer.optim``); a B that would
    then get no gradient at all gets a zero one, so that the optimizer still decays it.
    Layers whose regularizer reads no input (decay and self only) are done in one batch of
    multi-tensor kernels; a small model's step is otherwise mostly per-layer calls."""
    layers, noise = _caches_and_noise(model)
    values: list[Tensor] = []
    grads: list[tuple[Tensor, Tensor]] = []
    input_free: list[FeedbackLayer] = []
    for layer, cache in layers:
        rule = layer.rule
        coefficients = rule.active_coefficients
        if not coefficients:
            continue
        if not rule.rule.needs_layer_input:
            input_free.append(layer)
            continue
        x, r = _step_inputs(layer, cache, noise)
        value, grad = regularizer_value_and_grad(layer, coefficients, x, r,
                                                 decay_grad=decay_grads)
        values.append(value)
        grads.append((layer.weight_backward, precondition(layer, x, grad)))
    for batch in _input_free_batches(model, input_free) if input_free else ():
        value, batch_grads = input_free_value_and_grads(batch.Bs, batch.Ws, batch.decay,
                                                        batch.self_, decay_grad=decay_grads)
        values.append(value)
        if batch_grads is not None:
            grads.extend(zip(batch.Bs, batch_grads))
        else:  # decay only, applied by the optimizer
            grads.extend((B, torch.zeros_like(B))
                         for B, zero in zip(batch.Bs, batch.needs_zero_grad) if zero)
    if not values:
        return _zero(model), grads
    return (values[0] if len(values) == 1 else torch.stack(values).sum()), grads
