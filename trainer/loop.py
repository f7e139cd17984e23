"""``train(config) -> TrainResult``: one run of a rule on a model and dataset.

SGD with Nesterov momentum steps W from the task loss and B from the rule's alignment loss.
The weight-decay option applies to W only (never B, biases or BatchNorm; B's decay is its
rule's, see ``trainer.optim``); the learning rate warms up linearly and then follows a step
or cosine schedule. A run that diverges (non-finite loss or weights, or a training loss past
its ceiling: ``loss_ceiling`` times the first step's) ends with status ``diverged`` and its
reason rather than an exception, because a search service must record it and go on; a loss of
1e33 that stays finite is no completed run.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catalogue.errors import UsageError
from catalogue.rule import get_rule
from catalogue.training import TrainConfig
from trainer.alignment import alignment_value_and_grads
from trainer.checkpoint import Checkpointer, due, rng_state, set_rng_state
from trainer.conversion import convert, feedback_layers
from trainer.datasets import check_model_fits, load_dataset
from trainer.diagnostics import measure_alignment
from trainer.dynamics import FeedbackPlan, FeedbackPlanner
from trainer.preconditioner import attach as attach_preconditioners
from trainer.dynamics.plan import not_applicable
from trainer.generalization import measure as measure_generalization
from trainer.mechanisms import step_fields
from trainer.models import create_model
from trainer.tasks import LossFn, Scorer, loss_fn, score_batches
from trainer.optim import applies_feedback_decay, feedback_groups, make_optimizer, set_lr
from trainer.schedule import lr_factors

@dataclass
class TrainResult:
    status: Literal["completed", "diverged"]
    reason: str | None
    history: list[dict[str, Any]]
    best_val_top1: float | None  # the best epoch's val_score: top-1 for classification
    wall_time: float
    converted_layers: int
    num_parameters: int
    device: str
    config: dict[str, Any]
    feedback_plan: dict[str, Any] | None = None  # the last plan, per layer, + the first's summary

    @property
    def final(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


EpochCallback = Callable[[dict[str, Any]], None]
StepCallback = Callable[[int, int, int], None]  # (epoch, step, steps_per_epoch)
PlanCallback = Callable[[FeedbackPlan], None]


class Diverged(Exception):
    pass


class LossCeiling:
    """A finite loss can still be a diverged run (DFA at too large a rate reaches 1e33 and
    stays finite): past ``factor`` times the run's first training loss, the run has
    diverged. The first loss is kept in checkpoints, so a resumed run keeps its ceiling."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.first: float | None = None

    def check(self, loss: float, epoch: int, step: int) -> None:
        if not self.factor:
            return
        if self.first is None:
            self.first = loss
            return
        limit = self.factor * self.first
        if limit > 0 and loss > limit:
            raise Diverged(f"training loss {loss:.3g} past its ceiling {limit:.3g} "
                           f"({self.factor:g} x the first step's {self.first:.3g}) at epoch "
                           f"{epoch + 1}, step {step + 1}")


def resolve_device(name: str) -> torch.device:
    """auto: the GPU when there is one, else the CPU; cuda[:N] only where CUDA is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _first_non_finite(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return name
    return None


def evaluate(model: nn.Module, batches, device: torch.device, task: str = "classification"
             ) -> dict[str, float]:
    """``val_loss`` and the task's metrics (top-1/top-5, or R^2) over the whole split."""
    return score_batches(model, batches.batches(0), device, task, "val")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
               y: Tensor, loss: LossFn = F.cross_entropy) -> tuple[Tensor, Tensor, Tensor]:
    """One SGD step on task loss + alignment loss; returns (output, task, align), detached.

    A non-finite loss still takes the step: the caller stops the run, so it does not matter.
    """
    logits = model(x)
    task = loss(logits, y)
    # The same update as (task + alignment_loss).backward() and plain SGD, with B's
    # closed-form gradient added after the task's backward (no autograd node per layer for
    # it) and, with make_optimizer's SGD, B's decay term applied as its weight decay.
    align, feedback_grads = alignment_value_and_grads(
        model, decay_grads=not applies_feedback_decay(optimizer))
    optimizer.zero_grad(set_to_none=True)
    task.backward()
    with torch.no_grad():
        for B, grad in feedback_grads:
            if B.grad is None:
                B.grad = grad
            else:
                B.grad.add_(grad)
    optimizer.step()
    return logits.detach(), task.detach(), align.detach()


