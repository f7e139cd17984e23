"""Linear and Conv2d layers whose backward pass carries the error through B instead of W.

Each layer keeps the forward weight ``weight`` (W) and a feedback weight ``weight_backward`` (B)
of the same shape. The forward pass is the ordinary one; a custom autograd Function replaces the
backward so that ``grad_input`` is computed with B while ``grad_weight`` and ``grad_bias`` stay the
ordinary ones. Which B is used, and whether B also receives W's gradient (Kolen-Pollack), is
decided by the rule the layer was built for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.angles import vector_angle
from trainer.mechanisms import Mechanism, mechanism_of

if TYPE_CHECKING:  # pragma: no cover
    from catalogue.rule import ConfiguredRule

__all__ = ["Calibrated", "Direct", "DirectError", "FeedbackConv2d", "FeedbackLayer",
           "FeedbackLinear", "GradientProbe", "ModuleError", "vector_angle"]


class DirectError:
    """The output error e = dL/dlogits of the backward pass under way, shared by a model's
    direct-feedback layers: the output layer records it (its backward runs first, as it is the
    last layer of the forward pass) and every layer projects it to its own input.

    In a recurrent model each call is a time step (``FeedbackLayer.time_step``, set by the
    model): the output layer records the error of each step it was read at, and a layer's call
    at step t projects that step's error, or, at a step without an output (a sequence read out
    at its last step), the error of the latest step read, as DFA through time does."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.errors: dict[int | None, Tensor] = {}

    @property
    def error(self) -> Tensor | None:
        """The error of the latest step recorded (a feedforward model's only one)."""
        if not self.errors:
            return None
        return self.errors[max(self.errors, key=lambda k: -1 if k is None else k)]

    def record(self, error: Tensor, step: int | None) -> None:
        """The output error of a call at ``step``. A backward pass meets the output's calls
        from the last step down, so a step at or after one already held starts a new pass."""
        if step is None or any(k is None or k <= step for k in self.errors):
            self.errors = {}
        self.errors[step] = error

    def _at(self, step: int | None, batch: int) -> Tensor:
        error = self.errors.get(step) if step is not None else None
        if error is None:
            error = self.error
        if error is None or error.shape[0] != batch:
            raise RuntimeError("direct feedback: no output error for this batch; the model's "
                               "output layer must be its last feedback layer")
        return error

    def project(self, matrix: Tensor, shape: torch.Size, step: int | None = None) -> Tensor:
        """e @ D: the error, through a layer's fixed random matrix D (classes x input shape),
        as the gradient of that layer's input. A module's error map (``ModuleError``) is
        flattened first: D is then (its values per example x input shape)."""
        return (self._at(step, shape[0]).flatten(1) @ matrix.flatten(1)).view(shape)

    def project_map(self, kernel: Tensor, shape: torch.Size, dilation: int, groups: int
                    ) -> Tensor:
        """A module's error map through a fixed random kernel: the transposed convolution
        (3x3, ``dilation``, ``groups``, stride 1, padded to keep the map's size) and then
        nearest-neighbour resampling to the input's height and width (docs/design.md)."""
        source = self._at(None, shape[0])
        pad = dilation * (kernel.shape[-1] - 1) // 2
        out = F.conv_transpose2d(source, kernel, padding=pad, dilation=dilation, groups=groups)
        if out.shape[-2:] != shape[-2:]:
            out = F.interpolate(out, size=tuple(shape[-2:]), mode="nearest")
        return out


class ModuleError(DirectError):
    """The error a module's output received (``modules`` with ``within=direct``), recorded by
    the boundary after the module in the backward pass, before the module's own layers run;
    each layer inside projects it to its input. Its shape is known from the first backward."""

    def __init__(self) -> None:
        super().__init__(0)

    @property
    def map_shape(self) -> tuple[int, ...]:
        error = self.error
        if error is None:
            raise RuntimeError("direct feedback: a module's error is read before it was "
                               "recorded")
        return tuple(error.shape[1:])


class Calibrated:
    """Something that owns a direct-feedback matrix D and may still have to calibrate it:
    ``calibration_pending`` is set when D is drawn under ``feedback_init=calibrated``, with
    the factor (``feedback_scale``) the calibrated norm is then multiplied by."""

    calibration_pending: bool = False
    calibration_scale: float = 1.0

    def drawn(self, options: Mapping[str, Any]) -> None:
        """A fresh D: calibrate it at its first backward if the options say so."""
        self.calibration_pending = options.get("feedback_init") == "calibrated"
        self.calibration_scale = float(options.get("feedback_scale", 1.0))


