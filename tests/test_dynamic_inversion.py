"""Dynamic inversion (the ``dynamic_inversion`` mechanism) against closed forms: the loop's
steady state is B(WB - alpha I)^-1 delta (W's pseudo-inverse for B = -W^T, alpha = 0), the
Euler simulation reaches it, the loop's spectra match the full matrices' eigenvalues, an
unstable B is stabilised or the trial fails with the reason, and each option changes what it
says; other architectures are refused in one line."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from catalogue.errors import UsageError
from trainer.loop import Diverged
from trainer.mechanisms import mechanism_of
from trainer.mechanisms.dynamic_inversion import (STEP, LoopSpectrum, joint_matrix, simulate,
                                                  stabilize, steady_state)
from trainer.mechanisms.relaxation import RESIDUAL

RULE = "dynamic_inversion"


def _angle(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    cosine = float(a @ b / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def _loop(d_out, d_in, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in)
    delta = torch.randn(5, d_out, generator=g, dtype=torch.float64)
    return W, delta


class _Tiny(nn.Sequential):
    def __init__(self, widths=(6, 8, 7, 3)):
        torch.manual_seed(1)
        layers = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.Tanh())
        super().__init__(*layers)


def _inverted(model, x, y, **options):
    converted = trainer.convert(copy.deepcopy(model), RULE, **options)
    converted.train()
    F.cross_entropy(converted(x), y).backward()
    return converted


def _weight_grads(model):
    return [m.weight.grad for m in model if isinstance(m, nn.Linear)]


def test_the_rule_declares_its_options_and_a_fixed_B():
    declared = trainer.rule_declaration(RULE)
    assert declared.mechanism == "dynamic_inversion" and not declared.terms
    assert not declared.learns_feedback and declared.declared_mechanism.update == "model"
    assert dict(trainer.get_rule(RULE).options) == {
        "inference_steps": 100, "dt": 0.5, "alpha": 0.1, "solver": "dynamic",
        "backward": "transpose", "stabilize": "ssa"}
    assert "planner" in mechanism_of(declared).plan_reason(declared)
    alpha = declared.option("alpha")
    assert alpha.low == 0 and not alpha.log  # the exact inversion (alpha = 0) is searchable


@pytest.mark.parametrize("d_out, d_in", [(4, 9), (6, 6)])
def test_with_B_minus_W_transpose_and_no_leak_the_steady_state_is_the_pseudo_inverse(d_out,
                                                                                     d_in):
    W, delta = _loop(d_out, d_in)
    want = delta @ torch.linalg.pinv(W).t()
    torch.testing.assert_close(steady_state(W, -W.t(), 0.0, delta), want)
    simulated, _, _ = simulate(W, -W.t(), 0.0, delta, dt=0.5, steps=3000)
    for got, row in zip(simulated, want):
        assert _angle(got, row) < 1.0
    # a leak is Tikhonov's regularised inverse W^T (W W^T + alpha I)^-1
    tikhonov = delta @ torch.linalg.solve(W @ W.t() + 0.1 * torch.eye(d_out), W).double()
    torch.testing.assert_close(steady_state(W, -W.t(), 0.1, delta), tikhonov)


@pytest.mark.parametrize("d_out, d_in", [(4, 9), (9, 4)])
def test_the_steady_state_is_B_times_the_inverted_loop_for_any_stable_B(d_out, d_in):
    W, delta = _loop(d_out, d_in)
    B = -W.t() + 0.1 * torch.randn(d_in, d_out, dtype=torch.float64)
    alpha = 0.05
    assert LoopSpectrum.of(W, B).abscissa(alpha) < 0
    if d_out <= d_in:
        want = delta @ (B @ torch.linalg.inv(W @ B - alpha * torch.eye(d_out))).t()
    else:  # the same r from the other square system
        want = delta @ torch.linalg.solve(B @ W - alpha * torch.eye(d_in), B).t()
    torch.testing.assert_close(steady_state(W, B, alpha, delta), want)
    simulated, change, size = simulate(W, B, alpha, delta, dt=0.5, steps=2000)
    for got, row in zip(simulated, want):
        assert _angle(got, row) < 1.0
    assert float(change.sqrt() / size.sqrt()) < 1e-6


def _euler_map(W, B, alpha, dt):
    """One Euler step (upper units first) as a matrix on (r, r_up)."""
    d_out, d_in = W.shape
    eye_in, eye_out = torch.eye(d_in, dtype=W.dtype), torch.eye(d_out, dtype=W.dtype)
    top = torch.cat([(1 - dt) * eye_in + dt * dt * B @ W, dt * (1 - dt * alpha) * B], 1)
    return torch.cat([top, torch.cat([dt * W, (1 - dt * alpha) * eye_out], 1)], 0)


@pytest.mark.parametrize("d_out, d_in", [(4, 9), (6, 6), (9, 4)])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_the_loop_spectra_match_the_full_matrices(d_out, d_in, alpha):
    W, _ = _loop(d_out, d_in)
    B = torch.randn(d_in, d_out, dtype=torch.float64) / math.sqrt(d_out)
    spectrum = LoopSpectrum.of(W, B)
    full = torch.linalg.eigvals(joint_matrix(W, B, alpha))
    assert spectrum.abscissa(alpha) == pytest.approx(float(full.real.max()), abs=1e-9)
    for dt in (0.1, 0.5, 1.0):
        radius = torch.linalg.eigvals(_euler_map(W, B, alpha, dt)).abs().max()
        assert spectrum.euler_radius(alpha, dt) == pytest.approx(float(radius), abs=1e-9)


def test_the_smoothed_spectral_abscissa_descent_stabilises_an_unstable_B():
    W, _ = _loop(12, 12, seed=3)
    B = W.t().clone()  # +W^T: a positive feedback loop, unstable
    alpha = 0.05
    assert float(torch.linalg.eigvals(joint_matrix(W, B, alpha)).real.max()) > 0.1
    stable, abscissa, steps = stabilize(W, B, alpha)
    assert 0 < steps < 200 and abscissa < -0.01
    assert float(torch.linalg.eigvals(joint_matrix(W, stable, alpha)).real.max()) < -0.01


def test_dynamic_and_steady_give_the_same_updates_on_the_digits_mlp():
    from trainer.datasets import load_dataset
    data = load_dataset("digits", batch_size=32, seed=0, data_dir=None, image_size=None,
                        num_workers=0)
    x, y = next(iter(data.train.batches(0)))
    torch.manual_seed(0)
    model = trainer.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    dynamic = _inverted(model, x, y)
    steady = _inverted(model, x, y, solver="steady")
    for got, want in zip(_weight_grads(dynamic), _weight_grads(steady)):
        assert _angle(got, want) < 1.0
    assert 0 < float(getattr(dynamic, RESIDUAL)) < 1e-4
    assert float(getattr(steady, RESIDUAL)) == 0.0


def _hand(model, x, y, alpha):
    """Every W's update with B = -W^T, by hand: delta_l = f'(a_l) * (Tikhonov inverse of
    W_{l+1}) delta_{l+1}, dW_l = delta_l^T x_{l-1}."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    inputs, pre = [x], []
    for i, layer in enumerate(linears):
        pre.append(F.linear(inputs[-1], layer.weight.detach(), layer.bias.detach()))
        inputs.append(torch.tanh(pre[-1]))
    delta = (torch.softmax(pre[-1], 1) - F.one_hot(y, pre[-1].shape[1])) / len(x)
    grads = [delta.t() @ inputs[-2]]
    for i in range(len(linears) - 1, 0, -1):
        W = linears[i].weight.detach()
        r = delta @ torch.linalg.solve(W @ W.t() + alpha * torch.eye(W.shape[0]), W)
        delta = r * (1 - torch.tanh(pre[i - 1]) ** 2)
        grads.insert(0, delta.t() @ inputs[i - 1])
    return grads


