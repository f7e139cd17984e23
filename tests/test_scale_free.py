"""Scale-free curvature: where BatchNorm follows every weight layer, scaling W by c leaves the
function as it is and divides λ_max by c²; λ_max·‖W‖² does not move. And every epoch's
diagnostics carry ‖W‖ and ‖B‖ per layer."""

import pytest
import torch
from torch import nn

import trainer
from trainer.curvature import ALL, curvature_groups, task_hessian_blocks, top_eigenvalue
from trainer.generalization import scale_free


def _normalised_net() -> nn.Module:
    """Every weight layer followed by a BatchNorm without affine terms, no biases: L(cW) = L(W)
    once the running statistics are scaled with W (eps, which would break it, negligible)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=False),
                         nn.BatchNorm1d(16, eps=1e-12, affine=False), nn.ReLU(),
                         nn.Linear(16, 4, bias=False), nn.BatchNorm1d(4, eps=1e-12, affine=False)).double()


def _curvature(model: nn.Module, batch) -> dict[str, float]:
    with task_hessian_blocks(model, [batch], groups=curvature_groups(model)) as hvps:
        top = top_eigenvalue(hvps[ALL], curvature_groups(model)[ALL], steps=30)
    return {"top": top, **scale_free(model, top)}


@pytest.mark.parametrize("c", [0.5, 3.0])
def test_scaled_top_eigenvalue_does_not_move_when_the_weights_are_scaled(c):
    model = _normalised_net()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, 12, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (32,), generator=g))
    model.train()
    for _ in range(3):  # running statistics that are the data's, not the initial ones
        model(batch[0])
    before = _curvature(model, batch)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(c)
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.mul_(c)
                module.running_var.mul_(c * c)
        out_after = model.eval()(batch[0])
    after = _curvature(model, batch)
    assert after["top"] == pytest.approx(before["top"] / c**2, rel=1e-6)
    assert after["top_eigenvalue_scaled"] == pytest.approx(before["top_eigenvalue_scaled"],
                                                           rel=1e-6)
    assert after["weight_norm_sq"] == pytest.approx(c**2 * before["weight_norm_sq"], rel=1e-9)
    assert torch.isfinite(out_after).all()


def test_curvature_records_the_scaled_eigenvalue_and_diagnostics_the_norms():
    result = trainer.train(dict(rule="feedback_alignment", arch="mlp", epochs=1,
                                curvature=True, curvature_batches=1, curvature_steps=4,
                                max_steps_per_epoch=5))
    final = result.history[-1]
    curvature = final["curvature"]
    assert curvature["top_eigenvalue_scaled"] == pytest.approx(
        curvature["top_eigenvalue"] * curvature["weight_norm_sq"])
    layers = final["diagnostics"]["layers"]
    assert len(layers) == 3
    for name, values in layers.items():
        # ‖B‖ is FA's fixed random B: its own draw, not W's norm
        assert values["weight_norm"] > 0 and values["feedback_norm"] > 0
        assert values["feedback_norm"] == pytest.approx(values["norm_ratio"]
                                                        * values["weight_norm"])
    squared = sum(v["weight_norm"] ** 2 for v in layers.values())
    assert curvature["weight_norm_sq"] == pytest.approx(squared, rel=1e-6)
