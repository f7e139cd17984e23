"""Predictive coding (Whittington & Bogacz 2017; Millidge, Tschantz & Buckley 2022) with the
relaxations of Millidge, Tschantz, Seth & Buckley 2020, on two engines:

- **fixed predictions, identity error weights: the model's computation graph** (any model:
  the MLP, LeNet, the CIFAR and ImageNet ResNets). With the predictions frozen at the forward
  pass the errors obey eps_u <- eps_u - eta * (eps_u - sum_k J_ku^T eps_k) from eps_u = 0
  (each value node starts at its prediction), under the output error -dL/dy: activation
  relaxation's dynamics from a zero start with the sign flipped. The dynamics are linear, so
  the mechanism is activation relaxation's (``trainer.mechanisms.relaxation``: the capture,
  the sweeps as autograd passes, BatchNorm's and the biases' updates, derivatives=off,
  learned and random B) with its nodes started from zero (``start_scale``); the nodes it
  relaxes are -eps_u / N, and the update it forms from them is the one below. The nodes are
  the weight layers' distinct inputs, so a node is a sum over shortcuts or a BatchNorm's
  output as the graph has it;
- **strict predictions, or learned error weights: block by block down a sequential model**
  (the MLP, LeNet): the blocks of ``trainer.relaxation.sequential`` (one weight layer and the
  parameter-free modules after it), described below. Strict predictions are recomputed from
  the value node under them block by block, and V mixes the channels of the one weight layer
  producing a node: neither has a counterpart on a graph whose nodes are sums over shortcuts,
  so ``check`` refuses other models in one line (the declaration's ``option_families`` says
  so before anything runs). With fixed predictions and identity error weights this engine
  gives the graph engine's numbers (tests/test_predictive_coding.py compares them).

The sequential engine. The forward pass is the ordinary one. Its output is wrapped
(``after_forward``) in an autograd Function whose backward, given dL/dy from loss.backward(),
lets the value nodes settle and writes every layer's update:

- value node mu_l is block l's output (l = 1..L-1), started at its feedforward value; its
  prediction mu_hat_l is block l applied to mu_{l-1}, frozen at the forward pass
  (prediction=fixed) or recomputed from the current nodes at every step (strict); its error is
  eps_l = mu_l - mu_hat_l, or eps_l = mu_l - mu_hat_l V_l with learned error weights;
- the output error is eps_L = -dL/dy of the task loss at the forward pass (so cross-entropy
  works), held through the settling: the backward pass knows the loss's gradient there, not
  the loss. For strict predictions this is the loss's first-order expansion (as Torch2PC's
  strict mode, which reads dL/dy at the current output, with the loss's curvature left out);
  hard-clamping the output to a target would instead keep the settled errors a fixed fraction
  away from the gradient however small the output error (the Jacobians' J J^T term);
- T top-down sweeps, mu_l <- mu_l - eta * (eps_l - J_{l+1}^T eps_{l+1}), each node taking its
  upper error from the same sweep (as activation relaxation: with fixed predictions and
  eta = 1 one sweep is backprop), where J_{l+1}^T v = M^T (f' * P^T v) is the block's
  vector-Jacobian product through M = W (backward=exact) or B (learned, random), f' dropped
  with derivatives=off (pooling's routing stays: it is linear);
- with fixed predictions the errors obey eps_l <- eps_l - eta * (eps_l - J^T eps_{l+1}): the
  activation relaxation's dynamics started from zero, with the fixed point eps_l = -dL/dx_l;
  strict predictions re-evaluate every prediction, f' and J at the current value nodes, so
  their fixed point differs from the gradient at first order in the output error: close to
  it only while the output error is small;
- W's update is dW_l = -(f'(a_l) * P_l^T eps_l)^T mu_{l-1}, with the settled errors and the
  block's input: the feedforward one for fixed predictions, the settled value node for strict
  ones (f' and P at that input; f' kept whatever ``derivatives`` says, as the reference
  code); its sign makes it a descent direction, autograd's gradient at the fixed point;
  backward=learned: B receives W's update (dB = dW^T in the paper's layout, no decay).

Learned error weights (RelaxedPredictiveCoding's ``use_error_weights``): V_l mixes the
prediction's channels (a Linear's features, a Conv2d's channels at every position) before the
comparison, eps_l = mu_l - mu_hat_l V_l; the backward message and W's update do not go through
V (as the reference code). V is a buffer of the hidden block's weight layer (``error_weight``,
saved with the model), drawn as the reference code does, |N(0, 0.05^2)| entries with no
identity part, and updated in this backward pass, after the settling, by the paper's rule
dV = -rate * mu_hat^T eps / N (``error_weights_lr``: V is not a parameter, so no optimizer,
learning-rate schedule or curvature measurement sees it; the reference steps V at W's rate
without the 2 it puts on W's step, so the default is half the training default lr). The output
node has no V.

As activation relaxation, the settling runs in per-example units (the output error is
-N * dL/dy for a batch of N rows; the updates are divided by N again). On either engine the
last sweep's change of the value nodes relative to the hidden errors,
||mu_T - mu_{T-1}|| / ||eps_T|| (with fixed predictions the errors' own relative change), is
left in ``model.creditsweep_relaxation_residual`` for the training loop's epoch records:
relative to the errors, not to the values, which the feedforward part would make look settled
long before the errors are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import Rule
from trainer.mechanisms import ModelUpdate, register_behaviour
from trainer.mechanisms.relaxation import RESIDUAL, Frozen, Relaxation, chain

ERROR_WEIGHTS = "error_weight"  # a hidden block's weight layer's buffer V (learned)
ERROR_WEIGHTS_STD = 0.05  # the reference code's draw, |N(0, std^2)|


@dataclass(frozen=True)
class Settings:
    """The rule's options, as the settling reads them."""

    steps: int
    lr: float
    strict: bool
    backward: str
    derivatives: bool
    learned_errors: bool
    error_lr: float

    @classmethod
    def of(cls, options: Any) -> "Settings":
        return cls(int(options["inference_steps"]), float(options["inference_lr"]),
                   options["prediction"] == "strict", str(options["backward"]),
                   options["derivatives"] == "on", options["error_weights"] == "learned",
                   float(options["error_weights_lr"]))

    @property
    def sequential(self) -> bool:
        """Whether the settling needs the block-by-block engine (a sequential model):
        strict predictions are recomputed block by block, and V belongs to the one weight
        layer producing a node."""
        return self.strict or self.learned_errors


