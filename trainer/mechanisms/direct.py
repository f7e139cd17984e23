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
        """The projection for this layer's input ``x``, D drawn on first use. Its entries are
        N(0, 1/n) for an input of n values per example, so that the projected error has the
        output error's norm in expectation, whatever the layer's size."""
        if layer.direct_error is None:
            raise RuntimeError("a direct-feedback layer needs trainer.convert, which links it "
                               "to the model's output error")
        shape = (layer.direct_error.num_classes, *x.shape[1:])
        if tuple(layer.direct_feedback.shape) != shape:
            if layer.direct_feedback.numel():
                raise RuntimeError(f"direct feedback was drawn for inputs of shape "
                                   f"{tuple(layer.direct_feedback.shape[1:])}, got "
                                   f"{tuple(x.shape[1:])}")
            layer.direct_feedback = torch.randn(shape, dtype=x.dtype, device=x.device) \
                / math.sqrt(x[0].numel())
        return Direct(layer.direct_error, layer.direct_feedback, layer.is_output,
                      layer.time_step)


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