def plan_reason(model: nn.Module) -> str:
    """Why B's planner has nothing to pace in this model: its mechanism's word."""
    for _, layer in feedback_layers(model):
        why = layer.mechanism.plan_reason(layer.rule.rule)
        if why is not None:
            return why
    return "its B is W (tied)"


def build(config: TrainConfig) -> tuple[nn.Module, Any]:
    """The converted model and its dataset, as ``train`` builds them (seeded)."""
    seed_everything(config.seed)
    check_model_fits(config.dataset, (config.arch,), config.image_size, config.dataset_options)
    data = load_dataset(config.dataset, batch_size=config.batch_size, seed=config.seed,
                        data_dir=config.data_dir, image_size=config.image_size,
                        num_workers=config.num_workers, train_subset=config.train_subset,
                        val_subset=config.val_subset, options=config.dataset_options)
    model = create_model(config.arch, spec=data.spec, outputs=data.num_classes,
                         readout=data.task_declaration.readout_for(data.spec),
                         small_input=config.small_input, **config.model_options)
    convert(model, get_rule(config.rule, config.noise_distribution, config.noise_batch,
                            **config.metaparameters),
            copy_weights=config.copy_weights)
    attach_preconditioners(model, config.feedback_preconditioner)
    return model, data


def train(config: TrainConfig | dict[str, Any], callback: EpochCallback | None = None,
          on_step: StepCallback | None = None, on_plan: PlanCallback | None = None,
          checkpointer: Checkpointer | None = None) -> TrainResult:
    """Train once; ``callback`` receives each epoch's record (the search reports through it),
    ``on_plan`` the feedback-weight plan made before the first step. With a ``checkpointer``
    the run saves its whole state every ``checkpointer.every`` epochs (before that epoch's
    callback, so that a report can carry it) and, when one exists, continues from it: the
    result is the one an uninterrupted run with the same seed would give."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    else:
        config.validate()
    device = resolve_device(config.device)
    started = time.perf_counter()
    model, data = build(config)
    model.to(device)
    optimizer = make_optimizer(model, config)
    restored = checkpointer.restore() if checkpointer is not None else None
    if restored is not None:
        model.load_state_dict(restored["model"])
        optimizer.load_state_dict(restored["optimizer"])  # new group dicts: look them up after
    b_groups = [g for g in optimizer.param_groups if g.get("feedback")]
    per_epoch = len(data.train)
    if config.max_steps_per_epoch:
        per_epoch = min(per_epoch, config.max_steps_per_epoch)
    factors = lr_factors(config, per_epoch * config.epochs, per_epoch)
    probe_batch = next(iter(data.val.batches(0)))
    planner = None
    # The planner paces B's by their rule's regularizer; a mechanism whose B it cannot pace
    # (plan_reason) may still train B, from W's update (activation relaxation, learned).
    if config.feedback_plan and b_groups and any(
            layer.mechanism.plan_reason(layer.rule.rule) is None
            for _, layer in feedback_layers(model)):
        train_probe = next(iter(data.train.batches(0)))[0].to(device)
        planner = FeedbackPlanner(model, feedback_groups(model, optimizer), train_probe,
                                  lr=config.lr, factors=factors, momentum=config.momentum,
                                  multiplier=config.feedback_lr_multiplier,
                                  target=config.feedback_relaxations,
                                  warmup=config.feedback_warmup_relaxations, seed=config.seed)
    skipped_plan = (not_applicable(plan_reason(model))
                    if config.feedback_plan and planner is None else None)
    history: list[dict[str, Any]] = []
    status, reason, step, start_epoch = "completed", None, 0, 0
    first_summary: dict[str, Any] | None = None
    ceiling = LossCeiling(config.loss_ceiling)
    if restored is not None:
        history, step, start_epoch = list(restored["history"]), restored["step"], len(
            restored["history"])
        ceiling.first = restored.get("first_loss")
        first_summary = restored.get("first_plan")
        if planner is not None and restored.get("planner") is not None:
            planner.load_state_dict(restored["planner"])
        started -= history[-1]["wall_time"] if history else 0.0
        set_rng_state(restored["rng"])
    elif planner is not None:
        planner.warm_up()  # auto: B alone, before W's first step
        plan = planner.plan(0, 0)
        first_summary = plan.summary()
        if on_plan is not None:
            on_plan(plan)

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "history": history, "first_plan": first_summary,
                "planner": planner.state_dict() if planner is not None else None,
                "rng": rng_state(), "first_loss": ceiling.first}

    model.train()
    task = data.task_declaration
    step_loss = loss_fn(task)
    try:
        last = config.epochs_run()  # the schedule spans config.epochs either way
        for epoch in range(start_epoch, last):
            epoch_start = time.perf_counter()
            align_sum = 0.0
            scorer = Scorer(task)
            for i, (x, y) in enumerate(data.train.batches(epoch)):
                if i >= per_epoch:
                    break
                set_lr(optimizer, config.lr, float(factors[step]))
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                output, loss, align = train_step(model, optimizer, x, y, step_loss)
                if not torch.isfinite(loss) or not torch.isfinite(align):
                    bad = "training loss" if not torch.isfinite(loss) else "alignment loss"
                    raise Diverged(f"non-finite {bad} at epoch {epoch + 1}, step {i + 1}")
                ceiling.check(float(loss), epoch, i)
                if config.update_noise:
                    _add_update_noise(b_groups, config.update_noise,
                                      config.lr * float(factors[step]))
                scorer.add(output, y, loss)
                align_sum += float(align) * len(y)
                step += 1
                if on_step is not None:
                    on_step(epoch, i + 1, per_epoch)
            if (name := _first_non_finite(model)) is not None:
                raise Diverged(f"non-finite weights in {name} after epoch {epoch + 1}")
            trained = scorer.result("train")
            trained.pop("train_top5", None)
            record = {"epoch": epoch + 1, **trained,
                      "alignment_loss": align_sum / scorer.n,
                      "lr": optimizer.param_groups[0]["lr"], "train_size": data.train_size,
                      "val_size": data.val_size}
            record.update(step_fields(model))  # a settling rule's last residual, step...
            record.update(evaluate(model, data.val, device, task.name))
            record["val_score"] = record[task.score]  # what a search maximizes
            if not math.isfinite(record["val_loss"]):
                raise Diverged(f"non-finite validation loss after epoch {epoch + 1}")
            if config.diagnostics:
                x, y = (t.to(device) for t in probe_batch)
                record["diagnostics"] = measure_alignment(model, x, y, step_loss)
            if config.curvature and (epoch + 1 == last or (
                    config.curvature_every and (epoch + 1) % config.curvature_every == 0)):
                record["curvature"] = _beyond_accuracy(model, data, config, device, record)
            if planner is not None:
                plan = planner.plan(step, epoch + 1)
                record["feedback_plan"] = {**plan.to_dict(), "initial": first_summary}
            elif skipped_plan is not None:
                record["feedback_plan"] = skipped_plan
            record["epoch_time"] = time.perf_counter() - epoch_start
            record["wall_time"] = time.perf_counter() - started
            history.append(record)
            if checkpointer is not None and due(checkpointer.every, epoch + 1, last):
                checkpointer.save(state())
            if callback is not None:
                callback(record)
        if planner is not None and history:  # where B ended, against where its rule pulls it
            angles = planner.fixed_point_angles()
            final = history[-1]["feedback_plan"]
            for name, angle in angles.items():
                final["layers"][name]["fixed_point_angle"] = angle
            finite = [a for a in angles.values() if math.isfinite(a)]
            final["summary"]["fixed_point_angle_mean"] = (sum(finite) / len(finite)
                                                          if finite else None)
    except Diverged as exc:
        status, reason = "diverged", str(exc)
    best = max((r["val_score"] for r in history if math.isfinite(r["val_score"])),
               default=None)
    return TrainResult(status=status, reason=reason, history=history, best_val_top1=best,
                       wall_time=time.perf_counter() - started,
                       converted_layers=int(getattr(model, "creditsweep_converted", 0)),
                       num_parameters=sum(p.numel() for p in model.parameters()),
                       device=str(device), config=dataclasses.asdict(config),
                       feedback_plan=history[-1].get("feedback_plan") if history else None)


def _beyond_accuracy(model: nn.Module, data: Any, config: TrainConfig, device: torch.device,
                     val: dict[str, Any]) -> dict[str, Any]:
    """``--curvature``'s measurements (``val``: the epoch's record, with the val split's
    loss and score); one that cannot be made says why instead."""
    try:
        return measure_generalization(model, data, config, device, val)
    except (ArithmeticError, ValueError, RuntimeError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


@torch.no_grad()
def _add_update_noise(groups: list[dict[str, Any]], variance: float, lr: float) -> None:
    """B += lr * xi, xi ~ N(0, variance), with W's learning rate at this step: the same noise
    for every rule, whatever learning rate its B has."""
    std = math.sqrt(variance)
    for group in groups:
        for p in group["params"]:
            p.add_(torch.randn_like(p), alpha=lr * std)