def _channels(prediction: Tensor, weights: Tensor) -> Tensor:
    """The prediction as (rows, channels, positions): a Flatten after a convolution keeps its
    channels outermost, so the weight layer's channels are recovered by a reshape."""
    return prediction.reshape(prediction.shape[0], weights.shape[0], -1)


def through_error_weights(prediction: Tensor, weights: Tensor | None) -> Tensor:
    """mu_hat V: V mixes the weight layer's output channels at every position."""
    if weights is None:
        return prediction
    mixed = torch.einsum("ncp,cd->ndp", _channels(prediction, weights), weights)
    return mixed.reshape(prediction.shape)


def error_weights_hebbian(prediction: Tensor, error: Tensor, weights: Tensor) -> Tensor:
    """mu_hat^T eps, summed over the rows and positions (V's shape)."""
    return torch.einsum("ncp,ndp->cd", _channels(prediction, weights),
                        _channels(error, weights))


@dataclass
class Settled:
    """The settled network: value nodes mu_1..mu_{L-1}, errors eps_1..eps_L, each block at its
    (final) input, and the last sweep's relative change of the value nodes."""

    values: list[Tensor]
    errors: list[Tensor]
    blocks: list[Frozen]
    residual: Tensor


def settle(blocks: list[Frozen], feedback: list[Tensor], output_error: Tensor,
           settings: Settings, error_weights: list[Tensor | None] | None = None,
           refreeze: Callable[[int, Tensor], Frozen] | None = None) -> Settled:
    """Let the value nodes settle for ``settings.steps`` top-down sweeps.

    ``blocks[l]`` is block l+1 at the forward pass (its ``x`` the feedforward mu_l), ``feedback``
    the matrix each block's message goes through, ``output_error`` eps_L at the forward pass,
    ``error_weights`` each hidden node's V (None: identity). Strict predictions rebuild a block
    at the current value of its input node with ``refreeze(index, value)``; the output error
    is held (module docstring)."""
    strict = settings.strict and refreeze is not None
    frozen = list(blocks)
    depth = len(frozen)
    weights = list(error_weights or [None] * depth)

    def predict(k: int) -> Tensor:
        return through_error_weights(frozen[k].out, weights[k])

    def rebuild(k: int) -> None:  # block k at the current value of its input node
        frozen[k] = refreeze(k, values[k - 1])  # type: ignore[misc]
        predictions[k] = predict(k)

    values = [block.x.clone() for block in frozen[1:]]
    predictions = [predict(k) for k in range(depth - 1)]
    errors = [v - p for v, p in zip(values, predictions)] + [output_error]
    change = output_error.new_zeros(())
    for step in range(settings.steps if depth > 1 else 0):
        last = step == settings.steps - 1
        if strict:  # the output's Jacobian at the current top value node
            frozen[-1] = refreeze(depth - 1, values[-1])  # type: ignore[misc]
        for k in range(depth - 2, -1, -1):  # value node k is block k+1's input
            upper = frozen[k + 1]
            message = upper.transpose(upper.to_weight_output(errors[k + 1],
                                                             settings.derivatives),
                                      feedback[k + 1])
            if strict and k > 0:
                rebuild(k)
                errors[k] = values[k] - predictions[k]
            delta = settings.lr * (errors[k] - message)
            values[k] = values[k] - delta
            errors[k] = errors[k] - delta
            if last:
                change = change + delta.square().sum()
    if strict and depth > 1:  # the errors of the settled values, each block at its input
        for k in range(1, depth - 1):
            rebuild(k)
        frozen[-1] = refreeze(depth - 1, values[-1])  # type: ignore[misc]
        errors = [v - p for v, p in zip(values, predictions)] + [output_error]
    size = sum((e.square().sum() for e in errors[:-1]), output_error.new_zeros(()))
    residual = torch.nan_to_num(change.sqrt() / size.sqrt(), nan=0.0)
    return Settled(values, errors, frozen, residual)


