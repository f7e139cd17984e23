import torch
from torch import Tensor

from trainer.layers import FeedbackLayer
from trainer.mechanisms import Mechanism, register_behaviour


class Sign(Mechanism):
    """B = magnitude * sign(W), following W's signs as W changes (Liao et al. 2016)."""

    name = "sign"

    def feedback_weight(self, layer: FeedbackLayer) -> Tensor:
        """The rule's magnitude times sign(W). brSF draws its magnitudes afresh for every
        training forward (from the global generator, so seeded runs and checkpoint restores
        repeat them); outside training it shows |B0| * sign(W). With the rule's ``norm`` at
        ``weight`` the result is rescaled to W's Frobenius norm, so that B keeps pace with W
        as training grows it."""
        magnitude = layer.rule.rule.sign_magnitude
        weight = layer.weight.detach()
        b0, signs = layer.weight_backward.detach(), torch.sign(weight)
        if magnitude == "uniform":
            feedback = b0.abs().mean() * signs
        elif magnitude == "redrawn" and layer.training and torch.is_grad_enabled():
            feedback = (torch.randn_like(b0) * b0.std()).abs_() * signs
        else:
            feedback = b0.abs() * signs
        if layer.rule.options.get("norm") == "weight":
            feedback = feedback * (weight.norm() / feedback.norm().clamp_min(1e-12))
        layer.last_feedback = feedback  # what the last forward's backward carries the error by
        return feedback


register_behaviour(Sign())
