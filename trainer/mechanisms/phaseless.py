"""Phaseless alignment learning (PAL; Max, Kriener, Pineda Garcia, Nowotny, Senn &
Petrovici, "Learning efficient backprojections across cortical hierarchies in real time"), in
discrete time: the filters take one step per training step, during ordinary training, with no
separate phase and no extra forward pass.

Each feedback layer whose input is hidden activity (an input that needs a gradient) does, in a
training-mode forward with gradients enabled:

- noise: it reads x + xi_t instead of x, where xi is an Ornstein-Uhlenbeck process of x's shape
  (one per example slot of the batch and per unit: per channel and position for a
  convolution), stationary std ``sigma``, correlation time ``tau`` steps. The exact
  discretisation, xi_t = a xi_{t-1} + sigma sqrt(1 - a^2) eps_t with a = exp(-1/tau), keeps the
  std at sigma at every step and gives the lag-1 autocorrelation a;
- high-pass: its output r_t = f(x + xi_t, W) + b is filtered with the same tau,
  LP_t = a LP_{t-1} + (1 - a) r_t and r^HP_t = r_t - LP_t, so a constant output (the bias, a
  unit's mean activity) is removed;
- B's update: C_t = kgrad(xi_t, r^HP_t) / (N P), the layer's own weight-gradient map between
  the noise and the high-passed output (r^HP^T xi for a Linear, the transposed correlation over
  every kernel offset for a Conv2d), averaged over the N examples and the P output positions
  (P = 1 for a Linear). The backward pass gives B the gradient -2 C_t, and the rule's decay
  term alpha ||B||^2 adds 2 alpha B (the optimizer applies it as B's weight decay,
  trainer.optim), and B steps by plain SGD, without the momentum W steps with
  (``feedback_momentum``), so that B <- B + 2 lr_B [C_t - alpha B]: the paper's
  dB/dt = eta_B [xi r^HP^T - alpha B] (B has W's shape here, the paper's transposed) in Euler
  steps with eta_B = 2 lr_B, the same alpha and the same fixed point;
- W learns as in feedback alignment: the layer's backward carries the error through B.

**Expectation.** With W fixed and the filters stationary, E[xi_t LP_t^T] = sigma^2/(1 + a) and
so E[C] = sigma^2 a/(1 + a) W for a Linear and for a Conv2d without padding (a padded one
loses the terms that fall on the zeros); the data's part of r^HP is independent of xi and adds
variance, not bias. B's fixed point is B* = sigma^2 a / ((1 + a) alpha) W, its relaxation rate
per step 2 lr_B alpha; with alpha = 0, B grows without bound along W.

**Why B has no momentum.** The paper's B dynamics is first order, and so are its reference
code's Euler steps. Per step C is mostly noise: each step sees a new batch, so the data's part
of r^HP is white from step to step and the high-pass cannot remove it; it adds to each entry
of C a variance sigma^2 E[r^HP^2]/N, against a mean sigma^2 a/(1 + a) W, so B drifts towards
B* and diffuses around its path at once. Momentum beta multiplies both by 1/(1 - beta): with
W's Nesterov 0.9, B took ten times the paper's steps at lr_B, and its noise, which grows with
the spread of the layer's output, made B random-walk to a growing norm. On the last layer,
where the output is the logits, that fed back: a larger B carried a larger error to the
layer below, whose W and activity grew, and with them the noise in every C (Fashion-MNIST
MLP, 3 epochs at lr 0.05: diverged in every seed at the defaults, where feedback alignment
trains; with plain steps 0.739 +- 0.014 over 3 seeds, feedback alignment 0.743 +- 0.023). The
signal per step is small at any rate: at the defaults B moves towards B* by
2 lr_B alpha ~ 1e-5 of the way per step, so B aligns only over ~1e5 steps; within those 3
epochs the angle between W and B stays at 85-88 degrees. The noise still grows with the
output's spread: at larger lr_B per example (digits MLP, lr 0.15 and batch 16) B's random walk
still diverges runs that feedback alignment trains, and a smaller feedback learning rate is
the knob.

**Where the noise sits, and why.** The paper adds xi_l to hidden layer l's potential u_l, its
rate r_l = phi(u_l + xi_l) feeds the layer above, and B_l correlates xi_l with the layer
above's high-passed rate: E[xi r^HP^T] is then proportional to diag(f'_l) W^T diag(f'_{l+1}).
Here each weight layer adds the noise to its own input (the rate r_l, after the nonlinearity)
and high-passes its own output (the potential above, before the nonlinearity). Both ends of the
correlation are then the layer's own input and output, so the rule is layer-local in any graph:
nothing between two weight layers (ReLU, pooling, BatchNorm, a residual sum) enters C, and
E[C] is exactly proportional to W (no f' factors). For linear units the two placements are the
same. Averaging over output positions rather than summing them (the reference code sums) keeps
B*'s scale sigma^2 a/((1 + a) alpha) W at every layer, whatever its feature map's area.

**Skips.** The noise is added inside the layer, so it does not travel a skip: the shortcut and
any other reader of x see the clean x. It does travel forward through the layer's output into
the layers after it (and their skips); layer j's C reads only xi_j, which is independent of
every other layer's noise and of x_j, so the noise arriving from below adds variance to C_j
and no bias (it would not bias it on the skip either).

**Which layers.** A layer reading the data (its input needs no gradient) has no layer below to
send an error to: it gets no noise and its B learns only the decay, as the paper has no
backprojection to the input. Eval mode and no-grad forwards see the clean input and leave the
filters as they are.

**State.** The noise and the low-pass are kept on the layer (non-persistent buffers, one row
per example slot). A smaller batch (an epoch's last) continues the first rows and leaves the
others as they were; a larger one adds rows, noise drawn from the stationary distribution and
a low-pass starting at the output (r^HP = 0 there at its first step); an input of another
per-example shape starts over. The state is left out of checkpoints (it is as large as the
activations): a restored run restarts it in the same way, so it repeats the interrupted run in
expectation, not bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, register_behaviour

NOISE = "phaseless_noise"  # the OU noise at the layer's input, one row per example slot
LOW_PASS = "phaseless_low_pass"  # the low-pass of the layer's output, one row per slot


def decay_factor(tau: float) -> float:
    """a = exp(-1/tau): the OU noise's lag-1 autocorrelation and the low-pass's memory."""
    return math.exp(-1.0 / tau)


def ou_step(noise: Tensor, sigma: float, a: float) -> Tensor:
    """One step of the OU process: a xi + sigma sqrt(1 - a^2) eps, std sigma when xi's is."""
    return noise * a + torch.randn_like(noise) * (sigma * math.sqrt(1.0 - a * a))