def freeze(prefix: list[nn.Module], chained: list[Any], x: Tensor) -> list[Frozen]:
    """Every block at the forward pass of ``x`` (``chain``'s leading modules, then its blocks,
    each a weight layer and the modules after it)."""
    blocks: list[Frozen] = []
    with torch.no_grad():
        for module in prefix:
            x = module(x)
        for block in chained:
            blocks.append(Frozen(block.layer, block.post, x))
            x = blocks[-1].out
    return blocks


class _PredictiveCoding(ModelUpdate):
    """Identity on the output; its backward settles the network and returns every layer's
    update as the gradient of W, the bias and (learned) B, and steps the learned error
    weights. The output it receives is detached, so autograd adds nothing else."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        state = ctx.state
        settings: Settings = state["settings"]
        rows = grad.shape[0]
        with torch.no_grad():
            settled = settle(state["blocks"], state["feedback"], -grad * rows, settings,
                             state["error_weights"], state["refreeze"])
            setattr(state["model"], RESIDUAL, settled.residual.detach())
            for block, error, weights in zip(settled.blocks, settled.errors,
                                             state["error_weights"]):
                if weights is not None:
                    hebbian = error_weights_hebbian(block.out, error, weights)
                    weights.sub_(hebbian, alpha=settings.error_lr / rows)
            grads: list[Tensor | None] = []
            for block, error, slots in zip(settled.blocks, settled.errors, state["slots"]):
                grad_w, grad_bias = block.weight_grad(block.to_weight_output(error))
                grad_w = grad_w / -rows
                grads.append(grad_w)
                if slots["bias"]:
                    grads.append(grad_bias / -rows)
                if slots["feedback"]:
                    grads.append(grad_w)  # dB = dW^T in the paper's layout: B has W's shape
        return (None, None, *grads)


def _refuse(rule_name: str, model: nn.Module, settings: Settings) -> UsageError:
    option, why = (("prediction=strict", "strict predictions are recomputed block by block")
                   if settings.strict else
                   ("error_weights=learned", "V mixes the channels of the one weight layer "
                    "producing each value node, which a graph's nodes (sums over shortcuts, "
                    "BatchNorm between layers) do not have"))
    return UsageError(
        f"{rule_name} with {option} needs an nn.Sequential of Linear/Conv2d blocks ending in "
        f"a Linear (the MLP, LeNet); this {type(model).__name__} is not one: {why}")


def _settings(model: nn.Module) -> Settings:
    """The options of the model's (first) feedback layer, which every layer shares."""
    layer = next(m for m in model.modules() if hasattr(m, "weight_backward"))
    return Settings.of(layer.rule.options)


