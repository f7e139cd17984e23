"""Relaxation on a model's computation graph: any model whose weight layers are the feedback
Linear/Conv2d (the MLP, LeNet, the CIFAR and ImageNet ResNets), skip connections included.

**Capture.** During a training forward each weight layer k hands its input z_k and its matrix
M_k (W or B) to the model's ``Capture`` (``Capture.link``), which returns the layer's output
from a link whose backward is the layer's own linear map transposed: M_k^T g_k for a message
g_k at its output (the bias is added after the link, as an ordinary op). Everything between
the links (BatchNorm, nonlinearities, pooling, adds, flatten) is left to autograd: the
"glue". The **nodes** are the distinct tensors the weight layers take as input (the model's
own input, which carries no graph, is not one), plus the output node dL/dy.

**A sweep is one backward pass.** Each node has a hook that, when autograd has gathered
everything flowing into the node from above (the transposed links of its consumer layers and
any parameter-free path, e.g. an identity shortcut), replaces that target t_u by

    x_u <- x_u + eta * (t_u - x_u),

and passes x_u on down. Autograd visits the nodes in reverse topological order, so each node
sees the values its consumers took in the same sweep (Gauss-Seidel, as the reference code's
top-down loop): with eta = 1 one sweep is backprop, and for any eta the fixed point is
x*_u = dL/dz_u. T sweeps are T calls of the autograd engine on the retained graph, with no
Python per node beyond the hook and the link's backward; the links skip W's gradient except
in the pass that forms the update.

**The update.** The last sweep's message at each link, g_k (the glue's vector-Jacobian product
of the final nodes downstream), gives dW_k = kernel_gradient(z_k, g_k) with the frozen
feedforward input; the glue's own parameters (BatchNorm's weight and bias, the biases) get the
glue's vector-Jacobian product at the final nodes, from the same pass.

**derivatives=off** drops f' of the glue's elementwise nonlinearities (autograd's ReLU,
tanh, sigmoid, GELU... nodes; pooling's routing and BatchNorm stay) from the messages: a hook
on each such node passes its gradient through unchanged. The update keeps f': after the T
sweeps, one readout pass, with f' back on, hands each node its final value and forms the
gradients from it.

**Start values.** The nodes start from ``start_scale`` times their feedforward values;
``start_scale = 0`` starts them from zero, as predictive coding's errors with fixed
predictions do (the same dynamics; a caller that wants -dL/dx flips the sign of what it
passes and reads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from trainer.layers import FeedbackLayer

# Autograd's nodes for elementwise nonlinearities (by their name less the version digit):
# the f' that derivatives=off drops from the messages.
NONLINEARITY_NODES = frozenset({
    "ReluBackward", "ThresholdBackward", "LeakyReluBackward", "RreluWithNoiseBackward",
    "GeluBackward", "EluBackward", "CeluBackward", "SeluBackward", "SiluBackward",
    "MishBackward", "SigmoidBackward", "LogSigmoidBackward", "TanhBackward",
    "SoftplusBackward", "HardtanhBackward", "HardswishBackward", "HardsigmoidBackward"})


class _Link(torch.autograd.Function):
    """A weight layer's linear map f(z, W), whose backward is the map transposed through the
    capture's matrix M (W or B), and W's gradient only when the capture asks for it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, anchor: Tensor, layer: "FeedbackLayer",
                matrix: Tensor, capture: "Capture") -> Tensor:
        ctx.save_for_backward(x)
        ctx.layer, ctx.matrix, ctx.capture = layer, matrix, capture
        return layer.apply_kernel(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        layer, capture = ctx.layer, ctx.capture
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if capture.readout:  # the node below takes its final value, whatever comes
                grad_x = grad.new_zeros(()).expand(x.shape)
            else:
                grad_x = layer.apply_transpose(grad, ctx.matrix, x.shape)
        if capture.weight_grads and ctx.needs_input_grad[1]:
            grad_w = layer.kernel_gradient(x, grad)
        return grad_x, grad_w, None, None, None, None


class Capture:
    """What one training forward leaves for the relaxation: the links of the weight layers
    that ran, in order, and the nodes (their distinct inputs that carry a graph).

    The switches the links and the node hooks read during a pass: ``weight_grads`` (form
    W's gradient), ``readout`` (nodes ignore what reaches them and pass their final value),
    ``drop_derivatives`` (the nonlinearities' nodes pass their gradient through)."""

    def __init__(self) -> None:
        self.layers: list["FeedbackLayer"] = []
        self._layer_ids: set[int] = set()
        self.nodes: list[Tensor] = []
        self._node_index: dict[int, int] = {}
        self._anchor: Tensor | None = None
        self.weight_grads = False
        self.readout = False
        self.drop_derivatives = False
        self._sweep: _Sweep | None = None

    def link(self, layer: "FeedbackLayer", x: Tensor, matrix: Tensor) -> Tensor:
        """The layer's output for input ``x``, its message going back through ``matrix``."""
        if self._anchor is None:  # one leaf every link takes: a pass asking for it runs them all
            self._anchor = torch.zeros((), device=x.device, requires_grad=True)
        if x.grad_fn is not None and id(x) not in self._node_index:
            index = self._node_index[id(x)] = len(self.nodes)
            self.nodes.append(x)
            x.register_hook(lambda grad, index=index: self._visit(index, grad))
        if id(layer) not in self._layer_ids:
            self._layer_ids.add(id(layer))
            self.layers.append(layer)
        out = _Link.apply(x, layer.weight, self._anchor, layer, matrix, self)
        if layer.bias is not None:  # broadcast over what follows the channel dimension
            out = out + layer.bias.view(-1, *([1] * (layer.weight.dim() - 2)))
        return out

    def _visit(self, index: int, grad: Tensor) -> Tensor:
        if self._sweep is None:
            raise RuntimeError("a relaxation node was reached outside the relaxation; the "
                               "model's output must be used through its wrapper")
        return self._sweep.visit(index, grad, self.readout)

    def relax(self, output: Tensor, top: Tensor, params: Sequence[Tensor], *, steps: int,
              lr: float, start_scale: float = 1.0, derivatives: bool = True
              ) -> tuple[list[Tensor | None], Tensor]:
        """Relax the nodes for ``steps`` sweeps from ``top`` = dL/d``output``; returns the
        update of each of ``params`` (None where none reaches it) and the last sweep's
        relative change ||x_T - x_{T-1}|| / ||x_T|| over the nodes. Frees the graph."""
        if steps < 1:
            raise ValueError(f"relaxation steps must be at least 1, got {steps}")
        self._sweep = _Sweep([None if start_scale == 0 else z.detach() * start_scale
                              for z in self.nodes], lr)
        handles = [] if derivatives else self._hook_nonlinearities(output)
        targets = list(params) or [self._anchor]
        try:
            self.drop_derivatives = not derivatives
            for step in range(steps):
                self._sweep.last = step == steps - 1
                self.weight_grads = forms_update = self._sweep.last and derivatives
                grads = torch.autograd.grad(output, targets if forms_update else [self._anchor],
                                            top, retain_graph=not forms_update,
                                            allow_unused=True)
            if not derivatives:  # the readout: f' back on, each node at its final value
                self.drop_derivatives, self.readout, self.weight_grads = False, True, True
                grads = torch.autograd.grad(output, targets, top, allow_unused=True)
            return list(grads[:len(params)]), self._sweep.residual()
        finally:
            for handle in handles:
                handle.remove()
            self._sweep = None
            self.nodes, self._node_index = [], {}
            self.weight_grads = self.readout = self.drop_derivatives = False

    def _hook_nonlinearities(self, output: Tensor) -> list[Any]:
        """A hook on every elementwise nonlinearity's node of the graph that, while
        ``drop_derivatives`` is on, passes the gradient through unchanged."""
        def identity(grad_inputs: tuple, grad_outputs: tuple) -> tuple | None:
            return (grad_outputs[0],) if self.drop_derivatives else None

        handles, seen, stack = [], set(), [output.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node.name().rstrip("0123456789") in NONLINEARITY_NODES:
                handles.append(node.register_hook(identity))
            stack.extend(next_node for next_node, _ in node.next_functions)
        return handles


class _Sweep:
    """The nodes' values across the sweeps, and the last sweep's change."""

    def __init__(self, values: list[Tensor | None], lr: float) -> None:
        self.values, self.lr = values, lr
        self.last = False
        self.change: Tensor | float = 0.0
        self.size: Tensor | float = 0.0

    def visit(self, index: int, target: Tensor, readout: bool) -> Tensor:
        old = self.values[index]
        if readout:
            return old  # type: ignore[return-value]
        if old is None:
            new = target * self.lr
        else:
            new = target if self.lr == 1 else torch.lerp(old, target, self.lr)
        if self.last:
            step = new if old is None else new - old
            self.change = self.change + step.square().sum()
            self.size = self.size + new.square().sum()
        self.values[index] = new
        return new

    def residual(self) -> Tensor:
        if not isinstance(self.size, Tensor):
            return torch.zeros(())
        return torch.nan_to_num(self.change.sqrt() / self.size.sqrt(), nan=0.0)  # type: ignore[union-attr]


class Recorder:
    """Shared by a model's weight layers: holds a fresh ``Capture`` from the start of a
    training forward (``open``) until the routine at its end takes it (``close``)."""

    def __init__(self) -> None:
        self.capture: Capture | None = None

    def open(self) -> None:
        self.capture = Capture()

    def close(self) -> Capture | None:
        capture, self.capture = self.capture, None
        return capture