def low_pass_step(low_pass: Tensor, r: Tensor, a: float) -> Tensor:
    """LP_t = a LP_{t-1} + (1 - a) r_t; the high-pass is r_t - LP_t."""
    return torch.lerp(r, low_pass, a)


def _rows(state: Tensor, like: Tensor) -> Tensor:
    """The layer's state as it stands for an input like ``like``: empty when it was kept for
    another per-example shape, dtype or device."""
    if state.shape[1:] != like.shape[1:] or state.dtype != like.dtype \
            or state.device != like.device:
        return like.new_empty((0, *like.shape[1:]))
    return state


def _store(layer: Any, name: str, used: Tensor, state: Tensor) -> None:
    """The state after a step on the first rows: those rows, then the untouched rest."""
    rows = used.shape[0]
    setattr(layer, name, used if rows >= state.shape[0] else torch.cat([used, state[rows:]]))


def advance_noise(layer: Any, x: Tensor, sigma: float, a: float) -> Tensor:
    """This step's noise for input ``x``: the kept rows advanced one OU step, new rows drawn
    from the stationary distribution N(0, sigma^2)."""
    state = _rows(getattr(layer, NOISE), x)
    kept = ou_step(state[:x.shape[0]], sigma, a)
    missing = x.shape[0] - kept.shape[0]
    noise = kept if not missing else torch.cat(
        [kept, torch.randn((missing, *x.shape[1:]), dtype=x.dtype, device=x.device) * sigma])
    _store(layer, NOISE, noise, state)
    return noise


def advance_high_pass(layer: Any, out: Tensor, a: float) -> Tensor:
    """The high-passed output r - LP, with the low-pass advanced one step (new rows start at
    the output itself)."""
    r = out.detach()
    state = _rows(getattr(layer, LOW_PASS), r)
    kept = state[:r.shape[0]]
    low = low_pass_step(kept, r[:kept.shape[0]], a)
    if kept.shape[0] < r.shape[0]:
        low = torch.cat([low, r[kept.shape[0]:]])
    _store(layer, LOW_PASS, low, state)
    return r - low


class _Correlation:
    """What B's update needs from one forward: the noise, and the high-passed output that
    the forward leaves once the layer has run."""

    def __init__(self, layer: Any, noise: Tensor) -> None:
        self.layer, self.noise = layer, noise
        self.high_passed: Tensor | None = None

    def feedback_grad(self) -> Tensor | None:
        """-2 C: twice the noise-output correlation, averaged over examples and positions."""
        if self.high_passed is None:
            return None
        layer, hp = self.layer, self.high_passed
        rows = hp.numel() // layer.weight.shape[0]  # examples x output positions
        return layer.kernel_gradient(layer.padded_input(self.noise), hp).mul_(-2.0 / rows)


class _NoisyInput(torch.autograd.Function):
    """x + xi on the way in; on the way back the gradient passes unchanged to x, and B
    receives -2 C (it does not depend on the error: B's update only rides on the backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, feedback: Tensor, correlation: _Correlation) -> Tensor:
        ctx.correlation = correlation
        return x + correlation.noise

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        grad_b = ctx.correlation.feedback_grad() if ctx.needs_input_grad[1] else None
        return grad, grad_b, None


class Phaseless(Mechanism):
    name = "phaseless"

    def init_layer(self, layer: Any) -> None:
        empty = torch.empty(0, dtype=layer.weight.dtype, device=layer.weight.device)
        layer.register_buffer(NOISE, empty, persistent=False)
        layer.register_buffer(LOW_PASS, empty.clone(), persistent=False)

    def layer_forward(self, layer: Any, x: Tensor, forward: Callable[[Tensor], Tensor]
                      ) -> Tensor:
        sigma = float(layer.rule.options["sigma"])
        if not (layer.training and torch.is_grad_enabled() and x.requires_grad and sigma > 0):
            return forward(x)
        a = decay_factor(float(layer.rule.options["tau"]))
        with torch.no_grad():
            correlation = _Correlation(layer, advance_noise(layer, x, sigma, a))
        out = forward(_NoisyInput.apply(x, layer.weight_backward, correlation))
        with torch.no_grad():  # before any in-place op after the layer overwrites the output
            correlation.high_passed = advance_high_pass(layer, out, a)
        return out

    def feedback_momentum(self) -> bool:
        """False: B follows the paper's first-order dynamics (module docstring)."""
        return False

    def plan_reason(self, rule: Rule) -> str | None:
        return ("phaseless alignment's B is pulled by its noise correlation, which the "
                "planner's regularizer does not see: the decay mode it would measure is B's "
                "relaxation rate, but the fixed point it would report is 0, not sigma^2 "
                "a/((1+a) alpha) W")


register_behaviour(Phaseless())