class PredictiveCoding(Relaxation):
    """Fixed predictions with identity error weights: the errors are activation relaxation's
    nodes started from zero, on the model's graph (the inherited capture, link and update).
    Strict predictions or learned error weights: the block-by-block settling above, on
    sequential models."""

    name = "predictive_coding"

    def check(self, model: nn.Module, rule: Rule, options: Mapping[str, Any]) -> None:
        settings = Settings.of(options)
        if not settings.sequential:
            super().check(model, rule, options)
            return
        try:
            chain(model, rule.name)
        except UsageError:
            raise _refuse(rule.name, model, settings) from None

    def link(self, model: nn.Module) -> None:
        """The graph engine's capture, or for the sequential settling with learned error
        weights a V per hidden node, on the weight layer producing it."""
        settings = _settings(model)
        if not settings.sequential:
            super().link(model)
            return
        if not settings.learned_errors:
            return
        _, blocks = chain(model)
        for block in blocks[:-1]:
            layer = block.layer
            channels = layer.out_channels if isinstance(layer, nn.Conv2d) \
                else layer.out_features
            draw = torch.empty(channels, channels, dtype=layer.weight.dtype,
                               device=layer.weight.device)
            layer.register_buffer(ERROR_WEIGHTS, draw.normal_(0.0, ERROR_WEIGHTS_STD).abs_())

    def start_scale(self, rows: int) -> float:
        """The errors start at zero: the value nodes at their predictions."""
        return 0.0

    def plan_reason(self, rule: Rule) -> str | None:
        return ("predictive coding's B is W, a fixed draw or W's updates (dB = dW^T), with no "
                "regularizer for the planner to pace")

    def after_forward(self, model: nn.Module, inputs: tuple, output: Any) -> Any:
        settings = _settings(model)
        if not settings.sequential:
            return super().after_forward(model, inputs, output)
        if not (model.training and torch.is_grad_enabled()) or not isinstance(output, Tensor):
            return None
        prefix, chained = chain(model)
        layers = [block.layer for block in chained]
        if any(getattr(layer, "exact_backward", False) for layer in layers):
            return None  # trainer.curvature asks for the true gradient
        blocks = freeze(prefix, chained, inputs[0])
        slots, params = [], []
        for layer in layers:
            params.append(layer.weight)
            has_bias = layer.bias is not None
            if has_bias:
                params.append(layer.bias)
            learned = settings.backward == "learned" and layer.weight_backward.requires_grad
            if learned:
                params.append(layer.weight_backward)
            slots.append({"bias": has_bias, "feedback": learned})
        feedback = [layer.weight.detach() if settings.backward == "exact"
                    else layer.weight_backward.detach() for layer in layers]
        error_weights = [getattr(layer, ERROR_WEIGHTS, None) if settings.learned_errors
                         else None for layer in layers[:-1]] + [None]
        state = {"model": model, "blocks": blocks, "feedback": feedback, "settings": settings,
                 "error_weights": error_weights, "slots": slots,
                 "refreeze": _refreezer(chained) if settings.strict else None}
        return _PredictiveCoding.apply(output.detach(), state, *params)


def _refreezer(chained: list[Any]) -> Callable[[int, Tensor], Frozen]:
    """Block k rebuilt at a new input (strict predictions)."""
    def refreeze(k: int, x: Tensor) -> Frozen:
        return Frozen(chained[k].layer, chained[k].post, x)
    return refreeze


register_behaviour(PredictiveCoding())
