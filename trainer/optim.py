"""The training optimizer: SGD over W, biases/BatchNorm and the learned B's, in groups.

A learned B's regularizer has a decay term c_decay ||B||^2, whose gradient 2 c_decay B is
exactly SGD's weight decay on B. ``FeedbackSGD`` carries it as the weight decay of B's groups,
so the fused kernel applies it inside the update it makes anyway; the training step then adds
only the rest of dR/dB (``trainer.alignment.alignment_value_and_grads(decay_grads=False)``).
On a small model that saves a pass over every B per step, a fifth of a decay-only rule's
regularizer cost. W's weight decay is the training option and never touches B; the output
layer's W may have its own (``readout_weight_decay``: the two-layer theory's lambda).

B steps with W's momentum unless its mechanism says otherwise (``feedback_momentum``): a rule
whose B follows a first-order dynamics of its own (phaseless alignment's dB/dt = eta_B [...])
gets plain SGD steps in groups of their own, so that eta_B = 2 lr_B holds; momentum beta would
multiply both B's drift and its noise by 1/(1 - beta).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from catalogue.training import AUTO, TrainConfig
from trainer.conversion import feedback_layers

FEEDBACK_DECAY = "feedback_decay"  # a B group's key: 2 x its rule's decay coefficient
PLAIN_STEPS = {"momentum": 0.0, "nesterov": False}  # a B group stepped without momentum


def output_weight(model: nn.Module) -> nn.Parameter | None:
    """The output layer's W: the weight of the model's last Linear or Conv2d, in module order
    (every builder registers its output layer last)."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return weights[-1] if weights else None


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """W with weight decay (the output layer's own under ``readout_weight_decay``, in a group
    of its own); biases and BatchNorm without; learned B's without, at lr x the
    multiplier: one group for all of them, or under ``auto`` one per layer (``feedback`` names
    the layer), so that each B can have its own learning rate; a B whose mechanism steps it
    without momentum in groups of its own. These are the groups of a plain SGD on task loss +
    alignment loss (``FeedbackSGD`` adds B's decay to them)."""
    layers = dict(feedback_layers(model))
    feedback = {id(layer.weight_backward): name for name, layer in layers.items()}
    decayed, plain, learned_b = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if id(p) in feedback:
                learned_b.append(p)
            elif name == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)):
                decayed.append(p)
            else:  # biases, BatchNorm
                plain.append(p)
    groups = [{"params": decayed, "weight_decay": config.weight_decay, "lr_scale": 1.0},
              {"params": plain, "weight_decay": 0.0, "lr_scale": 1.0}]
    output = output_weight(model)
    if config.readout_weight_decay is not None and any(p is output for p in decayed):
        groups[0]["params"] = [p for p in decayed if p is not output]
        groups.insert(1, {"params": [output], "weight_decay": config.readout_weight_decay,
                          "lr_scale": 1.0})

    def steps(plain_steps: bool) -> dict[str, Any]:
        return PLAIN_STEPS if plain_steps else {}

    def without_momentum(p: nn.Parameter) -> bool:
        return not layers[feedback[id(p)]].mechanism.feedback_momentum()

    if config.feedback_lr_multiplier == AUTO:
        groups += [{"params": [p], "weight_decay": 0.0, "lr_scale": 1.0,
                    "feedback": feedback[id(p)], **steps(without_momentum(p))}
                   for p in learned_b]
    else:
        groups += [{"params": [p for p in learned_b if without_momentum(p) == plain_steps],
                    "weight_decay": 0.0, "lr_scale": config.feedback_lr_multiplier,
                    "feedback": True, **steps(plain_steps)} for plain_steps in (False, True)]
    return [g for g in groups if g["params"]]


def _with_feedback_decay(model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """B groups split by their layers' decay coefficient, each with weight decay 2 c_decay."""
    decay = {id(layer.weight_backward): 2.0 * layer.rule.coefficients.get("decay", 0.0)
             for _, layer in feedback_layers(model)}
    out: list[dict[str, Any]] = []
    for group in groups:
        if not group.get("feedback"):
            out.append(group)
            continue
        by_decay: dict[float, list[nn.Parameter]] = {}
        for p in group["params"]:
            by_decay.setdefault(decay[id(p)], []).append(p)
        out += [{**group, "params": params, "weight_decay": wd, FEEDBACK_DECAY: wd}
                for wd, params in by_decay.items()]
    return out


class FeedbackSGD(torch.optim.SGD):
    """SGD whose B groups apply their rule's decay term as weight decay (module docstring).

    A restored state keeps the decay and momentum this model's rule gives, whatever the
    checkpoint's groups say: older checkpoints saved B's groups with no weight decay, when the
    step added it, and phaseless alignment's with W's momentum."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        own = [(g.get(FEEDBACK_DECAY), g["momentum"], g["nesterov"]) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (wd, momentum, nesterov) in zip(self.param_groups, own):
            if wd is not None:
                group["weight_decay"] = group[FEEDBACK_DECAY] = wd
                group["momentum"], group["nesterov"] = momentum, nesterov


def make_optimizer(model: nn.Module, config: TrainConfig) -> FeedbackSGD:
    """``FeedbackSGD`` (Nesterov when momentum > 0) over ``parameter_groups``, with the fused
    kernel: one call per group for the whole update, where the multi-tensor path pays several
    small ones. The unfused path is kept where fused is unsupported."""
    options = dict(lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    try:
        return FeedbackSGD(_with_feedback_decay(model, parameter_groups(model, config)),
                           fused=True, **options)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return FeedbackSGD(_with_feedback_decay(model, parameter_groups(model, config)),
                           **options)


def applies_feedback_decay(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` applies B's decay term itself (the step must then leave it out)."""
    return isinstance(optimizer, FeedbackSGD)


def feedback_groups(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """Each learned B's layer name -> the optimizer group holding it."""
    by_param = {id(p): g for g in optimizer.param_groups if g.get("feedback") for p in g["params"]}
    return {name: by_param[id(layer.weight_backward)] for name, layer in feedback_layers(model)
            if id(layer.weight_backward) in by_param}


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group["lr_scale"]