@dataclass
class Direct:
    """What one layer's backward needs for direct feedback alignment. ``matrix`` None: the
    layer only records the output error (if it is the output layer) and carries its input
    gradient through W, as inside a backprop module (``modules``, ``hybrid``)."""

    error: DirectError
    matrix: Tensor | None
    is_output: bool
    step: int | None = None  # the time step of this call (recurrent models), else None
    owner: Calibrated | None = None  # D's owner, when D's norm is calibrated at first use
    # Where the error's shape is known only in the backward pass (a module's error): D from
    # this at the first use, and for a kernel, its (dilation, groups).
    resolve: Callable[[torch.Size], tuple[Tensor, tuple[int, int] | None]] | None = None

    @property
    def projects(self) -> bool:
        """False: the layer carries its input gradient through W."""
        return self.matrix is not None or self.resolve is not None

    def deliver(self, shape: torch.Size, reference: Callable[[], Tensor]) -> Tensor:
        """e @ D as the gradient of a tensor of ``shape``. At D's first backward under
        ``feedback_init=calibrated``, D is rescaled once, in place, so that this delivered
        error has the norm of ``reference()`` (the error backprop would carry to the same
        tensor from the error above it) times ``feedback_scale``."""
        matrix, geometry = self.matrix, None
        if self.resolve is not None:
            matrix, geometry = self.resolve(shape)
        assert matrix is not None
        if geometry is None:
            delivered = self.error.project(matrix, shape, self.step)
        else:
            delivered = self.error.project_map(matrix, shape, *geometry)
        if self.owner is not None and self.owner.calibration_pending:
            target = self.owner.calibration_scale * float(reference().norm())
            norm = float(delivered.norm())
            if target > 0 and norm > 0 and math.isfinite(target / norm):
                matrix.mul_(target / norm)
                delivered = delivered * (target / norm)
                self.owner.calibration_pending = False
        return delivered


class GradientProbe:
    """Asks a layer's backward to also compute the input gradient through W, for the angle:
    over every call of the layer in the pass (each time step of a recurrent model), as the
    angle between the concatenated gradients."""

    def __init__(self) -> None:
        self._dot = self._through_b = self._through_w = 0.0
        self.calls = 0

    def add(self, through_b: Tensor, through_w: Tensor) -> None:
        a, b = through_b.detach().flatten().double(), through_w.detach().flatten().double()
        self._dot += float(a @ b)
        self._through_b += float(a @ a)
        self._through_w += float(b @ b)
        self.calls += 1

    @property
    def gradient_angle(self) -> float | None:
        if not self.calls:
            return None
        denom = math.sqrt(self._through_b * self._through_w)
        if denom == 0:
            return 0.0
        return math.degrees(math.acos(max(-1.0, min(1.0, self._dot / denom))))


class _FeedbackLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor, bias: Tensor | None,
                feedback_gets_weight_grad: bool, probe: GradientProbe | None,
                direct: Direct | None = None) -> Tensor:
        ctx.save_for_backward(x, weight, feedback)
        ctx.direct = direct
        ctx.has_bias = bias is not None
        ctx.feedback_gets_weight_grad = feedback_gets_weight_grad
        ctx.probe = probe
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_bias = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b = grad_bias = None
        direct = ctx.direct
        if direct is not None and direct.is_output:
            direct.error.record(grad_out.detach(), direct.step)
        if direct is not None and direct.projects and (need_x or ctx.probe is not None):
            grad_x = direct.deliver(x.shape, lambda: grad_out @ weight)
        elif need_x or ctx.probe is not None:
            grad_x = grad_out @ feedback
        if ctx.probe is not None:
            ctx.probe.add(grad_x, grad_out @ weight)
            if not need_x:
                grad_x = None
        flat_out = grad_out.reshape(-1, grad_out.shape[-1])
        if need_w or (need_b and ctx.feedback_gets_weight_grad):
            grad_w = flat_out.t() @ x.reshape(-1, x.shape[-1])
        if need_b and ctx.feedback_gets_weight_grad:
            grad_b = grad_w
        if need_bias:
            grad_bias = flat_out.sum(0)
        return grad_x, grad_w if need_w else None, grad_b, grad_bias, None, None, None


