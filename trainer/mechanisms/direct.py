import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import ConfiguredRule, Rule
from trainer.layers import (Calibrated, Direct, DirectError, FeedbackLayer, FeedbackLinear,
                            ModuleError)
from trainer.mechanisms import Mechanism, register_behaviour
from trainer.models import unit_boundaries


class DirectFeedback(Mechanism):
    """Direct feedback alignment (Nøkland 2016): the output error reaches every layer's input
    through a fixed random matrix D of that layer's own (classes x input shape)."""

    name = "direct"

    def init_layer(self, layer: FeedbackLayer) -> None:
        # drawn at the first forward, when the input is known
        layer.register_buffer("direct_feedback", torch.empty(0, dtype=layer.weight.dtype,
                                                             device=layer.weight.device))

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        module_ends(model, options)

    def link(self, model: nn.Module) -> None:
        error = link_direct_feedback(model)
        output = next(m for m in model.modules() if isinstance(m, FeedbackLayer) and m.is_output)
        rule: ConfiguredRule = model.creditsweep_rule  # type: ignore[assignment]
        options = rule.options
        split = module_ends(model, options)
        if split is None:
            return
        cuts, backprop = split
        direct_within = options.get("within") == "direct"
        # each module's error: recorded at its end for within=direct; the last's is e
        sources: list[DirectError] = [ModuleError() for _ in cuts] + [error]
        for cut, source in zip(cuts, sources):
            DirectTap.install(cut, error, rule, output, source if direct_within else None)
        module = 0  # the index of the module a layer sits in, in the model's forward order
        for part in model.modules():
            if any(part is cut for cut in cuts):
                module += 1
            if isinstance(part, FeedbackLayer):
                # a layer that reads a module's output: the boundary replaces its input
                # gradient, and its D buffer is the boundary's
                through_w = (not direct_within or module == backprop
                             or any(part is cut for cut in cuts))
                part.direct_through_weights = through_w
                if not through_w and module < len(cuts):
                    part.direct_source = sources[module]

    def feedback_weight(self, layer: FeedbackLayer) -> Tensor:
        """Inside a module (``modules``, ``hybrid``) the error travels through W."""
        if getattr(layer, "direct_through_weights", False):
            return layer.weight
        return layer.weight_backward

    def direct(self, layer: FeedbackLayer, x: Tensor) -> Direct:
        """The projection for this layer's input ``x``, D drawn on first use."""
        if layer.direct_error is None:
            raise RuntimeError("a direct-feedback layer needs trainer.convert, which links it "
                               "to the model's output error")
        if getattr(layer, "direct_through_weights", False):
            return Direct(layer.direct_error, None, layer.is_output, layer.time_step)
        options = layer.rule.options
        source = getattr(layer, "direct_source", None)
        if source is not None:  # a module's error, known in the backward pass
            return Direct(source, None, layer.is_output, layer.time_step, owner=layer,
                          resolve=lambda shape: module_matrix(layer, shape, source, options))
        matrix = output_error_matrix(layer, layer, layer.direct_error, x, options)
        return Direct(layer.direct_error, matrix, layer.is_output, layer.time_step, owner=layer)


def output_error_matrix(holder: nn.Module, owner: Calibrated, error: DirectError, x: Tensor,
                        options: Mapping[str, Any]) -> Tensor:
    """The D that carries the output error to ``x`` (``holder``'s buffer), drawn at its first
    use, ``owner`` then calibrating it."""
    shape = (error.num_classes, *x.shape[1:])
    if tuple(holder.direct_feedback.shape) != shape:
        if holder.direct_feedback.numel():
            raise RuntimeError(f"direct feedback was drawn for inputs of shape "
                               f"{tuple(holder.direct_feedback.shape[1:])}, got "
                               f"{tuple(x.shape[1:])}")
        holder.direct_feedback = draw_feedback(shape, x, options)
        owner.drawn(options)
    return holder.direct_feedback


