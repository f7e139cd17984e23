"""The leaky rate RNN of Liu et al. (NeurIPS 2022), built from ``nn.Linear`` so that every
rule that converts Linear layers (FA, the sign rules, KP, WM, IA, SA, AA, DFA) trains it
through time:

    v_t = d v_{t-1} + (1 - d)(W_in x_t + W_rec z_{t-1} + b),   z_t = ReLU(v_t),

from v_0 = z_0 = 0, with a linear readout of z_T (classification at the last step) or of
every z_t (regression at every step). ``input``, ``recurrent`` and ``readout`` are called once
per time step, and tell their layer the step (``time_step``), so that a feedback layer keeps
every call and a direct error reaches each step. An image is read row by row.

A temporal rule changes how the error flows back in time, not the forward pass: it sets the
model's ``through_time`` (a ``TimeCarry``), which chooses what of the previous step's state the
next step's graph holds (all of it for BPTT; nothing past a window for truncated BPTT; the
leak path only for e-prop).

With ``excitatory`` > 0 the RNN obeys Dale's law (``trainer.dale``): the first units are
inhibitory, the rest excitatory, every weight leaving a unit (W_rec's column, W_out's column)
has its sign, and ``cell_types()`` declares the types (ModProp averages W over them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from catalogue.tasks import InputSpec, Readout
from trainer import dale


class TimeCarry:
    """What step t's graph holds of step t-1's state: ``(v, z)`` as they are is BPTT."""

    def start(self, steps: int) -> None:
        """Told the sequence's length before its first step (a window counted from the end)."""

    def carry(self, v: Tensor, z: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """(the leak path's v_{t-1}, the recurrent input's z_{t-1}) for step ``t``."""
        return v, z


def as_sequence(x: Tensor) -> Tensor:
    """(N, T, F) as it is; an image batch (N, C, H, W) as H steps of its rows' C*W values."""
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        n, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
    raise ValueError(f"an RNN reads (N, T, F) sequences or (N, C, H, W) images, got "
                     f"shape {tuple(x.shape)}")


class RateRNN(nn.Module):
    def __init__(self, features: int, hidden: int, outputs: int, *, leak: float = 0.0,
                 readout: Readout = "last", recurrent_gain: float | None = None,
                 excitatory: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= leak < 1.0:
            raise ValueError(f"leak d must be in [0, 1), got {leak}")
        self.leak, self.read_every = float(leak), readout == "every"
        self.input = nn.Linear(features, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.readout = nn.Linear(hidden, outputs)
        self.through_time = TimeCarry()
        self.keep_states = False  # True: forward keeps (x_t, v_t, z_t) for a temporal rule
        self.states: list[tuple[Tensor, Tensor, Tensor]] = []
        # Each unit's type (0 inhibitory, 1 excitatory) under Dale's law, else None.
        self.unit_types: Tensor | None
        self.register_buffer("unit_types", dale.unit_types(hidden, excitatory)
                             if excitatory else None)
        # As Liu et al.'s code: He-scaled W_in, b = 0, no self-connections at the start. W_rec
        # ~ N(0, gain^2 / hidden) (spectral radius about the gain, sqrt 2 by default); under
        # Dale's law their signed, balanced W_rec with spectral radius exactly the gain (1 by
        # default) and W_out from the same sampler; otherwise the readout keeps torch's default.
        with torch.no_grad():
            self.input.weight.normal_(0.0, math.sqrt(2.0 / features))
            self.input.bias.zero_()
            if self.unit_types is None:
                gain = math.sqrt(2.0) if recurrent_gain is None else recurrent_gain
                self.recurrent.weight.normal_(0.0, gain / math.sqrt(hidden))
                self.recurrent.weight.fill_diagonal_(0.0)
            else:
                gain = 1.0 if recurrent_gain is None else recurrent_gain
                self.recurrent.weight.copy_(
                    gain * dale.signed_weights(self.unit_types, autapses=False))
                self.readout.weight.copy_(dale.outgoing(self.unit_types, outputs))

    def feedback_drawn(self, copied: bool) -> None:
        """Called by ``convert`` once every B is drawn. Under Dale's law W_rec is scaled to
        its spectral radius (the gain), and an independent B drawn at W's entry scale has a
        radius of 1.6-1.8 times that, so the error it carries back through the steps
        explodes (feedback alignment diverged at the first steps at any rate): such a B is
        scaled to W_rec's radius. A copied B is W's already."""
        layer = self.recurrent
        feedback = getattr(layer, "weight_backward", None)
        if self.unit_types is None or copied or feedback is None or not feedback.numel():
            return
        with torch.no_grad():
            radius = torch.linalg.eigvals(feedback.double()).abs().max()
            if radius > 0:
                target = torch.linalg.eigvals(layer.weight.double()).abs().max()
                feedback.mul_((target / radius).to(feedback.dtype))

    def cell_types(self) -> Tensor | None:
        """Each unit's declared type (0 inhibitory, 1 excitatory) under Dale's law, else None:
        what a rule that groups units by type (ModProp) groups them by."""
        return self.unit_types

    @property
    def hidden(self) -> int:
        return self.recurrent.in_features

    def curvature_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters ``--curvature`` also measures on their own: W_rec, the block of the
        loss's Hessian Liu et al. track along training (``trainer.curvature``)."""
        return {"recurrent": [self.recurrent.weight]}

    def _at(self, t: int) -> None:
        for layer in (self.input, self.recurrent, self.readout):
            layer.time_step = t

    def obey_dale(self) -> None:
        """Project W_rec and W_out back onto Dale's law (a weight whose sign flipped becomes 0).

        Run at the start of every forward pass, so the weights a pass uses always obey,
        whatever rule or optimizer moved them, and ``self.recurrent``/``self.readout`` stay
        plain ``nn.Linear`` weights that every rule converts. Only W is constrained: a rule's
        feedback weights B are not (they are no synapses of the forward network)."""
        if self.unit_types is not None:
            for layer in (self.recurrent, self.readout):
                dale.obey(layer.weight, self.unit_types)

    def forward(self, x: Tensor) -> Tensor:
        self.obey_dale()
        seq = as_sequence(x)
        n, steps, _ = seq.shape
        d = self.leak
        v = z = seq.new_zeros(n, self.hidden)
        outputs, self.states = [], []
        self.through_time.start(steps)
        for t in range(steps):
            self._at(t)
            v_prev, z_prev = self.through_time.carry(v, z, t)
            drive = self.input(seq[:, t]) + self.recurrent(z_prev)
            v = d * v_prev + (1.0 - d) * drive if d else drive
            z = torch.relu(v)
            if self.keep_states:
                self.states.append((seq[:, t], v, z))
            if self.read_every:
                outputs.append(self.readout(z))
        self._at(steps - 1)
        out = torch.stack(outputs, 1) if self.read_every else self.readout(z)
        for layer in (self.input, self.recurrent, self.readout):
            layer.time_step = None
        return out


def rate_rnn(*, spec: InputSpec, outputs: int, readout: Readout, small_input: bool,
             hidden: int = 128, leak: float = 0.0, recurrent_gain: float | None = None,
             excitatory: float = 0.0) -> RateRNN:
    """Options ``hidden`` (units), ``leak`` (d: 0 is a plain ReLU RNN, nearer 1 slower),
    ``recurrent_gain`` (W_rec's scale) and ``excitatory`` (the excitatory fraction under
    Dale's law; 0: none)."""
    return RateRNN(spec.as_sequence().features, int(hidden), outputs, leak=leak,
                   readout=readout, recurrent_gain=recurrent_gain, excitatory=excitatory)
