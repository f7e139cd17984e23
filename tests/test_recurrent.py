"""The rate RNN and the feedback layers it calls at every time step: its equations against a
hand-written loop, every call kept by a layer's regularizer, gradient probe and direct error,
and the settling rules relaxing through time to BPTT."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import trainer
from catalogue.errors import UsageError
from catalogue.tasks import InputSpec
from tests.rate_rnn_oracle import unrolled, weights
from trainer.layers import vector_angle
from trainer.recurrent import RateRNN, as_sequence


def _rnn(hidden: int = 6, leak: float = 0.5, readout: str = "last", features: int = 4,
         outputs: int = 3, dtype: torch.dtype = torch.float64) -> RateRNN:
    torch.manual_seed(0)
    spec = InputSpec.sequence(5, features)
    return trainer.create_model("rnn", spec=spec, outputs=outputs, readout=readout,
                                hidden=hidden, leak=leak).to(dtype)


def test_the_issue_call_builds_a_leaky_rnn_that_reads_images_row_by_row():
    model = trainer.create_model("rnn", num_classes=10, in_channels=1, image_size=28,
                                 hidden=64, leak=0.5)
    calls = []
    model.recurrent.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert len(calls) == 28 and calls[0] == (3, 64)
    assert model.input.in_features == 28 and model.leak == 0.5
    image = torch.arange(2 * 3 * 4 * 4.0).view(2, 3, 4, 4)
    rows = as_sequence(image)  # step t holds row t of every channel
    assert rows.shape == (2, 4, 12) and torch.equal(rows[1, 2], image[1, :, 2, :].reshape(-1))


@pytest.mark.parametrize("readout", ["last", "every"])
def test_the_forward_pass_is_the_papers_equations(readout):
    model = _rnn(readout=readout)
    x = torch.randn(4, 5, 4, dtype=torch.float64)
    expected, _, _ = unrolled(weights(model), x, model.leak, readout == "every")
    assert torch.allclose(model(x), expected, atol=1e-12)


def test_bad_model_options_are_refused_in_one_line():
    from catalogue.training import TrainConfig

    with pytest.raises(UsageError, match="takes no option 'depth'"):
        TrainConfig(arch="rnn", model_options={"depth": 3}).validate()
    with pytest.raises(UsageError, match="leak takes a float"):
        TrainConfig(arch="rnn", model_options={"leak": "fast"}).validate()
    with pytest.raises(UsageError, match="rnn64 is declared with hidden=64, its value on the "
                                         "hidden axis; for another, name the architecture "
                                         r"\(its family: rnn, rnn32, rnn256\)"):
        TrainConfig(arch="rnn64", model_options={"hidden": 32}).validate()
    with pytest.raises(UsageError, match="takes no option"):
        TrainConfig(arch="resnet8", model_options={"hidden": 8}).validate()
    with pytest.raises(UsageError, match=r"rnn: option leak must be in \[0, 1\), got 1"):
        TrainConfig(arch="rnn", model_options={"leak": 1}).validate()
    with pytest.raises(UsageError, match="excitatory must be in"):
        TrainConfig(arch="rnn", model_options={"excitatory": -0.2}).validate()
    with pytest.raises(UsageError, match="recurrent_gain must be at least 0"):
        TrainConfig(arch="rnn", model_options={"recurrent_gain": -1.0}).validate()
    with pytest.raises(ValueError, match="leak"):
        _rnn(leak=1.0)


def test_an_image_only_model_refuses_a_sequence():
    with pytest.raises(UsageError, match="takes image inputs"):
        trainer.create_model("resnet8", spec=InputSpec.sequence(5, 3), outputs=2)
    with pytest.raises(UsageError, match="last step only"):
        trainer.create_model("mlp", spec=InputSpec.sequence(5, 3), outputs=2,
                             readout="every")


def test_a_layer_called_at_every_step_gives_its_regularizer_every_call():
    model = _rnn(dtype=torch.float32)
    trainer.convert(model, "activation_alignment")
    inputs = []
    model.recurrent.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
    model.train()
    model(torch.randn(4, 5, 4))
    x, out = model.recurrent.pop_regularizer_cache()
    assert x.shape == (5 * 4, 6) and torch.equal(x, torch.cat(inputs))
    assert out is not None and out.shape == (20, 6)
    assert model.recurrent.pop_regularizer_cache() is None  # popped: the next step starts anew
    model(torch.randn(4, 5, 4))  # a forward no step consumed (a user's own call)
    model(torch.randn(3, 5, 4))
    x, _ = model.recurrent.pop_regularizer_cache()
    assert x.shape == (5 * 3, 6)  # the last pass's calls only


def test_the_gradient_probe_measures_every_step_of_a_recurrent_layer():
    """FA on the RNN: the recurrent layer's angle between the input gradients through B and
    through W is the angle of all steps' gradients together, computed here from the
    upstream gradient each call received."""
    model = _rnn(dtype=torch.float32)
    trainer.convert(model, "feedback_alignment")
    upstream = []

    def keep(module, inputs, output):
        output.register_hook(lambda g: upstream.append(g.detach()))
    model.recurrent.register_forward_hook(keep)
    probes = trainer.layers.GradientProbe()
    model.recurrent.probe = probes
    x, y = torch.randn(4, 5, 4), torch.tensor([0, 1, 2, 1])
    F.cross_entropy(model(x), y).backward()
    assert probes.calls == 5 and len(upstream) == 5
    through_b = torch.cat([g @ model.recurrent.weight_backward for g in upstream])
    through_w = torch.cat([g @ model.recurrent.weight for g in upstream])
    assert math.isclose(probes.gradient_angle, vector_angle(through_b, through_w),
                        abs_tol=1e-4)
    assert 30 < probes.gradient_angle < 150  # a random B: far from W's direction


def test_direct_feedback_projects_each_steps_own_error():
    """DFA through time on a regression RNN (d = 0): the error at step t reaches the hidden
    units of step t through the readout's D and the units of step t - 1 through the
    recurrent layer's D; W_in's update, worked out by hand from those errors, is DFA's."""
    model = _rnn(leak=0.0, readout="every", dtype=torch.float32)
    trainer.convert(model, "direct_feedback_alignment")
    x, target = torch.randn(4, 5, 4), torch.randn(4, 5, 3)
    states = []
    model.recurrent.register_forward_hook(lambda m, i, o: states.append(i[0].detach()))
    out = model(x)
    F.mse_loss(out, target).backward()
    errors = (2 * (out - target) / out.numel()).detach()  # dL/dy_t
    d_out, d_rec = model.readout.direct_feedback, model.recurrent.direct_feedback
    grad_in = torch.zeros_like(model.input.weight)
    for t in range(5):
        grad_z = errors[:, t] @ d_out  # the readout of step t
        if t + 1 < 5:
            grad_z = grad_z + errors[:, t + 1] @ d_rec  # the recurrent call of step t + 1
        v = model.input(x[:, t]) + model.recurrent(states[t])
        grad_drive = grad_z * (v > 0)
        grad_in += grad_drive.T @ x[:, t]
    assert torch.allclose(model.input.weight.grad, grad_in, atol=1e-5)


@pytest.mark.parametrize("rule", ["activation_relaxation", "predictive_coding"])
def test_the_settling_rules_relax_through_time_to_bptt(rule):
    """One sweep at eta = 1 is autograd's gradient: the graph engine walks the unrolled RNN's
    graph, every step's node included."""
    model = _rnn(dtype=torch.float32)
    reference = copy.deepcopy(model)
    x, y = torch.randn(8, 5, 4), torch.randint(0, 3, (8,))
    F.cross_entropy(reference(x), y).backward()
    trainer.convert(model, rule, inference_lr=1.0, inference_steps=1)
    F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(reference.named_parameters(),
                            [p for n, p in model.named_parameters() if "backward" not in n]):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_a_run_of_the_rnn_family_is_told_to_use_plain_sgd_unless_it_does():
    from catalogue.training import option_notes

    advice = option_notes("e_prop", {}, ("rnn64",))
    assert len(advice) == 1 and advice[0].startswith("--momentum 0.9: Liu et al. train")
    assert option_notes("e_prop", {"momentum": 0}, ("rnn64",)) == []
    assert option_notes("e_prop", {}, ("rnn64",), searched=("momentum",)) == []
    assert option_notes("backprop", {}, ("resnet8", "mlp")) == []