@pytest.mark.parametrize("alpha", [0.02, 0.2])
def test_every_weight_update_is_the_layer_by_layer_inversion(alpha):
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    model = _Tiny()
    for solver in ("steady", "dynamic"):
        inverted = _inverted(model, x, y, solver=solver, alpha=alpha, inference_steps=4000)
        for got, want in zip(_weight_grads(inverted), _hand(model, x, y, alpha)):
            if solver == "steady":
                torch.testing.assert_close(got, want)
            assert _angle(got, want) < 1.0
        for layer in inverted:  # B takes no gradient and is not moved (a stable loop)
            if isinstance(layer, nn.Linear):
                assert layer.weight_backward.grad is None
                torch.testing.assert_close(layer.weight_backward, -layer.weight)
    other = _hand(model, x, y, 10 * alpha)
    first = _weight_grads(_inverted(model, x, y, solver="steady", alpha=alpha))[0]
    assert _angle(first, other[0]) > 0.1  # alpha changes the update


def test_fewer_steps_or_a_smaller_dt_leave_the_loop_further_from_its_steady_state():
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    model = _Tiny()
    steady = _weight_grads(_inverted(model, x, y, solver="steady"))[0]
    angles, residuals = [], []
    for steps, dt in ((5, 0.5), (20, 0.5), (200, 0.5), (200, 0.05)):
        inverted = _inverted(model, x, y, inference_steps=steps, dt=dt)
        angles.append(_angle(_weight_grads(inverted)[0], steady))
        residuals.append(float(getattr(inverted, RESIDUAL)))
    assert angles[0] > angles[1] > angles[2] and angles[2] < 1.0 < angles[3], angles
    assert residuals[0] > residuals[1] > residuals[2] and residuals[3] > residuals[2], residuals