class _FeedbackConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor, bias: Tensor | None,
                geometry: tuple, feedback_gets_weight_grad: bool,
                probe: GradientProbe | None, direct: Direct | None = None) -> Tensor:
        stride, padding, dilation, groups = geometry
        ctx.save_for_backward(x, weight, feedback)
        ctx.direct = direct
        ctx.geometry = geometry
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        ctx.feedback_gets_weight_grad = feedback_gets_weight_grad
        ctx.probe = probe
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        x, weight, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        need_x, need_w, need_b, need_bias = ctx.needs_input_grad[:4]
        want_w = need_w or (need_b and ctx.feedback_gets_weight_grad)
        projects = ctx.direct is not None and ctx.direct.projects
        # One fused call: grad_input reads B's values (B sits in the weight slot); the weight
        # gradient only needs the weight's shape, so it is W's ordinary gradient.
        grad_x, grad_w, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, x, feedback, ctx.bias_sizes, list(stride), list(padding), list(dilation),
            False, [0, 0], groups,
            [bool((need_x or ctx.probe is not None) and not projects), bool(want_w),
             bool(need_bias)],
        )
        if projects and (need_x or ctx.probe is not None):
            grad_x = ctx.direct.deliver(x.shape, lambda: torch.nn.grad.conv2d_input(
                x.shape, weight, grad_out, stride, padding, dilation, groups))
        if ctx.probe is not None:
            via_w = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride, padding,
                                               dilation, groups)
            ctx.probe.add(grad_x, via_w)
            if not need_x:
                grad_x = None
        grad_b = grad_w if (need_b and ctx.feedback_gets_weight_grad) else None
        return (grad_x, grad_w if need_w else None, grad_b, grad_bias if need_bias else None,
                None, None, None, None)


