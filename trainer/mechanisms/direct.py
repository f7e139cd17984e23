import math

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from trainer.layers import Direct, DirectError, FeedbackLayer, FeedbackLinear
from trainer.mechanisms import Mechanism, register_behaviour


class DirectFeedback(Mechanism):
    """Direct feedback alignment (Nøkland 2016): the output error reaches every layer's input
    through a fixed random matrix D of that layer's own (classes x input shape)."""

    name = "direct"

    def init_layer(self, layer: FeedbackLayer) -> None:
        # drawn at the first forward, when the input is known
        layer.register_buffer("direct_feedback", torch.empty(0, dtype=layer.weight.dtype,
                                                             device=layer.weight.device))

    def link(self, model: nn.Module) -> None:
        link_direct_feedback(model)

    def direct(self, layer: FeedbackLayer, x: Tensor) -> Direct:
        """The projection for this layer's input ``x``, D drawn on first use."""
        if layer.direct_error is None:
            raise RuntimeError("a direct-feedback layer needs trainer.convert, which links it "
                               "to the model's output error")
        options = layer.rule.options
        shape = (layer.direct_error.num_classes, *x.shape[1:])
        if tuple(layer.direct_feedback.shape) != shape:
            if layer.direct_feedback.numel():
                raise RuntimeError(f"direct feedback was drawn for inputs of shape "
                                   f"{tuple(layer.direct_feedback.shape[1:])}, got "
                                   f"{tuple(x.shape[1:])}")
            layer.direct_feedback = draw_feedback(shape, x, options)
            layer.calibration_pending = options.get("feedback_init") == "calibrated"
        return Direct(layer.direct_error, layer.direct_feedback, layer.is_output,
                      layer.time_step, owner=layer)


def draw_feedback(shape: tuple[int, ...], like: Tensor, options: dict) -> Tensor:
    """A fresh D of ``shape`` (classes x the tensor's shape per example): entries N(0, 1/n)
    for n values per example, so that the projected error has the output error's norm in
    expectation whatever the tensor's size, times ``feedback_scale``."""
    n = math.prod(shape[1:])
    scale = float(options.get("feedback_scale", 1.0)) / math.sqrt(n)
    return torch.randn(shape, dtype=like.dtype, device=like.device) * scale


def link_direct_feedback(model: nn.Module) -> DirectError:
    """The model's last feedback layer is its output layer (a Linear whose outputs are the
    logits); it records the output error every layer projects."""
    layers = [m for m in model.modules() if isinstance(m, FeedbackLayer)]
    if not layers or not isinstance(layers[-1], FeedbackLinear):
        raise UsageError("direct feedback alignment needs a model whose last weight layer is a "
                         "Linear producing the logits")
    error = DirectError(layers[-1].out_features)
    for layer in layers:
        layer.direct_error = error
        layer.is_output = layer is layers[-1]
    return error


register_behaviour(DirectFeedback())