def _large(**options):
    """The tiny MLP with W eight times larger, B = -W^T."""
    model = trainer.convert(_Tiny(), RULE, **options)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(8)
                layer.weight_backward.copy_(-layer.weight)
    return model.train()


def _explicit_radius(W, B, alpha, dt):
    return float(torch.linalg.eigvals(_euler_map(W, B, alpha, dt)).abs().max())


@pytest.mark.parametrize("d_out, d_in, scale", [(4, 9, 1), (4, 9, 8), (9, 4, 8), (6, 6, 20)])
def test_the_chosen_step_is_the_fastest_contracting_euler_step_up_to_dt(d_out, d_in, scale):
    """Against the explicit Euler matrix: the step's map contracts (radius < 1), no step on
    a fine grid of (0, dt] contracts faster, and a scaled-up W's loop, too stiff for
    dt = 0.5, gets a smaller step."""
    W, _ = _loop(d_out, d_in)
    W = scale * W
    B = -W.t() + 0.1 * torch.randn(d_in, d_out, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(5))
    alpha = 0.1
    assert float(torch.linalg.eigvals(joint_matrix(W, B, alpha)).real.max()) < 0
    dt, radius = LoopSpectrum.of(W, B).fastest_step(alpha, 0.5)
    assert 0 < dt <= 0.5
    assert radius == pytest.approx(_explicit_radius(W, B, alpha, dt), abs=1e-9)
    assert radius < 1
    grid = [0.5 * k / 200 for k in range(1, 201)]
    assert radius <= min(_explicit_radius(W, B, alpha, h) for h in grid) + 1e-4
    if scale >= 8:
        assert _explicit_radius(W, B, alpha, 0.5) >= 1 and dt < 0.5
    else:  # a loop that is not stiff keeps the step it was given, while that is the fastest
        assert LoopSpectrum.of(W, B).fastest_step(alpha, 0.1)[0] == pytest.approx(0.1)


def test_a_loop_too_stiff_for_dt_takes_a_smaller_step_and_reaches_the_inversion():
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    model = _large(dt=0.5, inference_steps=3000)
    W, B = model[2].weight.detach(), model[2].weight_backward.detach().t()
    assert _explicit_radius(W.double(), B.double(), 0.1, 0.5) >= 1  # Euler at 0.5 blows up
    F.cross_entropy(model(x), y).backward()
    assert 0 < float(getattr(model, STEP)) < 0.5
    steady = _large(solver="steady")
    F.cross_entropy(steady(x), y).backward()
    for got, want in zip(_weight_grads(model), _weight_grads(steady)):
        assert torch.isfinite(got).all() and _angle(got, want) < 1.0
    assert not hasattr(steady, STEP)  # the steady solver takes no steps


def test_a_loop_too_stiff_for_dt_trains():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model = _large(dt=1.0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0], losses
    assert float(getattr(model, STEP)) < 1.0


def test_a_loop_that_cannot_be_made_stable_still_ends_the_trial():
    """No step size helps a loop with a zero eigenvalue: with no leak an expanding layer's
    loop is never stable (B cannot fix it), so the trial is diverged with that reason."""
    model = trainer.convert(_Tiny((6, 5, 9, 3)), RULE, alpha=0.0).train()
    with pytest.raises(Diverged, match=r"layer 2's loop is unstable .* expanding layer "
                                       r"\(5 -> 9\).* set alpha > 0"):
        model(torch.randn(4, 6))


def test_random_B_is_stabilised_at_the_first_training_forward_or_fails_when_told_not_to():
    x = torch.randn(4, 6)

    def unstable(stabilize):
        model = trainer.convert(_Tiny((6, 12, 12, 3)), RULE, backward="random",
                                stabilize=stabilize, alpha=0.01)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            linears[1].weight_backward.copy_(linears[1].weight)  # B = +W^T: unstable
        return model.train(), linears

    model, linears = unstable("off")
    norm = float(torch.linalg.svdvals(linears[1].weight.detach()).max())
    with pytest.raises(Diverged, match=r"layer 2's loop is unstable .* singular value "
                                       rf"{norm:.3g}\) and stabilize=off"):
        model(x)
    model, linears = unstable("ssa")
    model(x)
    W, B = linears[1].weight.detach(), linears[1].weight_backward.detach().t()
    assert float(torch.linalg.eigvals(joint_matrix(W, B, 0.01).double()).real.max()) < 0