class FeedbackLayer(Calibrated):
    """Mixin shared by the feedback Linear and Conv2d: the rule, B, and the regularizer cache."""

    weight: nn.Parameter
    weight_backward: nn.Parameter
    bias: nn.Parameter | None
    rule: "ConfiguredRule"
    probe: GradientProbe | None
    _regularizer_cache: list[tuple[Tensor, Tensor, int]]
    time_step: int | None  # set by a recurrent model before each call: the call's step

    def _init_feedback(self, rule: "ConfiguredRule", draw_feedback: bool) -> None:
        """``draw_feedback``: give B its own draw at W's initial scale. Without it B is left
        uninitialised for a caller that sets it at once (``convert``), so that converting a
        model draws no extra random numbers and seeded runs stay what they were."""
        self.rule = rule
        self.probe = None
        self.last_feedback: Tensor | None = None
        self.exact_backward = False  # True: the plain op, so autograd gives the true gradient
        self._regularizer_cache = []
        self.time_step = None
        self.weight_backward = nn.Parameter(torch.empty_like(self.weight),
                                            requires_grad=rule.rule.learns_feedback)
        self.direct_error: DirectError | None = None  # set by convert for direct feedback
        self.is_output = False
        self.mechanism.init_layer(self)
        if draw_feedback:
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.weight_backward, a=5 ** 0.5)

    @property
    def mechanism(self) -> Mechanism:
        """The behaviour of the rule's mechanism (``trainer.mechanisms``)."""
        return mechanism_of(self.rule.rule)

    def feedback_weight(self) -> Tensor:
        """The B the backward pass uses, as the rule's mechanism gives it: the parameter
        itself, or for a sign rule a magnitude times sign(W)."""
        return self.mechanism.feedback_weight(self)

    def _direct(self, x: Tensor) -> Direct | None:
        """The mechanism's projection of the output error to this layer's input ``x``, or None
        for the usual backward through B."""
        return self.mechanism.direct(self, x)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """A saved D has its shape; the fresh layer's is drawn lazily (empty until then)."""
        saved = state_dict.get(prefix + "direct_feedback")
        if saved is not None and hasattr(self, "direct_feedback") \
                and saved.shape != self.direct_feedback.shape:
            self.direct_feedback = torch.empty_like(saved, device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]

    def _remember_for_regularizer(self, x: Tensor, out: Tensor) -> None:
        """Every call of the training forward is kept (a recurrent layer is called at each
        time step), so that the regularizer sees all the inputs the layer carried."""
        if self.rule.rule.needs_layer_input and self.training and torch.is_grad_enabled():
            self._regularizer_cache.append((x.detach(), out.detach(), out._version))

    def pop_regularizer_cache(self) -> tuple[Tensor, Tensor | None] | None:
        """(input, output) of the last training forward, every call's stacked along the batch
        (one call: as it was); the output is None when an in-place op (e.g.
        ReLU(inplace=True)) has since overwritten one of them."""
        calls, self._regularizer_cache = self._regularizer_cache, []
        if not calls:
            return None
        intact = all(out._version == version for _, out, version in calls)
        if len(calls) == 1:
            x, out, _ = calls[0]
            return x, out if intact else None
        x = torch.cat([c[0] for c in calls])
        return x, torch.cat([c[1] for c in calls]) if intact else None

    def padded_input(self, x: Tensor) -> Tensor:
        """``x`` as the kernel maps below read it: a Conv2d's explicit padding applied."""
        return x

    # The layer's linear maps with an arbitrary kernel K, used by the primitives.
    def apply_kernel(self, x: Tensor, kernel: Tensor) -> Tensor:  # f(x, K)
        raise NotImplementedError

    def apply_transpose(self, r: Tensor, kernel: Tensor, input_shape: torch.Size) -> Tensor:
        raise NotImplementedError  # g(r, K)

    def kernel_gradient(self, x: Tensor, grad_out: Tensor) -> Tensor:
        """d/dK of <grad_out, f(x, K)>: the weight-gradient map, linear in both arguments."""
        raise NotImplementedError

    def without_bias(self, out: Tensor) -> Tensor:
        """f(x, W) recovered from the layer's output."""
        raise NotImplementedError


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` whose input gradient is ``grad_out @ B``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rule: "ConfiguredRule", draw_feedback: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_feedback(rule, draw_feedback)

    def forward(self, x: Tensor) -> Tensor:
        if self.exact_backward:
            return F.linear(x, self.weight, self.bias)
        return self.mechanism.layer_forward(self, x, self._feedback_forward)

    def _feedback_forward(self, x: Tensor) -> Tensor:
        out = _FeedbackLinearFn.apply(x, self.weight, self.feedback_weight(), self.bias,
                                      self.mechanism.feedback_gets_weight_grad(self.rule.rule),
                                      self.probe,
                                      self._direct(x))
        self._remember_for_regularizer(x, out)
        return out

    def apply_kernel(self, x: Tensor, kernel: Tensor) -> Tensor:
        return F.linear(x, kernel)

    def apply_transpose(self, r: Tensor, kernel: Tensor, input_shape: torch.Size) -> Tensor:
        return r @ kernel

    def kernel_gradient(self, x: Tensor, grad_out: Tensor) -> Tensor:
        return grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])

    def without_bias(self, out: Tensor) -> Tensor:
        return out if self.bias is None else out - self.bias.detach()


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    """``nn.Conv2d`` whose input gradient is the transposed convolution with B.

    Stride, padding (ints, 'valid', 'same', any padding_mode), dilation, groups and bias are all
    supported; non-zero padding modes and 'same' are applied as an explicit pad of the input.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, rule: "ConfiguredRule",
                 draw_feedback: bool = True, device: Any = None, dtype: Any = None) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device=device, dtype=dtype)
        self._init_feedback(rule, draw_feedback)

    def _padded(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Pad explicitly where F.conv2d's int padding cannot express the layer's padding."""
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            return F.pad(x, self._reversed_padding_repeated_twice, mode=mode), (0, 0)
        return x, tuple(self.padding)  # type: ignore[return-value]

    def padded_input(self, x: Tensor) -> Tensor:
        return self._padded(x)[0]

    def _geometry(self, padding: tuple[int, int]) -> tuple:
        return (tuple(self.stride), padding, tuple(self.dilation), self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.exact_backward:
            x_padded, padding = self._padded(x)
            stride, pad, dilation, groups = self._geometry(padding)
            return F.conv2d(x_padded, self.weight, self.bias, stride, pad, dilation, groups)
        return self.mechanism.layer_forward(self, x, self._feedback_forward)

    def _feedback_forward(self, x: Tensor) -> Tensor:
        x_padded, padding = self._padded(x)
        out = _FeedbackConv2dFn.apply(x_padded, self.weight, self.feedback_weight(), self.bias,
                                      self._geometry(padding),
                                      self.mechanism.feedback_gets_weight_grad(self.rule.rule),
                                      self.probe,
                                      self._direct(x_padded))
        self._remember_for_regularizer(x_padded, out)
        return out

    # The primitives receive x already padded (the cache stores the padded input; noise is drawn
    # at that shape), so the kernel maps use the int padding that remains.
    def _int_padding(self) -> tuple[int, int]:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return (0, 0)
        return tuple(self.padding)  # type: ignore[return-value]

    def apply_kernel(self, x: Tensor, kernel: Tensor) -> Tensor:
        return F.conv2d(x, kernel, None, self.stride, self._int_padding(), self.dilation,
                        self.groups)

    def apply_transpose(self, r: Tensor, kernel: Tensor, input_shape: torch.Size) -> Tensor:
        return torch.nn.grad.conv2d_input(input_shape, kernel, r, self.stride,
                                          self._int_padding(), self.dilation, self.groups)

    def kernel_gradient(self, x: Tensor, grad_out: Tensor) -> Tensor:
        return torch.ops.aten.convolution_backward(
            grad_out, x, self.weight, None, list(self.stride), list(self._int_padding()),
            list(self.dilation), False, [0, 0], self.groups, [False, True, False])[1]

    def without_bias(self, out: Tensor) -> Tensor:
        return out if self.bias is None else out - self.bias.detach().view(1, -1, 1, 1)
