"""The mechanism registry: a rule names a registered mechanism, and a new mechanism is a
module (a declaration and a behaviour) that rules can use at once."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from catalogue.mechanism import MECHANISMS, MechanismDeclaration
from catalogue.rule import RULES, Rule
from trainer.mechanisms import BEHAVIOURS, Mechanism, mechanism_of


def test_an_unknown_mechanism_is_refused_when_the_rule_is_declared():
    valid = re.escape(", ".join(sorted(MECHANISMS.names())))  # every one, sorted
    assert {"direct", "fixed", "learned", "sign", "tied"} <= set(MECHANISMS.names())
    with pytest.raises(ValueError, match=r"rule 'x': unknown mechanism 'leaned'; valid: "
                                         + valid + "$"):
        Rule("x", "", "", mechanism="leaned")


def test_every_rule_names_a_registered_mechanism_with_behaviour():
    assert {"tied", "fixed", "sign", "learned", "direct"} <= set(MECHANISMS.names())
    assert set(BEHAVIOURS.names()) == set(MECHANISMS.names())
    for name in trainer.list_rules():
        rule = trainer.rule_declaration(name)
        assert rule.mechanism in MECHANISMS, name
        assert mechanism_of(rule).name == rule.mechanism
        assert rule.learns_feedback == MECHANISMS.get(rule.mechanism).learns_feedback


class _HalfTransport(Mechanism):
    """A probe: B is half of W, read at every forward."""

    name = "half_transport"

    def feedback_weight(self, layer):
        return 0.5 * layer.weight.detach()


class _SignUpdate(Mechanism):
    """A probe of a whole-model update: the routine run in the output's backward puts sign(W)
    into every W.grad (the layers' own backward then add nothing: the error it passes is 0)."""

    name = "sign_update"

    def after_forward(self, model, inputs, output):
        layers = [layer for _, layer in trainer.feedback_layers(model)]

        class Routine(torch.autograd.Function):
            @staticmethod
            def forward(ctx, out):
                return out.view_as(out)

            @staticmethod
            def backward(ctx, grad):
                for layer in layers:
                    layer.weight.grad = torch.sign(layer.weight.detach()).clone()
                return torch.zeros_like(grad)

        return Routine.apply(output)


@pytest.fixture
def probe_mechanisms(monkeypatch):
    MECHANISMS.names(), BEHAVIOURS.names(), RULES.names()  # discovered before patching
    declarations = [MechanismDeclaration("half_transport", "B = W / 2"),
                    MechanismDeclaration("sign_update", "W.grad = sign(W)", update="model")]
    for declaration, behaviour in zip(declarations, (_HalfTransport(), _SignUpdate())):
        monkeypatch.setitem(MECHANISMS._entries, declaration.name, declaration)
        monkeypatch.setitem(BEHAVIOURS._entries, behaviour.name, behaviour)
    for name in ("half_transport", "sign_update"):
        monkeypatch.setitem(RULES._entries, f"probe_{name}",
                            Rule(f"probe_{name}", "a probe", "this test", mechanism=name))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Linear(5, 3))


def test_a_new_per_layer_mechanism_is_usable_by_a_rule(probe_mechanisms):
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    reference = _mlp()
    F.cross_entropy(reference(x), y).backward()
    model = trainer.convert(_mlp(), "probe_half_transport")
    assert model.creditsweep_converted == 2
    F.cross_entropy(model(x), y).backward()
    # linear layers: the first layer's update is backprop's with the error halved by B = W/2
    torch.testing.assert_close(model[2].weight.grad, reference[2].weight.grad)
    torch.testing.assert_close(model[1].weight.grad, 0.5 * reference[1].weight.grad)
    assert model[1].weight_backward.grad is None and not model[1].weight_backward.requires_grad


def test_a_whole_model_mechanism_leaves_its_update_in_every_weight_grad(probe_mechanisms):
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    model = trainer.convert(_mlp(), "probe_sign_update")
    trainer.convert(model, "probe_sign_update")  # converting again keeps one hook
    F.cross_entropy(model(x), y).backward()
    for layer in (model[1], model[2]):
        torch.testing.assert_close(layer.weight.grad, torch.sign(layer.weight.detach()))


def test_a_declared_mechanism_without_behaviour_says_what_is_missing(monkeypatch):
    MECHANISMS.names()
    monkeypatch.setitem(MECHANISMS._entries, "nobody", MechanismDeclaration("nobody", "-"))
    with pytest.raises(RuntimeError, match="no behaviour: add a module to trainer/mechanisms/"):
        mechanism_of(Rule("r", "", "", mechanism="nobody"))