@pytest.mark.slow  # a random B on the digits MLP is stabilised by SSA: about 4 s
def test_backward_sets_where_B_starts_and_the_diagnostics_angle_reads_it():
    from trainer.diagnostics import measure_alignment
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for backward, low, high in (("transpose", 0.0, 1e-3), ("random", 80.0, 100.0)):
        torch.manual_seed(0)
        model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                     image_size=8), RULE, backward=backward)
        summary = measure_alignment(model, x, y, F.cross_entropy)["summary"]
        assert low <= summary["weight_angle_mean"] <= high, backward


def test_B_is_in_no_optimizer_group():
    from catalogue.training import TrainConfig
    from trainer.optim import make_optimizer
    model = trainer.convert(_Tiny(), RULE)
    groups = make_optimizer(model, TrainConfig(rule=RULE)).param_groups
    assert not [g for g in groups if g.get("feedback")]
    assert all(not layer.weight_backward.requires_grad
               for layer in model if isinstance(layer, nn.Linear))


def test_evaluation_and_no_grad_forwards_are_left_alone():
    model = trainer.convert(_Tiny(), RULE)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 6))
    assert not out.requires_grad and not hasattr(model, RESIDUAL)


@pytest.mark.parametrize("arch, why", [("lenet", "has a Conv2d"),
                                       ("resnet8", "not an nn.Sequential")])
def test_other_architectures_are_refused_in_one_line(arch, why):
    model = trainer.create_model(arch, num_classes=10, in_channels=1,
                                 image_size=28 if arch == "lenet" else 8)
    with pytest.raises(UsageError, match=f"dynamic_inversion supports MLPs.*{why}") as caught:
        trainer.convert(model, RULE)
    assert "\n" not in str(caught.value)
    assert not trainer.feedback_layers(model)  # refused before anything was swapped


@pytest.mark.parametrize("command", [
    ["sweep", "--arch", "lenet", "--trials", "2"],
    ["train", "--arch", "resnet8", "--epochs", "1"],
    ["transfer", "--source", "mlp", "--targets", "mlp4,lenet"],
])
def test_commands_refuse_an_architecture_it_does_not_train_before_writing(command, tmp_path,
                                                                         capsys):
    """The declaration names the families (catalogue), so the refusal comes up front: a
    sweep does not record every trial as invalid, a transfer checks every target."""
    from search.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main([*command, "--rule", RULE, "--storage", url]
                if command[0] != "train" else [*command, "--rule", RULE]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "dynamic_inversion trains mlp models, not" in error
    assert not (tmp_path / "s.db").exists() or "dynamic_inversion" not in error.split(":")[0]


def test_a_training_run_records_the_residual_and_no_plan():
    result = trainer.train({"rule": RULE, "arch": "mlp", "epochs": 1,
                            "max_steps_per_epoch": 3, "device": "cpu",
                            "metaparameters": {"inference_steps": 50}})
    assert result.status == "completed"
    assert result.feedback_plan["summary"]["verdict"] == "not applicable"
    assert 0 < result.history[-1]["relaxation_residual"] < 1e-2
    assert 0 < result.history[-1]["inversion_dt"] <= 0.5  # the dt option: the largest step


def test_an_unstable_loop_with_stabilize_off_is_a_diverged_trial():
    result = trainer.train({"rule": RULE, "arch": "mlp", "epochs": 1,
                            "max_steps_per_epoch": 2, "device": "cpu", "diagnostics": False,
                            "metaparameters": {"backward": "random", "stabilize": "off"}})
    assert result.status == "diverged" and "loop is unstable" in result.reason
    assert "\n" not in result.reason


def test_the_options_are_searchable_and_settable_alpha_on_a_linear_range_from_zero():
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from search.cli.base import parse_assignments
    from spaces import Param, apply_overrides, default_space

    space = default_space(RULE)
    assert space.params["alpha"] == Param("alpha", 0.0, 0.2, log=False)
    optuna = space.to_optuna()
    assert optuna["alpha"] == FloatDistribution(0.0, 0.2)
    assert optuna["solver"] == CategoricalDistribution(("dynamic", "steady"))
    narrowed = apply_overrides(space, ["alpha=0:0.1"], ["solver=steady"])
    assert narrowed.params["alpha"] == Param("alpha", 0.0, 0.1, log=False)
    sets = parse_assignments(["alpha=0", "backward=random", "inference_steps=30"], "--set")
    assert dict(trainer.get_rule(RULE, **sets).options)["alpha"] == 0.0
    with pytest.raises(UsageError, match=r"alpha=-0.1 must be in \[0, 0.2\]"):
        trainer.get_rule(RULE, alpha=-0.1)
