"""Every registered rule on each small model family and one rule per mechanism on the ImageNet
ResNet: the contract the search service relies on."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from catalogue.errors import UsageError

# Every rule runs on one architecture of each small family.
SMALL_FAMILIES = {"mlp": "mlp", "cifar_resnet": "resnet8", "lenet": "lenet", "rnn": "rnn",
                  "two_layer": "two_layer100"}
# The ImageNet ResNet, several times the size of the others, runs one rule per mechanism.
IMAGENET_RESNET = "resnet18"
IMAGE_SIZE = {"lenet": 28}  # the smallest it takes; 8 px for the others


def mechanism(rule: str) -> str:
    """How a rule's feedback is produced, from its declaration (catalogue.rule.Rule): B tied to
    W, fixed, following W's signs, direct, or learned; a learned B by what its regularizer
    reads (nothing, noise or the layer's input) or, for Kolen-Pollack, by W's gradient too."""
    declaration = trainer.rule_declaration(rule)
    if declaration.receives_task_gradient:
        return "learned+task_gradient"
    if declaration.mechanism == "learned":
        return f"learned({declaration.regularizer_input})"
    return declaration.feedback


# One rule per mechanism on the ImageNet ResNet: what it adds is the layers B is built on, and
# the rules of one mechanism build B and carry the error through it the same way.
IMAGENET_REPRESENTATIVES = {
    "tied": "backprop",  # exact gradients: the layers stay plain
    "fixed": "feedback_alignment",  # a fixed random B
    "sign": "frsf",  # B = |B0| sign(W) (usf and brsf: the same with other magnitudes)
    "learned(none)": "symmetric_alignment",  # B learned by an input-free regularizer
    "learned(noise)": "information_alignment",  # ... on white noise (as weight_mirror)
    "learned(activation)": "activation_alignment",  # ... on the layer's real input
    "learned+task_gradient": "kolen_pollack",  # B receives W's gradient (plus decay)
    "direct": "direct_feedback_alignment",  # the output error through a fixed matrix per layer
    "relaxation": "activation_relaxation",  # a whole-model update over the model's graph
    "dynamic_inversion": "dynamic_inversion",  # per-layer inversion loops (MLPs only)
    "predictive_coding": "predictive_coding",  # error nodes settle over the model's graph
    "phaseless": "phaseless_alignment",  # B learns from input noise beside the forward pass
    "truncated": "truncated_bptt",  # the RNN's state detached every k steps (rnn only)
    "eligibility": "e_prop",  # eligibility traces times the readout's error (rnn only)
    "rflo": "rflo",  # online traces over the rate RNN's steps (rnn only)
    "modprop": "modprop",  # cell-type modulated credit over the rate RNN's steps (rnn only)
}
# Mechanisms whose layers form B's own update in the backward pass, beside the error (a
# correlation that does not depend on the loss): their B.grad is set by loss.backward().
B_UPDATE_IN_BACKWARD = {"phaseless"}
# Mechanisms that take only some families refuse the others in one line (a UsageError) before
# anything is swapped: dynamic inversion inverts fully connected layers (the MLP), the temporal
# rules train the rate RNN.
# Activation relaxation and predictive coding (at its defaults, fixed predictions) run on
# every family (the model's computation graph).
REFUSED = {"dynamic_inversion": {"lenet", "resnet8", "rnn", "two_layer100", IMAGENET_RESNET},
           # the temporal rules change how the error flows through the rate RNN's steps
           "truncated": {"mlp", "lenet", "resnet8", "two_layer100", IMAGENET_RESNET},
           "eligibility": {"mlp", "lenet", "resnet8", "two_layer100", IMAGENET_RESNET},
           "rflo": {"mlp", "lenet", "resnet8", "two_layer100", IMAGENET_RESNET},
           "modprop": {"mlp", "lenet", "resnet8", "two_layer100", IMAGENET_RESNET}}
# Mechanisms that leave every layer plain (convert swaps nothing): B is W.
PLAIN = {"tied", "truncated"}
# Between them the learned ones weight every primitive (decay, self, amp, null, sparse).


def _contract_cases() -> list:
    cases = [pytest.param(rule, arch, id=f"{rule}-{arch}")
             for rule in trainer.list_rules() for arch in sorted(SMALL_FAMILIES.values())]
    cases += [pytest.param(rule, IMAGENET_RESNET, id=f"{rule}-{IMAGENET_RESNET}")
              for rule in sorted(IMAGENET_REPRESENTATIVES.values())]
    return cases


def _count_plain(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())


def test_the_contract_covers_every_family_and_every_mechanism():
    """A new family or a rule of a new mechanism must be added above, not skipped silently."""
    from catalogue.architectures import ARCHITECTURES, architecture

    covered = {architecture(arch).family for arch in [*SMALL_FAMILIES.values(), IMAGENET_RESNET]}
    assert covered == {a.family for _, a in ARCHITECTURES.items()}
    assert {mechanism(rule) for rule in trainer.list_rules()} == set(IMAGENET_REPRESENTATIVES)
    for kind, rule in IMAGENET_REPRESENTATIVES.items():
        assert mechanism(rule) == kind, rule


@pytest.mark.parametrize("rule, arch", _contract_cases())
def test_rule_on_model_family(rule, arch):
    size = IMAGE_SIZE.get(arch, 8)
    model = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=size)
    n_plain = _count_plain(model)
    declaration = trainer.rule_declaration(rule)
    if arch in REFUSED.get(declaration.mechanism, ()):
        with pytest.raises(UsageError) as caught:
            trainer.convert(model, rule)
        assert "\n" not in str(caught.value) and not trainer.feedback_layers(model)
        return
    trainer.convert(model, rule)
    expected = 0 if declaration.mechanism in PLAIN else n_plain
    assert model.creditsweep_converted == expected == len(trainer.feedback_layers(model))
    assert _count_plain(model) == n_plain  # feedback layers are still Linear/Conv2d
    model.train()
    x, y = torch.randn(4, 1, size, size), torch.randint(0, 10, (4,))
    before = {n: layer.weight_backward.detach().clone()
              for n, layer in trainer.feedback_layers(model)}
    task = F.cross_entropy(model(x), y)
    task.backward(retain_graph=False)
    for name, layer in trainer.feedback_layers(model):
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        if declaration.receives_task_gradient:
            torch.testing.assert_close(layer.weight_backward.grad, layer.weight.grad)
        elif declaration.mechanism in B_UPDATE_IN_BACKWARD:
            grad = layer.weight_backward.grad
            assert grad is None or torch.isfinite(grad).all()
        else:  # the task loss never touches B
            assert layer.weight_backward.grad is None
        torch.testing.assert_close(layer.weight_backward.detach(), before[name])
    # The alignment loss reaches only the B's.
    model.zero_grad(set_to_none=True)
    model(x)
    align = trainer.alignment_loss(model)
    assert align.dim() == 0 and torch.isfinite(align)
    if declaration.terms:
        align.backward()
        for name, p in model.named_parameters():
            if name.endswith("weight_backward"):
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name
    else:
        assert float(align) == 0.0 and not align.requires_grad


def test_unknown_rule_and_metaparameter_errors_list_valid_names():
    with pytest.raises(ValueError, match="unknown rule 'weight_mirorr'; valid: .*weight_mirror"):
        trainer.get_rule("weight_mirorr")
    with pytest.raises(ValueError, match="valid: alpha, beta, sigma"):
        trainer.get_rule("weight_mirror", gamma=1.0)
    with pytest.raises(ValueError, match="must be finite"):
        trainer.get_rule("weight_mirror", sigma=0.0)
    with pytest.raises(ValueError, match="must be finite"):
        trainer.get_rule("symmetric_alignment", alpha=float("nan"))
    with pytest.raises(ValueError, match="valid: "):
        trainer.create_model("resnet19", num_classes=10, in_channels=3, image_size=32)


def test_convert_copies_weights_and_keeps_parameters():
    model = trainer.create_model("resnet8", num_classes=10, in_channels=3, image_size=32)
    w = model.conv1.weight
    trainer.convert(model, "weight_mirror", copy_weights=True, sigma=0.5)
    assert model.conv1.weight is w  # same Parameter object moved over
    for _, layer in trainer.feedback_layers(model):
        torch.testing.assert_close(layer.weight_backward.detach(), layer.weight.detach())
    assert model.creditsweep_rule.values["sigma"] == 0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is nn.BatchNorm2d for m in bns)


def test_fresh_B_is_independent_draw_at_W_scale():
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "feedback_alignment")
    layer = trainer.feedback_layers(model)[0][1]
    W, B = layer.weight.detach(), layer.weight_backward.detach()
    assert abs(float(B.std() / W.std()) - 1) < 0.1
    assert 80 < trainer.layers.vector_angle(W, B) < 100


def test_alignment_loss_needs_a_training_forward():
    model = trainer.convert(nn.Sequential(nn.Linear(4, 3)), "weight_mirror")
    with pytest.raises(RuntimeError, match="training-mode forward"):
        trainer.alignment_loss(model)


def test_inplace_op_on_layer_output_does_not_corrupt_activation_alignment():
    torch.manual_seed(1)
    a = trainer.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True)),
                        "activation_alignment")
    b = trainer.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), "activation_alignment")
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 6)
    a(x), b(x)
    torch.testing.assert_close(trainer.alignment_loss(a), trainer.alignment_loss(b))


def _assert_step_matches_autograd(rule: str, arch: str, metaparameters: dict,
                                  feedback_lr_multiplier: float | str = 1.0) -> None:
    torch.manual_seed(0)
    fast = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=8)
    trainer.convert(fast, rule, **metaparameters)
    reference = trainer.create_model(arch, num_classes=10, in_channels=1, image_size=8)
    trainer.convert(reference, rule, **metaparameters)
    reference.load_state_dict(fast.state_dict())
    config = trainer.TrainConfig(rule=rule, lr=0.1, momentum=0.9,
                                 feedback_lr_multiplier=feedback_lr_multiplier)
    fast_opt = trainer.optim.make_optimizer(fast, config)
    ref_opt = torch.optim.SGD(trainer.optim.parameter_groups(reference, config), lr=0.1,
                              momentum=0.9, nesterov=True)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for model in (fast, reference):
        model.train()
    for _ in range(2):  # the second step includes momentum
        torch.manual_seed(1)  # the same noise for both
        _, _, align = trainer.loop.train_step(fast, fast_opt, x, y)
        torch.manual_seed(1)
        logits = reference(x)
        ref_align = trainer.alignment_loss(reference)
        ref_opt.zero_grad(set_to_none=True)
        (F.cross_entropy(logits, y) + ref_align).backward()
        ref_opt.step()
        torch.testing.assert_close(align, ref_align.detach(), rtol=1e-5, atol=1e-7)
        for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
            # float32 rounding of a different summation order (B's decay is added inside the
            # fused update), relative to the tensor's scale: these coefficients grow some
            # weights to tens, where an element near zero then differs by ~1e-5.
            scale = max(1.0, float(q.detach().abs().max()))
            torch.testing.assert_close(p, q, rtol=1e-5, atol=2e-6 * scale, msg=name)


@pytest.mark.parametrize("arch", ["mlp", "resnet8"])
@pytest.mark.parametrize("rule", [r for r in trainer.list_rules()
                                  if trainer.rule_declaration(r).terms])
def test_a_training_step_applies_the_gradients_autograd_gives(rule, arch):
    """train_step adds B's closed-form gradient after the task's backward (the input-free
    rules in one multi-tensor batch) and steps a fused SGD that applies B's decay term as
    weight decay: it must move every parameter as autograd through task + alignment_loss
    and a plain SGD step would."""
    # Coefficients large enough that B's gradient matters next to the task's.
    large = {k: 0.3 for k in trainer.rule_declaration(rule).terms.values()}
    _assert_step_matches_autograd(rule, arch, large)


@pytest.mark.parametrize("rule, metaparameters, multiplier", [
    ("symmetric_alignment", {"alpha": 0.3, "beta": 0.0}, 1.0),  # decay alone, no task grad
    ("symmetric_alignment", {"alpha": 0.0, "beta": 0.3}, 1.0),  # self alone
    ("weight_mirror", {"alpha": 0.3, "beta": 0.0}, 2.5),
    ("kolen_pollack", {"alpha": 0.3}, "auto"),  # a group per B, each with its decay
])
def test_the_step_matches_autograd_when_a_term_is_switched_off(rule, metaparameters,
                                                               multiplier):
    """With decay in the optimizer, a B whose only gradient was decay's still decays, and a
    rule without decay gets none."""
    _assert_step_matches_autograd(rule, "mlp", metaparameters, multiplier)


def test_a_restored_optimizer_keeps_the_rules_decay_on_B():
    """Checkpoints from before B's decay moved into the optimizer saved B's group without
    weight decay; restoring one must not switch the decay term off."""
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "kolen_pollack", alpha=0.05)
    config = trainer.TrainConfig(rule="kolen_pollack", lr=0.1, momentum=0.9)
    optimizer = trainer.optim.make_optimizer(model, config)
    (group,) = [g for g in optimizer.param_groups if g.get("feedback")]
    assert group["weight_decay"] == pytest.approx(0.1)  # 2 x alpha
    old = optimizer.state_dict()
    for saved in old["param_groups"]:
        if saved.get("feedback"):
            saved["weight_decay"] = 0.0
            del saved["feedback_decay"]
    fresh = trainer.optim.make_optimizer(model, config)
    fresh.load_state_dict(old)
    (group,) = [g for g in fresh.param_groups if g.get("feedback")]
    assert group["weight_decay"] == pytest.approx(0.1)
    assert [g["weight_decay"] for g in fresh.param_groups if not g.get("feedback")] == [
        config.weight_decay, 0.0]


def test_the_input_free_batches_follow_a_new_rule_and_new_weight_storage():
    """The decay/self batches are kept on the model between steps; a changed rule or W's
    storage replaced (``model.to``) must rebuild them, not reuse stale ones."""
    from catalogue.rule import get_rule
    from trainer.alignment import alignment_value_and_grads

    torch.manual_seed(0)
    model = trainer.convert(trainer.create_model("mlp", num_classes=10, in_channels=1,
                                                 image_size=8), "symmetric_alignment")
    x = torch.randn(4, 1, 8, 8)

    def check(dtype: torch.dtype) -> None:
        model(x.to(dtype))
        value, grads = alignment_value_and_grads(model)
        model(x.to(dtype))
        reference = trainer.alignment_loss(model)
        torch.testing.assert_close(value, reference.detach())
        reference.backward()
        for B, grad in grads:
            torch.testing.assert_close(grad, B.grad)
            B.grad = None

    check(torch.float32)
    for _, layer in trainer.feedback_layers(model):
        layer.rule = get_rule("symmetric_alignment", alpha=0.5, beta=0.25)
    check(torch.float32)
    model.to(torch.float64)
    check(torch.float64)


@pytest.mark.parametrize("module", [nn.RNN(4, 8, batch_first=True), nn.Conv1d(4, 8, 3),
                                    nn.MultiheadAttention(8, 2)])
def test_convert_refuses_weights_it_cannot_swap_instead_of_leaving_them_on_backprop(module):
    """Left plain, such a module's weights would carry the error back as exact backprop under
    any rule: convert says so in one line, before anything is swapped; backprop takes it."""
    model = nn.Sequential(module, nn.Linear(8, 3))
    with pytest.raises(UsageError, match=rf"feedback_alignment cannot convert 0 "
                                         rf"\({type(module).__name__}\)") as caught:
        trainer.convert(model, "feedback_alignment")
    assert "\n" not in str(caught.value) and not trainer.feedback_layers(model)
    trainer.convert(model, "backprop")  # tied: nothing is swapped, nothing to refuse


def test_convert_leaves_transport_free_parameters_plain():
    """Normalisation's affine, embeddings: no error goes back through a weight matrix."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3))
    assert trainer.convert(model, "feedback_alignment").creditsweep_converted == 1
