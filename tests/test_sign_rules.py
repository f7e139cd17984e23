"""The sign-concordant family (Liao et al. 2016): uSF, brSF, frSF, and sign_symmetry's alias."""

import pytest
import torch
import torch.nn.functional as F

import trainer
from catalogue.errors import UsageError
from catalogue.rule import RULES


def _train_steps(rule: str, steps: int = 4, **options):
    """A converted MLP trained a few SGD steps; after each, the B its last backward used and
    the W of every layer."""
    torch.manual_seed(0)
    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    trainer.convert(model, rule, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    layers = [layer for _, layer in trainer.feedback_layers(model)]
    seen = []
    model.train()
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        used = [layer.last_feedback.clone() for layer in layers]
        optimizer.step()
        seen.append((used, [layer.weight.detach().clone() for layer in layers]))
    return seen, layers


@pytest.mark.parametrize("rule", ["usf", "brsf", "frsf"])
def test_sign_rules_follow_W_signs_at_every_step(rule):
    seen, _ = _train_steps(rule)
    for step, (used, _) in enumerate(seen):
        before = seen[step - 1][1] if step else None
        for i, b in enumerate(used):
            if before is not None:  # B of this step carries the signs of W as it was then
                w = before[i]
                nonzero = w != 0
                assert torch.equal(torch.sign(b)[nonzero], torch.sign(w)[nonzero])
            assert (b.abs() > 0).float().mean() > 0.99
    # W changed signs somewhere over the steps, so following them is not trivial.
    assert any((torch.sign(seen[0][1][i]) != torch.sign(seen[-1][1][i])).any()
               for i in range(len(seen[0][1])))


def test_the_magnitudes_are_uniform_redrawn_or_fixed():
    magnitudes = {rule: [[b.abs() for b in used]
                         for used, _ in _train_steps(rule, scale="initial")[0]]
                  for rule in ("usf", "brsf", "frsf")}
    for per_layer in magnitudes["usf"]:  # one value per layer, the same at every step
        for m in per_layer:
            torch.testing.assert_close(m, torch.full_like(m, float(m.flatten()[0])))
    for first, later in zip(magnitudes["usf"][0], magnitudes["usf"][-1]):
        torch.testing.assert_close(first, later)
    for first, later in zip(magnitudes["frsf"][0], magnitudes["frsf"][-1]):
        torch.testing.assert_close(first, later)  # fixed: |B0| throughout
        assert first.std() > 0.1 * first.mean()  # and random, not uniform
    steps = magnitudes["brsf"]
    for a, b in zip(steps, steps[1:]):  # redrawn at every step, at B0's scale
        for m, n in zip(a, b):
            assert not torch.equal(m, n)
            assert float(n.mean()) == pytest.approx(float(m.mean()), rel=0.2)


@pytest.mark.parametrize("rule", ["usf", "brsf", "frsf"])
def test_by_default_B_keeps_the_norm_of_W_as_W_changes(rule):
    seen, _ = _train_steps(rule, steps=5)  # the default: scale=norm
    for step in range(1, len(seen)):
        for b, w in zip(seen[step][0], seen[step - 1][1]):  # B of a step: W as it was then
            torch.testing.assert_close(b.norm(), w.norm(), rtol=1e-4, atol=0)
            assert torch.equal(torch.sign(b), torch.sign(w))
    # At scale=initial B keeps B0's scale while W's grows: the option changes what B is.
    plain, _ = _train_steps(rule, steps=5, scale="initial")
    assert any(abs(float(b.norm() / w.norm()) - 1) > 0.01
               for b, w in zip(plain[-1][0], plain[-2][1]))


def _feedback_after_W_grew(rule: str, scale: str):
    """Each layer's (W, B0, the B its backward used) once W has been scaled past B0's scale
    and given some zero entries."""
    torch.manual_seed(1)
    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    trainer.convert(model, rule, scale=scale)
    layers = [layer for _, layer in trainer.feedback_layers(model)]
    with torch.no_grad():
        layers[0].weight[0, :5] = 0.0  # zero entries carry no sign and no magnitude
        for layer in layers:
            layer.weight.mul_(3.0)
    model.train()
    model(torch.randn(8, 1, 8, 8)).sum().backward()
    return [(layer.weight.detach(), layer.weight_backward.detach(), layer.last_feedback)
            for layer in layers]


def test_scale_in_closed_form():
    """norm: uSF's B = sign(W) ||W|| / sqrt(#nonzero W), whatever B0 was; fit: uSF's
    B = mean|W| sign(W) (the sign matrix's least-squares multiple), frSF's
    B = c |B0| sign(W) with c = sum |W||B0| / sum B0^2 over W's nonzero entries."""
    for w, _, b in _feedback_after_W_grew("usf", "norm"):
        torch.testing.assert_close(b, torch.sign(w) * w.norm() / (w != 0).sum().sqrt())
    for w, _, b in _feedback_after_W_grew("usf", "fit"):
        torch.testing.assert_close(b, torch.sign(w) * w.abs().sum() / (w != 0).sum())
    for w, b0, b in _feedback_after_W_grew("frsf", "norm"):
        raw = b0.abs() * torch.sign(w)
        torch.testing.assert_close(b, raw * w.norm() / raw.norm())
    for w, b0, b in _feedback_after_W_grew("frsf", "fit"):
        live = w != 0
        c = (w.abs() * b0.abs())[live].sum() / b0[live].square().sum()
        torch.testing.assert_close(b, c * b0.abs() * torch.sign(w))
        # what makes it the fit: the residual W - B is orthogonal to B
        assert abs(float((w - b).flatten() @ b.flatten())) < 1e-4 * float(w.norm() ** 2)


def test_a_sign_scale_outside_its_choices_is_refused():
    with pytest.raises(UsageError, match="scale"):
        trainer.get_rule("usf", scale="output")


def test_sign_symmetry_is_frsf_under_its_old_name():
    assert trainer.get_rule("sign_symmetry").rule is RULES.get("frsf")
    assert "sign_symmetry" not in trainer.list_rules() and "sign_symmetry" in RULES


@pytest.mark.slow
def test_new_rules_sweep_and_transfer_on_a_real_ray(ray_session, ray_dir, tmp_path, capsys):
    """Rules with nothing to tune search the learning rate, and transfer with their
    (empty) defaults; the old name still runs its study."""
    import optuna

    from search.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["sweep", "--rule", "usf", "--arch", "mlp", "--epochs", "1", "--trials", "2",
                 "--space", "lr=0.01:0.1", "--storage", url]) == 0
    assert main(["sweep", "--rule", "sign_symmetry", "--arch", "mlp", "--epochs", "1",
                 "--trials", "1", "--space", "lr=0.01:0.1", "--storage", url]) == 0
    assert main(["transfer", "--rule", "brsf", "--defaults", "--targets", "mlp", "--seeds",
                 "1", "--epochs", "1", "--storage", url]) == 0
    capsys.readouterr()
    for name, n in (("usf.mlp.digits", 2), ("sign_symmetry.mlp.digits", 1),
                    ("transfer.brsf.defaults.digits", 2)):
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * n, name
    assert main(["sweep", "--rule", "feedback_alignment", "--arch", "mlp",
                 "--trials", "1", "--storage", url]) == 2
    assert "nothing to tune" in capsys.readouterr().err


def test_diagnostics_leave_brsf_draws_and_its_last_b_alone():
    """measure_alignment on a training-mode brSF model draws no magnitudes from the global
    generator and leaves the B the last step used, so a seeded run is the same with or
    without diagnostics."""
    import torch.nn.functional as F

    from trainer.diagnostics import measure_alignment

    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "brsf").train()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    F.cross_entropy(model(x), y).backward()
    last = {name: layer.last_feedback.clone() for name, layer in trainer.feedback_layers(model)}
    state = torch.get_rng_state()
    measure_alignment(model, x, y, F.cross_entropy)
    assert torch.equal(torch.get_rng_state(), state)
    for name, layer in trainer.feedback_layers(model):
        torch.testing.assert_close(layer.last_feedback, last[name])