def draw_feedback(shape: tuple[int, ...], like: Tensor, options: dict) -> Tensor:
    """A fresh D of ``shape`` (classes x the tensor's shape per example): entries N(0, 1/n)
    for n values per example, so that the projected error has the output error's norm in
    expectation whatever the tensor's size, times ``feedback_scale``, made
    ``feedback_sparsity`` sparse."""
    n = math.prod(shape[1:])
    scale = float(options.get("feedback_scale", 1.0)) / math.sqrt(n)
    matrix = torch.randn(shape, dtype=like.dtype, device=like.device) * scale
    return sparsify(matrix, float(options.get("feedback_sparsity", 0.0)))


MAX_DENSE = 1 << 26  # entries of a dense D from a module's error map (half a GB in float64)


def module_matrix(layer: FeedbackLayer, shape: torch.Size, source: ModuleError,
                  options: Mapping[str, Any]) -> tuple[Tensor, tuple[int, int] | None]:
    """The D that carries a module's error to the input (``shape``) of a layer inside it,
    drawn at its first use, and (dilation, groups) where it is a kernel: both the error and
    the input are maps and ``feedback_dilation`` > 0. A kernel's entries are N(0, s^2) with
    s^2 = g H_s W_s / (9 C_t H_t W_t), so that the delivered error has the module error's
    norm in expectation (C_s/g input channels x 9 taps per output, resampled from H_s x W_s
    to H_t x W_t) but for the taps that fall outside the map at its border; a dense D's are
    N(0, 1/n) as everywhere."""
    target, error = tuple(shape[1:]), source.map_shape
    dilation = int(options.get("feedback_dilation") or 0)
    geometry = None
    if dilation and len(target) == 3 and len(error) == 3:
        groups = math.gcd(int(options.get("feedback_groups") or 1), error[0], target[0])
        wanted: tuple[int, ...] = (error[0], target[0] // groups, 3, 3)
        geometry = (dilation, groups)
    else:
        wanted = (math.prod(error), *target)
    if tuple(layer.direct_feedback.shape) == wanted:
        return layer.direct_feedback, geometry
    if layer.direct_feedback.numel():
        raise RuntimeError(f"direct feedback was drawn of shape "
                           f"{tuple(layer.direct_feedback.shape)}, now {wanted}")
    like = source.error
    assert like is not None
    if geometry is None:
        if math.prod(wanted) > MAX_DENSE:
            raise UsageError(f"direct_feedback_alignment within=direct: a dense D from a "
                             f"{error} error map to a {target} input has "
                             f"{math.prod(wanted):,} entries; set feedback_dilation")
        matrix = draw_feedback(wanted, like, options)
    else:
        std = math.sqrt(geometry[1] * error[1] * error[2]
                        / (9 * target[0] * target[1] * target[2]))
        matrix = sparsify(torch.randn(wanted, dtype=like.dtype, device=like.device) * std
                          * float(options.get("feedback_scale", 1.0)),
                          float(options.get("feedback_sparsity", 0.0)))
    layer.direct_feedback = matrix
    layer.drawn(options)
    return matrix, geometry


def sparsify(matrix: Tensor, sparsity: float) -> Tensor:
    """``matrix`` with a random fraction ``sparsity`` of its entries zeroed and the rest
    scaled by 1/sqrt(1 - sparsity), so that the error it delivers keeps its norm in
    expectation; unchanged (and no numbers drawn) at 0."""
    if not sparsity:
        return matrix
    keep = torch.rand(matrix.shape, device=matrix.device) >= sparsity
    return matrix * keep / math.sqrt(1.0 - sparsity)


@dataclass(frozen=True)
class Split:
    """How ``modules`` and ``hybrid`` group a model's U units (``unit_boundaries``) into
    modules: ``ends[i]``, the index of the unit that ends module i (every module but the
    last), and ``backprop``, the index of hybrid's backprop module (None without hybrid)."""

    ends: tuple[int, ...]
    backprop: int | None


def split_units(units: int, modules: int, hybrid: int, side: str) -> Split:
    """hybrid=N puts N units in one backprop module, on top or at the bottom; the other
    R = U - N units form ``modules`` = K contiguous modules (0: one per unit), module k (from
    1) ending after their unit floor(kR/K). A one-line UsageError for N > U or K > R."""
    if hybrid > units:
        raise UsageError(f"direct_feedback_alignment hybrid={hybrid}: the model has {units} "
                         f"units, so at most {units}")
    rest = units - hybrid
    if modules > rest:
        raise UsageError(f"direct_feedback_alignment modules={modules}: the model has {units} "
                         f"units" + (f", {rest} beside hybrid's {hybrid}," if hybrid else ",")
                         + f" so at most {rest}")
    if not rest:
        return Split((), 0)
    count = modules or rest
    ends = [k * rest // count - 1 for k in range(1, count)]
    if not hybrid:
        return Split(tuple(ends), None)
    if side == "top":
        return Split((*ends, rest - 1), count)
    return Split((hybrid - 1, *(hybrid + end for end in ends)), 0)


def module_ends(model: nn.Module, options: Mapping[str, Any]
                ) -> tuple[list[nn.Module], int | None] | None:
    """The submodules whose input is the output of a module of the model's split, and the
    index of hybrid's backprop module; None for plain DFA (neither option set)."""
    count, hybrid = int(options.get("modules") or 0), int(options.get("hybrid") or 0)
    if not count and not hybrid:
        return None
    boundaries = unit_boundaries(model)
    if boundaries is None:
        raise UsageError(f"direct_feedback_alignment with modules or hybrid needs a model "
                         f"that declares its units (a sequential model, the ResNets), not "
                         f"{type(model).__name__}")
    split = split_units(len(boundaries) + 1, count, hybrid,
                        str(options.get("hybrid_side", "top")))
    return [model.get_submodule(boundaries[i]) for i in split.ends], split.backprop


class _Boundary(torch.autograd.Function):
    """Identity forward; backward: the gradient that reached a module's output is replaced by
    the output error projected there, so every reader of the tensor (a stage's first
    convolution and its shortcut alike) is cut off from the module above at once."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, direct: Direct, module_error: ModuleError | None
                ) -> Tensor:
        ctx.direct, ctx.shape, ctx.module_error = direct, x.shape, module_error
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        delivered = ctx.direct.deliver(ctx.shape, lambda: grad)
        if ctx.module_error is not None:  # the error of the module below, for its layers
            ctx.module_error.record(delivered.detach(), None)
        return delivered, None, None


class DirectTap(Calibrated):
    """A forward pre-hook on the submodule that reads a module's output: the output passes
    through ``_Boundary`` with the submodule's own D (its buffer ``direct_feedback``, drawn
    at the first forward; a feedback layer's is the one plain DFA would use at its input)."""

    def __init__(self, error: DirectError, rule: ConfiguredRule,
                 module_error: ModuleError | None, output: FeedbackLayer) -> None:
        # the configured rule, not its options: a model is deep-copied (diagnostics'
        # replicas), and the rule copies as itself where its read-only options cannot
        self.error, self.rule, self.module_error = error, rule, module_error
        self.output = output  # its exact_backward: the model runs its plain ops (the truth)

    @classmethod
    def install(cls, module: nn.Module, error: DirectError, rule: ConfiguredRule,
                output: FeedbackLayer, module_error: ModuleError | None = None) -> None:
        """``module_error``: where the error delivered here is recorded for the layers of
        the module below (``within=direct``)."""
        if not isinstance(module, FeedbackLayer):
            where = next(module.parameters(), torch.empty(0))
            module.register_buffer("direct_feedback", torch.empty(0, device=where.device))
            module._register_load_state_dict_pre_hook(_load_drawn_shape, with_module=True)
        module.register_forward_pre_hook(cls(error, rule, module_error, output))

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.output.exact_backward:  # trainer.curvature.exact_backward: no cut
            return None
        x = args[0]
        matrix = output_error_matrix(module, self, self.error, x, self.rule.options)
        direct = Direct(self.error, matrix, False, None, owner=self)
        return (_Boundary.apply(x, direct, self.module_error), *args[1:])


def _load_drawn_shape(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """A saved D has its shape; a fresh model's is drawn lazily (empty until then)."""
    saved = state_dict.get(prefix + "direct_feedback")
    if saved is not None and saved.shape != module.direct_feedback.shape:
        module.direct_feedback = torch.empty_like(saved, device=module.direct_feedback.device)


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
