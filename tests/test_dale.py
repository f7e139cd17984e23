"""Dale's law on the rate RNN (model option ``excitatory``): the reference's initial W_rec
and W_out held to the properties its recipe gives them (signs by the presynaptic type, no
self-connections, rows balanced to zero sum, spectral radius 1), and the law kept through
training, the projection checked against W = s relu(s W)."""

import pytest
import torch
import torch.nn.functional as F

import trainer
from catalogue.errors import UsageError
from catalogue.tasks import InputSpec
from catalogue.training import TrainConfig
from trainer.loop import build


def _dale(hidden: int = 20, excitatory: float = 0.8, outputs: int = 3):
    torch.manual_seed(0)
    return trainer.create_model("rnn", spec=InputSpec.sequence(5, 4), outputs=outputs,
                                readout="last", hidden=hidden, excitatory=excitatory)


def _signs(model) -> torch.Tensor:
    return (2 * model.cell_types() - 1).double()


def _broken(model) -> int:
    """Weights whose sign is not their presynaptic unit's, in W_rec and W_out."""
    sign = _signs(model)
    return sum(int((layer.weight.detach().double() * sign < 0).sum())
               for layer in (model.recurrent, model.readout))


def test_the_initial_weights_follow_the_references_recipe():
    model = _dale()
    assert model.cell_types().tolist() == [0] * 4 + [1] * 16  # inhibitory first, 80% E
    sign = _signs(model)
    W = model.recurrent.weight.detach().double()
    off = ~torch.eye(20, dtype=torch.bool)
    assert (W.diagonal() == 0).all()  # no self-connections
    assert ((W * sign)[off] > 0).all()  # every other synapse present, signed by its source
    assert W.sum(1).abs().max() < 1e-6  # each postsynaptic unit's inputs balanced
    assert abs(torch.linalg.eigvals(W).abs().max() - 1.0) < 1e-6
    out = model.readout.weight.detach().double()  # W_out from the same signed sampler
    assert (out * sign > 0).all() and out.sum(1).abs().max() < 1e-6


def test_without_dale_the_model_declares_no_types_and_keeps_its_state():
    model = _dale(excitatory=0.0)
    assert model.cell_types() is None and "unit_types" not in model.state_dict()
    assert _dale().state_dict()["unit_types"].tolist() == [0] * 4 + [1] * 16


@pytest.mark.parametrize("excitatory, hidden, says", [
    (1.0, 20, "must be in (0, 1)"),
    (-0.5, 20, "must be in (0, 1)"),
    (0.97, 32, "31 excitatory and 1 inhibitory"),
])
def test_a_fraction_that_leaves_a_type_too_small_is_refused_in_one_line(excitatory, hidden,
                                                                         says):
    """The builder refuses it (the Python API), and the configuration refuses what it can
    tell without the model's size: a fraction outside [0, 1)."""
    if not 0 <= excitatory < 1:
        with pytest.raises(UsageError, match="excitatory must be in"):
            TrainConfig(arch="rnn", model_options={"excitatory": excitatory}).validate()
    with pytest.raises(UsageError) as caught:
        _dale(hidden=hidden, excitatory=excitatory)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("rule", ["backprop", "feedback_alignment"])
def test_training_steps_keep_dales_law(rule):
    config = TrainConfig.from_dict({"arch": "rnn32", "rule": rule, "batch_size": 64,
                                    "model_options": {"excitatory": 0.8}})
    model, data = build(config)  # the 8x8 digits, row by row
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    sign, crossed = _signs(model), 0
    for step, (x, y, *_) in zip(range(4), data.train.batches(0)):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        crossed += _broken(model)  # the step pushed some weights across zero ...
        stepped = [layer.weight.detach().double().clone()
                   for layer in (model.recurrent, model.readout)]
        model(x)  # ... and the next forward pass projects them back
        for before, layer in zip(stepped, (model.recurrent, model.readout)):
            torch.testing.assert_close(layer.weight.detach().double(),
                                       sign * torch.relu(sign * before), rtol=0, atol=0)
    assert crossed > 0 and _broken(model) == 0


@pytest.mark.parametrize("excitatory", [0.8, 0.0])
def test_a_random_b_gets_w_recs_spectral_radius_under_dales_law(excitatory):
    """Dale's W_rec sits at spectral radius 1; a B drawn at its entry scale would have 1.6-1.8
    and the error through it would explode over the steps. Under the law convert scales B to
    W_rec's radius; without it B stays the draw at W's scale."""
    torch.manual_seed(0)
    model = trainer.create_model("rnn32", num_classes=2, in_channels=1, image_size=8,
                                 excitatory=excitatory)
    trainer.convert(model, "feedback_alignment")
    layer = model.recurrent
    radius = [float(torch.linalg.eigvals(m.double()).abs().max())
              for m in (layer.weight.detach(), layer.weight_backward.detach())]
    if excitatory:
        assert radius[1] == pytest.approx(radius[0], rel=1e-5)
    else:
        assert float(layer.weight_backward.std()) == pytest.approx(
            float(layer.weight.std()), rel=0.1)


def test_too_few_units_of_a_type_are_refused_with_the_configuration():
    """The unit counts are known from the architecture's name: a sweep refuses before any
    trial, not at every trial's model build."""
    with pytest.raises(UsageError, match="gives 1 excitatory and 31 inhibitory"):
        TrainConfig(arch="rnn32", model_options={"excitatory": 0.02}).validate()
    TrainConfig(arch="rnn256", model_options={"excitatory": 0.02}).validate()  # 5 of 256
