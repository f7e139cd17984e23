"""Swap every nn.Linear / nn.Conv2d of any model for the rule's feedback layer, in place."""

from __future__ import annotations

import logging

import torch
from torch import nn

from catalogue.errors import UsageError
from catalogue.rule import DEFAULT_NOISE, ConfiguredRule, get_rule
from trainer.layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear
from trainer.mechanisms import Mechanism, mechanism_of

log = logging.getLogger(__name__)


def _feedback_twin(module: nn.Module, rule: ConfiguredRule) -> FeedbackLayer:
    factory = {"device": module.weight.device, "dtype": module.weight.dtype,
               "draw_feedback": False}
    if isinstance(module, nn.Conv2d):
        return FeedbackConv2d(module.in_channels, module.out_channels, module.kernel_size,
                              module.stride, module.padding, module.dilation, module.groups,
                              module.bias is not None, module.padding_mode, rule=rule, **factory)
    return FeedbackLinear(module.in_features, module.out_features, module.bias is not None,
                          rule=rule, **factory)


def _init_feedback(layer: FeedbackLayer, source: nn.Module, copy_weights: bool) -> None:
    """B: a copy of W, or an independent draw at W's scale (the model's own initializer is
    unknown to a generic converter; matching W's standard deviation keeps the error signal's
    scale what the architecture expects)."""
    with torch.no_grad():
        if copy_weights:
            layer.weight_backward.copy_(source.weight)
        else:
            std = float(source.weight.std()) if source.weight.numel() > 1 else 1.0
            layer.weight_backward.normal_(0.0, std if std > 0 else 1.0)


def swap_layers(model: nn.Module, rule: ConfiguredRule, copy_weights: bool = False) -> int:
    """Replace plain Linear/Conv2d children (recursively); returns how many were replaced.

    W and the bias are moved over as the same Parameter objects, so anything holding them keeps
    working. BatchNorm and every other module are left exactly as they are (``convert``
    refuses, before this, a module whose weights it cannot swap).
    """
    if not mechanism_of(rule.rule).swaps_layers():
        return 0
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.Linear, nn.Conv2d)) and not isinstance(child, FeedbackLayer):
            twin = _feedback_twin(child, rule)
            twin.weight = child.weight
            twin.bias = child.bias
            _init_feedback(twin, child, copy_weights)
            twin.train(child.training)
            setattr(model, name, twin)
            count += 1
        else:
            count += swap_layers(child, rule, copy_weights)
    return count


def convert(model: nn.Module, rule: str | ConfiguredRule, *, copy_weights: bool = False,
            noise: str | None = None, noise_batch: int | None = None,
            **metaparameters: object) -> nn.Module:
    """Convert ``model`` in place to train with ``rule``; returns the model.

    ``noise`` picks the input-noise distribution of the noise rules (normal or uniform, both at
    variance sigma^2; default: normal, or the configured rule's own); ``noise_batch`` their
    noise samples per step (default: the layer input's batch, or the configured rule's own).

    The number of converted layers is logged and kept as ``model.creditsweep_converted``.
    """
    if isinstance(rule, str):
        configured = get_rule(rule, noise or DEFAULT_NOISE, noise_batch or 0, **metaparameters)
    elif metaparameters or noise is not None or noise_batch is not None:
        configured = get_rule(rule.name, noise or rule.noise,
                              rule.noise_batch if noise_batch is None else noise_batch,
                              **{**rule.values, **rule.options, **metaparameters})
    else:
        configured = rule
    mechanism = mechanism_of(configured.rule)
    mechanism.check(model, configured.rule, configured.options)
    if mechanism.swaps_layers():
        refuse_unconvertible(model, configured.name)
    count = swap_layers(model, configured, copy_weights)
    for module in model.modules():  # a model that scales its B's (the RNN under Dale's law)
        drawn = getattr(module, "feedback_drawn", None)
        if count and callable(drawn):
            drawn(copy_weights)
    _install_cache_reset(model)
    model.creditsweep_rule = configured  # type: ignore[assignment]  # link reads its options
    mechanism.link(model)
    if mechanism.declaration.update == "model":
        _install_model_update(model, mechanism)
    model.creditsweep_converted = count  # type: ignore[assignment]
    log.info("converted %d layers to %s", count, configured.name)
    return model


# Modules whose parameters act elementwise or select rows (normalisation's affine, PReLU,
# embeddings): no error travels back through a weight matrix there, so there is no weight
# transport to replace and they stay plain under every rule.
TRANSPORT_FREE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.PReLU,
                  nn.Embedding, nn.EmbeddingBag)


def refuse_unconvertible(model: nn.Module, rule: str) -> None:
    """A one-line UsageError for the first module that holds weights convert cannot swap
    (nn.RNN, nn.MultiheadAttention, Conv1d, a module of one's own with a raw Parameter...):
    left plain it would carry its error back through W, exact backprop under any rule."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, FeedbackLayer) + TRANSPORT_FREE):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            raise UsageError(
                f"{rule} cannot convert {name or 'the model'} ({type(module).__name__}): its "
                "weights would carry the error back as exact backprop; convert swaps Linear "
                "and Conv2d (build the model from them, or train it with backprop)")


def _reset_caches(model: nn.Module, inputs: tuple) -> None:
    """The model's forward starts: what its feedback layers kept of an earlier forward that
    no step consumed is dropped, so that the regularizer reads this pass's calls only (a
    layer keeps every call of one pass: each time step of a recurrent model)."""
    for module in model.modules():
        if isinstance(module, FeedbackLayer) and module._regularizer_cache:
            module._regularizer_cache = []


def _install_cache_reset(model: nn.Module) -> None:
    """``_reset_caches`` as the model's forward pre-hook, once per model."""
    if getattr(model, "_creditsweep_cache_reset", None) is None:
        model._creditsweep_cache_reset = model.register_forward_pre_hook(  # type: ignore
            _reset_caches)


def _install_model_update(model: nn.Module, mechanism: Mechanism) -> None:
    """A whole-model mechanism's routine as the model's forward hook (once per model), so that
    every caller's forward and loss.backward() leave the update in each W.grad."""
    handle = getattr(model, "_creditsweep_update_hook", None)
    if handle is not None:
        handle.remove()
    model._creditsweep_update_hook = model.register_forward_hook(  # type: ignore[assignment]
        mechanism.after_forward)


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayer)]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear/Conv2d, plain or feedback (for diagnostics: a plain layer has B = W)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
