"""How each credit-assignment mechanism runs: the hooks the trainer calls, one module each.

``catalogue.mechanism`` declares a mechanism without torch (its name, what B is, whether B
learns); a module here gives it behaviour by registering a ``Mechanism`` under the same name.
The trainer asks the rule's mechanism instead of branching on kinds:

- ``convert``: whether the model is one the mechanism can train (``check``), whether layers are swapped at all (``swaps_layers``), what a new layer holds
  besides W and B (``init_layer``), what ties the converted model together (``link``);
- the update: per layer, the B the backward pass carries the error by (``feedback_weight``),
  whether B also receives W's gradient (``feedback_gets_weight_grad``), a layer's direct
  projection of the output error (``direct``) and what wraps a layer's own forward
  (``layer_forward``: input noise and B's update formed beside it); or, for a mechanism
  declared with ``update="model"``, ``after_forward``, run as the model's forward hook,
  which may wrap the output so that its backward forms every layer's update. Either way, after the forward pass
  and loss.backward() every W.grad holds the rule's update direction;
- B's training: B is a trained parameter, in the optimizer's feedback groups, exactly when the
  declaration says it learns; ``plan_reason`` says why B's planner does not apply (None: it
  does); ``feedback_momentum`` whether the optimizer's momentum drives B's steps;
- ``diagnostics``: a layer's weight angle, norm ratio and gradient angle under the mechanism.

Every module here is imported the first time a mechanism is looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch

from catalogue.mechanism import MECHANISMS, MechanismDeclaration
from catalogue.registry import Registry, import_submodules

from trainer.angles import vector_angle

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from catalogue.rule import Rule

# A feedback layer (trainer.layers, which looks its mechanism up here) and its direct
# projection, named without importing that module.
FeedbackLayer = Any
Direct = Any


class Mechanism:
    """A mechanism's behaviour; the defaults are a layer whose backward carries the error
    through its own parameter B, which nothing trains."""

    name: ClassVar[str]

    @property
    def declaration(self) -> MechanismDeclaration:
        return MECHANISMS.get(self.name)

    # --- convert -------------------------------------------------------------------------------

    def check(self, model: "nn.Module", rule: "Rule", options: Mapping[str, Any]) -> None:
        """Before anything is swapped: raise a one-line UsageError for a model the mechanism
        cannot train under the rule's configured ``options`` (the default takes any model)."""

    def swaps_layers(self) -> bool:
        """False: convert leaves the model's layers plain (B is W)."""
        return True

    def init_layer(self, layer: "FeedbackLayer") -> None:
        """Anything a new feedback layer holds besides W and B (buffers, state)."""

    def link(self, model: "nn.Module") -> None:
        """After the layers are swapped: what ties them together (a shared error)."""

    # --- the update ----------------------------------------------------------------------------

    def feedback_weight(self, layer: "FeedbackLayer") -> "Tensor":
        """The B the layer's backward carries the error by."""
        return layer.weight_backward

    def feedback_gets_weight_grad(self, rule: "Rule") -> bool:
        """Whether B also receives W's gradient (and so follows W)."""
        return False

    def direct(self, layer: "FeedbackLayer", x: "Tensor") -> "Direct | None":
        """The layer's projection of the output error, or None for the usual backward."""
        return None

    def layer_forward(self, layer: "FeedbackLayer", x: "Tensor",
                      forward: "Callable[[Tensor], Tensor]") -> "Tensor":
        """A feedback layer's forward on ``x``: ``forward(x)``, the layer's own op. A mechanism
        may perturb the input and leave something for the backward pass around it (phaseless
        alignment's input noise and its B update); the default does nothing else."""
        return forward(x)

    def after_forward(self, model: "nn.Module", inputs: tuple, output: Any) -> Any:
        """``update="model"``: the model's forward hook; may return the output wrapped so that
        its backward forms every W.grad. Per-layer mechanisms are never called here."""
        return None

    # --- B's training and diagnostics -----------------------------------------------------------

    def plan_reason(self, rule: "Rule") -> str | None:
        """Why B's dynamics planner does not apply to this rule, or None when it does."""
        if self.declaration.learns_feedback:
            return None
        return f"its B is not learned ({self.name})"

    def feedback_momentum(self) -> bool:
        """Whether a learned B steps with the optimizer's momentum, as W does. False: plain
        SGD steps, for a rule whose B follows a first-order dynamics of its own."""
        return True

    def diagnostics(self, layer: "FeedbackLayer", gradient_angle: float | None
                    ) -> dict[str, float]:
        """The layer's weight angle and norm ratio of B to W, and the angle between the input
        gradients through B and through W."""
        W, B = layer.weight.detach(), layer.feedback_weight().detach()
        w_norm = float(W.norm())
        return {"weight_angle": vector_angle(W, B),
                "norm_ratio": float(B.norm()) / w_norm if w_norm else float("nan"),
                "gradient_angle": float(gradient_angle or 0.0)}


class ModelUpdate(torch.autograd.Function):
    """A whole-model mechanism's carrier: identity on the model's output, applied to the
    output detached together with the parameters whose updates it forms, so that the
    subclass's backward, given dL/dy, runs the mechanism's routine and returns every update
    as those parameters' gradients, and autograd adds nothing else. ``state`` is what the
    routine needs from the forward pass."""

    @staticmethod
    def forward(ctx: Any, output: "Tensor", state: dict, *params: "Tensor") -> "Tensor":
        ctx.state = state
        return output.view_as(output)


# What a whole-model mechanism leaves on the model after each training step, as a 0-dim
# tensor under an attribute (the relaxation's last residual, the inversion's smallest step):
# epoch record field -> model attribute. The loop copies them into each epoch's record.
STEP_FIELDS: dict[str, str] = {}


def step_field(field: str, attribute: str) -> str:
    """Declare that ``attribute`` on a model is copied into each epoch's record as ``field``;
    returns the attribute, for the mechanism to set."""
    STEP_FIELDS[field] = attribute
    return attribute


def step_fields(model: "nn.Module") -> dict[str, float]:
    """The fields a model's mechanism left after its last training step."""
    return {field: float(getattr(model, attribute)) for field, attribute in STEP_FIELDS.items()
            if getattr(model, attribute, None) is not None}


BEHAVIOURS: Registry[Mechanism] = Registry(
    "mechanism behaviour", discover=import_submodules("trainer.mechanisms"))


def register_behaviour(mechanism: Mechanism) -> Mechanism:
    """Register a mechanism's behaviour under its declared name."""
    MECHANISMS.get(mechanism.name)  # declared first, in catalogue.mechanisms
    return BEHAVIOURS.register(mechanism.name, mechanism)


def mechanism_of(rule: "Rule") -> Mechanism:
    """The behaviour of the rule's mechanism."""
    if rule.mechanism not in BEHAVIOURS:
        raise RuntimeError(f"mechanism {rule.mechanism!r} (rule {rule.name!r}) is declared but "
                           "has no behaviour: add a module to trainer/mechanisms/ that calls "
                           "register_behaviour")
    return BEHAVIOURS.get(rule.mechanism)
