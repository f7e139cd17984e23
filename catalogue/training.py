"""``TrainConfig``: every option of one training run, its default, its help and its checks.

It is the one source for training options: ``trainer.train`` runs it, and the command line
builds the same flags from these fields for ``train``, ``sweep`` and ``transfer`` (with the help
text and default written here). Numeric options marked tunable may also be searched with
``--space`` or held with ``--fix``. No torch here, so that help and validation are instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from catalogue.architectures import architecture
from catalogue.errors import UsageError
from catalogue.rule import DEFAULT_NOISE, NOISE_DISTRIBUTIONS, get_rule, rule_declaration

Schedule = Literal["cosine", "step", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "step", "constant")
AUTO = "auto"
# How a learned B's gradient is preconditioned (trainer.preconditioner registers each):
# none, or covariance: by (Sigma + eps I)^-1, Sigma the layer input's second moment, for a
# regularizer with a sparse term (activation alignment), docs/design.md section 7.
FEEDBACK_PRECONDITIONERS: tuple[str, ...] = ("none", "covariance")


def multiplier(text: str) -> float | str:
    """A learning-rate multiplier from the command line: a number, or 'auto'."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number or 'auto', got {text!r}") from None


def option(default: Any = dataclasses.MISSING, *, help: str, tunable: bool = False,
           cli: bool = True, factory: Any = dataclasses.MISSING, choices: tuple = (),
           metavar: str | None = None, parse: Callable[[str], Any] | None = None) -> Any:
    """A TrainConfig field with the metadata the command line and the spaces read."""
    metadata = {"help": help, "tunable": tunable, "cli": cli, "choices": choices,
                "metavar": metavar, "parse": parse}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    rule: str = option("backprop", help="credit-assignment rule (list: creditsweep rules)")
    metaparameters: dict[str, float] = option(
        factory=dict, cli=False, help="the rule's metaparameters (--set NAME=VALUE)")
    arch: str = option("mlp", help="architecture (list: creditsweep models)")
    model_options: dict[str, Any] = option(
        factory=dict, cli=False, help="the architecture's options, e.g. an RNN's hidden "
                                      "and leak (--model-option NAME=VALUE)")
    dataset: str = option("digits", help="dataset (list: creditsweep datasets)")
    dataset_options: dict[str, Any] = option(
        factory=dict, cli=False, help="a generated dataset's options, e.g. its sizes and "
                                      "delays (--dataset-option NAME=VALUE)")
    train_subset: int | None = option(
        None, tunable=True, help="train on a fixed, seeded, class-balanced subset of this "
                                 "many examples (default: the whole training split)")
    val_subset: int | None = option(
        None, tunable=True, help="validate on a fixed, seeded, class-balanced subset of this "
                                 "many examples (default: the whole validation split)")
    data_dir: str | None = option(None, metavar="DIR", help=(
        "folder holding the dataset's files (default: where the dataset looks by itself; "
        "see creditsweep datasets)"))
    epochs: int = option(10, help="training epochs")
    stop_after_epochs: int | None = option(
        None, help="train only the first N of --epochs: the learning-rate schedule and B's "
                   "plan and warm-up as for the whole run, stopped after epoch N (a cheaper "
                   "probe of that run; default: the whole run)")
    batch_size: int = option(64, tunable=True, help="training batch size")
    lr: float = option(0.05, tunable=True, help="peak learning rate of W")
    momentum: float = option(0.9, tunable=True,
                             help="SGD momentum (Nesterov when > 0), for W and B alike")
    weight_decay: float = option(5e-4, tunable=True,
                                 help="weight decay of W (never B, biases or BatchNorm)")
    readout_weight_decay: float | None = option(
        None, tunable=True, help="weight decay of the output layer's W alone (the model's "
                                 "last weight layer; default: --weight-decay); the "
                                 "two-layer theory's lambda on the second layer")
    warmup_epochs: float = option(0.0, tunable=True, help="linear warm-up, in epochs")
    schedule: Schedule = option("cosine", choices=SCHEDULES,
                                help="learning-rate schedule after the warm-up")
    step_milestones: tuple[float, ...] = option(
        (0.5, 0.75), help="step schedule: fractions of the run where the rate drops")
    step_gamma: float = option(0.1, help="step schedule: factor at each milestone")
    feedback_lr_multiplier: float | str = option(
        1.0, tunable=True, parse=multiplier, metavar="X|auto",
        help="B's learning rate = lr x this; auto: per layer, enough relaxation times "
             "within the run and below half the stability limit (see docs/design.md §7)")
    feedback_relaxations: float = option(
        10.0, help="with --feedback-lr-multiplier auto: the relaxation times each B should "
                   "get within the run")
    feedback_warmup_relaxations: float = option(
        3.0, help="with --feedback-lr-multiplier auto: the relaxation times each B gets alone, "
                  "W frozen, before W's first step (at lr_B x its curvature = 1, at most a "
                  "tenth of the run's steps); 0: no warm-up, the target spread over the run")
    feedback_preconditioner: str = option(
        "none", choices=FEEDBACK_PRECONDITIONERS, tunable=True,
        help="activation alignment: B's gradient times (Sigma + eps I)^-1, Sigma the layer "
             "input's (patch) second moment, so that its stiff and soft modes relax at about "
             "one rate (covariance); none: the plain gradient (see docs/design.md §7)")
    feedback_plan: bool = option(
        True, help="measure each B's curvature and plan its learning rate before training "
                   "and after every epoch")
    noise_distribution: str = option(
        DEFAULT_NOISE, choices=NOISE_DISTRIBUTIONS, tunable=True,
        help="distribution of the noise rules' input noise (weight mirror, information "
             "alignment), at variance sigma^2 either way; a sweep searches both with "
             "--space noise_distribution=normal,uniform")
    noise_batch: int = option(
        0, help="noise rules: noise samples per step and layer (0: the training batch, as "
                "the paper); fewer cost less and leave every fixed point in place, adding "
                "variance to B's updates")
    update_noise: float = option(
        0.0, tunable=True, help="variance v of the noise added to B after each step "
                                "(B += lr*xi, xi ~ N(0, v), lr: W's learning rate at that "
                                "step, the same for every rule)")
    seed: int = option(0, help="seed of the model, data order and noise")
    device: str = option("auto", help="auto | cpu | cuda[:N]")
    image_size: int | None = option(None, help="resize images to this size (default: the "
                                               "dataset's own; 224 for imagenet)")
    small_input: bool | None = option(
        None, help="ImageNet ResNets: 3x3 stem without max-pool (default: images <= 64 px)")
    num_workers: int = option(0, help="data-loader worker processes (image folders)")
    copy_weights: bool = option(False, help="start with B = W instead of an independent draw")
    max_steps_per_epoch: int | None = option(None, help="cap on steps per epoch "
                                                         "(default: every batch)")
    loss_ceiling: float = option(
        100.0, help="a run whose training loss on a batch exceeds this multiple of its first "
                    "step's loss has diverged: recorded so, with the loss and the step "
                    "(0: only a non-finite loss or weight counts)")
    diagnostics: bool = option(True, help="measure angles and norm ratios every epoch")
    curvature: bool = option(
        False, help="at the end of training, measure the true task loss's curvature (top "
                    "Hessian eigenvalue, Hutchinson trace; B excluded, eval mode), the "
                    "generalisation gap (train top-1 on a fixed training subset in eval mode "
                    "minus val top-1) and val top-1 under Gaussian input noise")
    curvature_batches: int = option(4, help="training batches the curvature is measured on")
    curvature_steps: int = option(8, help="Lanczos steps (Hessian-vector products) for the "
                                          "top eigenvalue")
    curvature_every: int = option(0, help="with --curvature: also every N epochs "
                                          "(0: only at the end)")
    input_noise: tuple[float, ...] = option(
        (0.1, 0.5, 1.0), help="with --curvature: standard deviations of the Gaussian noise "
                              "added to the standardised validation inputs")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UsageError(f"unknown training option(s) {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(known))}")
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def epochs_run(self) -> int:
        """The epochs this run trains: all of them, or the first ``stop_after_epochs``."""
        return self.stop_after_epochs or self.epochs

    def validate(self) -> None:
        """Raise UsageError naming the first bad option (rule, arch and metaparameters too)."""
        configured = get_rule(self.rule, self.noise_distribution, self.noise_batch,
                              **self.metaparameters)
        arch = architecture(self.arch)
        refusal = configured.rule.declared_mechanism.refusal(
            self.rule, arch.name, arch.family, configured.options, arch.module_units)
        if refusal is not None:
            raise UsageError(refusal)
        arch.check_options(self.model_options)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "step_gamma": self.step_gamma,
                    "feedback_relaxations": self.feedback_relaxations}
        if self.feedback_lr_multiplier != AUTO:
            positive["feedback_lr_multiplier"] = self.feedback_lr_multiplier
        elif not self.feedback_plan:
            raise UsageError("feedback_lr_multiplier auto needs the feedback plan "
                             "(--feedback-plan)")
        for key, value in positive.items():
            if not (_number(value) and value > 0):
                raise UsageError(f"{key} must be a positive number, got {value!r}")
        for key in ("epochs", "batch_size", "seed", "num_workers"):
            if not isinstance(getattr(self, key), int) or isinstance(getattr(self, key), bool):
                raise UsageError(f"{key} must be an integer, got {getattr(self, key)!r}")
        non_negative = {"momentum": self.momentum, "weight_decay": self.weight_decay,
                        "warmup_epochs": self.warmup_epochs, "update_noise": self.update_noise,
                        "num_workers": self.num_workers, "loss_ceiling": self.loss_ceiling,
                        "feedback_warmup_relaxations": self.feedback_warmup_relaxations}
        for key, value in non_negative.items():
            if not (_number(value) and value >= 0):
                raise UsageError(f"{key} must be >= 0, got {value!r}")
        if 0 < self.loss_ceiling <= 1:  # a loss that merely fails to fall is no divergence
            raise UsageError(f"loss_ceiling must be 0 (off) or above 1 (a multiple of the first "
                             f"step's loss), got {self.loss_ceiling!r}")
        if self.readout_weight_decay is not None and not (
                _number(self.readout_weight_decay) and self.readout_weight_decay >= 0):
            raise UsageError(f"readout_weight_decay must be >= 0 (or unset: weight_decay), "
                             f"got {self.readout_weight_decay!r}")
        if self.momentum >= 1:
            raise UsageError(f"momentum must be below 1, got {self.momentum!r}")
        if self.stop_after_epochs is not None and (
                not isinstance(self.stop_after_epochs, int)
                or isinstance(self.stop_after_epochs, bool)
                or not 1 <= self.stop_after_epochs <= self.epochs):
            raise UsageError(f"stop_after_epochs must be a whole number from 1 to epochs "
                             f"({self.epochs}), got {self.stop_after_epochs!r}")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"seed must be in 0..2^32-1, got {self.seed}")
        if self.feedback_preconditioner not in FEEDBACK_PRECONDITIONERS:
            raise UsageError(f"feedback_preconditioner must be one of "
                             f"{', '.join(FEEDBACK_PRECONDITIONERS)}, "
                             f"got {self.feedback_preconditioner!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                             f"got {self.schedule!r}")
        if not all(_number(m) and 0 < m < 1 for m in self.step_milestones):
            raise UsageError(f"step_milestones must be fractions in (0, 1), "
                             f"got {self.step_milestones!r}")
        for key in ("image_size", "max_steps_per_epoch", "train_subset", "val_subset"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise UsageError(f"{key} must be a positive integer, got {value!r}")
        for key in ("curvature_batches", "curvature_steps"):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise UsageError(f"{key} must be a positive integer, got {value!r}")
        if not (isinstance(self.curvature_every, int) and self.curvature_every >= 0):
            raise UsageError(f"curvature_every must be >= 0 (0: only at the end), "
                             f"got {self.curvature_every!r}")
        if not all(_number(s) and s > 0 for s in self.input_noise) or not self.input_noise:
            raise UsageError(f"input_noise must be positive, finite standard deviations, "
                             f"got {self.input_noise!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UsageError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def feedback_note(rule: str, multiplier: float | str) -> str | None:
    """What ``--feedback-lr-multiplier auto`` cannot do for this rule, in one line."""
    if multiplier != AUTO:
        return None
    declared = rule_declaration(rule)
    if not declared.learns_feedback:
        return (f"--feedback-lr-multiplier auto has no effect on {rule}: auto paces a B "
                "that learns from a regularizer, and its B has none; the run goes on")
    if not declared.declared_mechanism.paced:
        return (f"--feedback-lr-multiplier auto has no effect on {rule}: auto paces a B by "
                "its regularizer alone, and its B also learns from what the planner does not "
                "see; the run goes on")
    if declared.receives_task_gradient:
        return (f"--feedback-lr-multiplier auto keeps {rule}'s B on W's learning rate (its B "
                "takes W's updates); a larger alpha relaxes it faster")
    return None


def option_notes(rule: str, options: dict[str, Any], archs: tuple[str, ...] = (),
                 searched: tuple[str, ...] = ()) -> list[str]:
    """One line for each given option that cannot do what it says for this rule (the run
    goes on): ``--feedback-lr-multiplier auto``, ``--noise-distribution``, ``--noise-batch``;
    and the advice of the families of ``archs`` (``Family.advice``) for an option held away
    from its advised value (a ``searched`` option is held at none)."""
    notes = [feedback_note(rule, options.get("feedback_lr_multiplier", 1.0))]
    defaults = TrainConfig()
    for family in sorted({architecture(a).axis for a in archs}, key=lambda f: f.name):
        for option, value, why in family.advice:
            given = options.get(option, getattr(defaults, option))
            if option not in searched and given != value:
                notes.append(f"--{option.replace('_', '-')} {given}: {why}")
    noise = options.get("noise_distribution", DEFAULT_NOISE)
    if noise != DEFAULT_NOISE and not rule_declaration(rule).uses_noise:
        notes.append(f"--noise-distribution {noise} has no effect on {rule}: its regularizer "
                     "draws no input noise; the run goes on")
    noise_batch = options.get("noise_batch", 0)
    if noise_batch and not rule_declaration(rule).uses_noise:
        notes.append(f"--noise-batch {noise_batch} has no effect on {rule}: its regularizer "
                     "draws no input noise; the run goes on")
    preconditioner = options.get("feedback_preconditioner", "none")
    if preconditioner != "none" and "sparse" not in rule_declaration(rule).terms:
        notes.append(f"--feedback-preconditioner {preconditioner} has no effect on {rule}: "
                     "it preconditions a regularizer with a sparse term (activation "
                     "alignment); the run goes on")
    return [n for n in notes if n]


def training_options() -> list[dataclasses.Field]:
    """The fields a command line exposes as flags, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def tunable_options() -> tuple[str, ...]:
    """Training options a sweep may search or fix beside the rule's metaparameters: numbers,
    and the categorical ones of ``choice_options``."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("tunable"))


def choice_options() -> dict[str, tuple[str, ...]]:
    """The tunable options that take one of a few names, with those names."""
    return {f.name: tuple(f.metadata["choices"]) for f in dataclasses.fields(TrainConfig)
            if f.metadata.get("tunable") and f.metadata.get("choices")}


def integer_options() -> tuple[str, ...]:
    """The tunable options that take whole numbers (batch size, subset sizes)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig)
                 if f.metadata.get("tunable") and str(f.type).startswith("int"))


def coerce_option(name: str, value: Any) -> Any:
    """A sampled or fixed value as its option takes it: searchers hand integers as floats."""
    if name in integer_options() and isinstance(value, float) and value == int(value):
        return int(value)
    return value


def describe_option(name: str) -> str:
    field_ = next((f for f in dataclasses.fields(TrainConfig) if f.name == name), None)
    if field_ is None:
        raise UsageError(f"unknown training option {name!r}")
    return field_.metadata["help"]
