"""The update angle: the angle between the W update a rule forms and autograd's true gradient,
measured on replicas so the model is untouched."""

import pytest
import torch
import torch.nn.functional as F

import trainer
from trainer.diagnostics import measure_alignment, update_angles


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)


def _model(arch: str, rule: str, **options):
    torch.manual_seed(0)
    model = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=8)
    return trainer.convert(model, rule, **options)


@pytest.mark.parametrize("rule, options", [
    ("backprop", {}),
    # one sweep at eta = 1 is backprop exactly, so its update is the true gradient
    ("activation_relaxation", {"inference_steps": 1, "inference_lr": 1.0}),
])
def test_an_exact_rule_updates_along_the_true_gradient(rule, options):
    x, y = _batch()
    angles = update_angles(_model("mlp", rule, **options), x, y, F.cross_entropy)
    assert len(angles) == 3 and max(angles.values()) < 1e-2


def test_feedback_alignment_updates_hidden_layers_off_the_gradient_and_its_output_on_it():
    x, y = _batch()
    angles = list(update_angles(_model("mlp", "feedback_alignment"), x, y,
                                F.cross_entropy).values())
    assert min(angles[:-1]) > 45.0  # a random B at initialisation: near-orthogonal
    assert angles[-1] < 1e-3  # the output layer's update needs no B


def test_measuring_leaves_the_model_as_it_was():
    model = _model("resnet8", "feedback_alignment").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    diagnostics = measure_alignment(model, x, y, F.cross_entropy)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert 0.0 < diagnostics["summary"]["update_angle_mean"] < 180.0
