import torch
from torch import Tensor

from trainer.layers import FeedbackLayer
from trainer.mechanisms import Mechanism, register_behaviour


def _initial(weight: Tensor, feedback: Tensor) -> Tensor | float:
    return 1.0


def _norm(weight: Tensor, feedback: Tensor) -> Tensor:
    """||B|| = ||W||."""
    return weight.norm() / feedback.norm().clamp_min(1e-12)


def _fit(weight: Tensor, feedback: Tensor) -> Tensor:
    """The least-squares multiple: B - W is orthogonal to B."""
    return (weight * feedback).sum() / feedback.square().sum().clamp_min(1e-24)


# The rule option ``scale``: the factor c in B = c * magnitude * sign(W).
SCALES = {"initial": _initial, "norm": _norm, "fit": _fit}


class Sign(Mechanism):
    """B = magnitude * sign(W), following W's signs as W changes (Liao et al. 2016)."""

    name = "sign"

    def feedback_weight(self, layer: FeedbackLayer) -> Tensor:
        """The rule's magnitude times sign(W). brSF draws its magnitudes afresh for every
        training forward (from the global generator, so seeded runs and checkpoint restores
        repeat them); outside training it shows |B0| * sign(W). The rule's ``scale`` then
        rescales it per layer so that B keeps pace with W as training grows it (SCALES)."""
        magnitude = layer.rule.rule.sign_magnitude
        weight = layer.weight.detach()
        b0, signs = layer.weight_backward.detach(), torch.sign(weight)
        if magnitude == "uniform":
            feedback = b0.abs().mean() * signs
        elif magnitude == "redrawn" and layer.training and torch.is_grad_enabled():
            feedback = (torch.randn_like(b0) * b0.std()).abs_() * signs
        else:
            feedback = b0.abs() * signs
        feedback = feedback * SCALES[layer.rule.options.get("scale", "norm")](weight, feedback)
        layer.last_feedback = feedback  # what the last forward's backward carries the error by
        return feedback


register_behaviour(Sign())
