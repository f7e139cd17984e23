"""What a trial records, declared once: the fields of an epoch's record, the summary a trial
keeps, and a registry of measures.

The trainer's loop produces one record per epoch (``EpochRecord``): scalars, and three nested
groups (per-layer alignment diagnostics, B's plan, what ``--curvature`` measured). Tune's
metrics are flat, so the groups travel as JSON (``flat_metrics``); the study keeps every
epoch's scalars in the trial's ``history`` and the last epoch's measures as the trial's own
attributes (``TrialSummary``). A *measure* names one number of a record: where it nests, the
attribute and column it becomes, its label. Recording, the ``history`` rows, the study's
``trials`` rows, ``best`` and the reports all iterate over ``MEASURES``, so that adding a
measurement is one ``register_measure`` call.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, TypedDict

from catalogue.registry import Registry

NESTED = ("diagnostics", "feedback_plan", "curvature")  # an epoch record's groups


class EpochRecord(TypedDict, total=False):
    """One epoch as the loop reports it (``trainer.loop``); a trial over several
    architectures adds which one (``arch``) and the epoch's place among all of them."""

    epoch: int
    train_loss: float
    train_top1: float
    train_r2: float  # a regression task's: the fraction of the target's variance explained
    alignment_loss: float
    lr: float
    train_size: int
    val_size: int
    val_loss: float
    val_top1: float
    val_top5: float
    val_r2: float
    val_score: float  # the task's score (val_top1 or val_r2): what a search maximizes
    epoch_time: float
    wall_time: float
    relaxation_residual: float  # a relaxation rule's last step: its last sweep's relative change
    inversion_dt: float  # dynamic inversion's last step: the smallest Euler step a loop took
    arch: str
    epoch_overall: int
    diagnostics: dict[str, Any]  # {"summary": {...}, "layers": {...}}
    feedback_plan: dict[str, Any]  # {"summary": {...}, "layers": {...}, "limit", "initial"}
    curvature: dict[str, Any]  # what --curvature measured at the end of the run


EPOCH_FIELDS: tuple[str, ...] = tuple(k for k in EpochRecord.__annotations__ if k not in NESTED)


class TrialSummary(TypedDict, total=False):
    """The attributes every recorded trial carries (besides its measures, which
    ``MEASURES`` names, and what the kind of study adds: a sweep's id, a run's key)."""

    ray_trial_id: str
    status: str  # completed | diverged | invalid | stopped | error
    epochs_completed: int
    wall_time: float
    history: list[dict[str, Any]]  # each epoch's scalars and per-epoch measures
    train_size: int
    val_size: int
    train_config: dict[str, Any]  # the TrainConfig the trial ran
    node_ip: str
    node_id: str
    fail_reason: str
    diagnostics: dict[str, Any]  # the last epoch's summary over the layers
    diagnostics_per_layer: dict[str, Any]
    feedback_plan: dict[str, Any]  # B's plan: its summary, the first plan, the limit
    feedback_plan_per_layer: dict[str, Any]
    curvature: dict[str, Any]


@dataclass(frozen=True)
class Measure:
    """One number of an epoch's record, and everything that shows it.

    ``path``: where it nests in the record (``("curvature", "top_eigenvalue")``). The trial
    keeps its last epoch's value as the attribute ``name``, which is also its ``trials``
    column; ``per_epoch`` keeps it on every ``history`` row too, as ``history_key``.
    ``column``: among the columns a ``trials`` table shows by default; ``in_best``: named in
    ``best``'s title line; ``over_seeds``: summarised over seeds in transfer and robustness
    summaries (mean, spread, count).
    """

    name: str
    path: tuple[str, ...]
    label: str
    header: str
    per_epoch: bool = False
    history_name: str | None = None
    column: bool = False
    in_best: bool = False
    over_seeds: bool = False

    @property
    def history_key(self) -> str:
        return self.history_name or self.name

    def of_record(self, record: Mapping[str, Any]) -> Any:
        """Its value in an epoch's record (None when that epoch did not measure it)."""
        value: Any = record
        for key in self.path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    def of_trial(self, attrs: Mapping[str, Any]) -> Any:
        """Its value in a recorded trial's attributes (studies from before a measure was an
        attribute of its own keep it in its nested summary: read there)."""
        if self.name in attrs:
            return attrs[self.name]
        nested = attrs.get(self.path[0])
        if isinstance(nested, Mapping):
            return nested.get(self.path[-1])
        return None


MEASURES: Registry[Measure] = Registry("measure")


def register_measure(measure: Measure) -> Measure:
    return MEASURES.register(measure.name, measure)


def measures() -> list[Measure]:
    """Every registered measure, in the order registered (the order columns appear in)."""
    return [MEASURES.get(name) for name in MEASURES.names()]


for _measure in (
    Measure("weight_angle_mean", ("diagnostics", "summary", "weight_angle_mean"),
            "mean angle between W and B (degrees)", "∠(W,B)", column=True),
    Measure("norm_ratio_mean", ("diagnostics", "summary", "norm_ratio_mean"),
            "mean norm ratio ‖B‖/‖W‖", "‖B‖/‖W‖"),
    Measure("update_angle_mean", ("diagnostics", "summary", "update_angle_mean"),
            "mean angle between the rule's update of W and the true gradient (degrees)",
            "∠(ΔW,∇)", column=True),
    Measure("delta_angle_mean", ("diagnostics", "summary", "delta_angle_mean"),
            "mean angle between the error each layer's output receives and the true ∂L/∂a "
            "(degrees; layer-wise rules)", "∠(δ,∂L/∂a)", column=True),
    Measure("relaxation_residual", ("relaxation_residual",),
            "relative change in the last relaxation step (small: T was enough)", "resid.",
            column=True),
    Measure("inversion_dt", ("inversion_dt",),
            "smallest Euler step of dynamic inversion's loops in the last step (below the dt "
            "option: a loop was too stiff for it)", "DI dt"),
    Measure("plan_verdict", ("feedback_plan", "summary", "verdict"),
            "B's plan: ok, under-relaxed or unstable", "B's plan", per_epoch=True),
    Measure("relaxations_min", ("feedback_plan", "summary", "relaxations_min"),
            "fewest relaxation times of any layer's B", "relax. min", per_epoch=True,
            history_name="plan_relaxations_min", column=True),
    Measure("stability_ratio_max", ("feedback_plan", "summary", "stability_ratio_max"),
            "largest lr_B × curvature / stability limit", "stab. max", per_epoch=True,
            history_name="plan_stability_ratio_max"),
    Measure("top_eigenvalue", ("curvature", "top_eigenvalue"),
            "top Hessian eigenvalue of the true loss", "λ_max", per_epoch=True, column=True,
            in_best=True, over_seeds=True),
    Measure("top_eigenvalue_scaled", ("curvature", "top_eigenvalue_scaled"),
            "λ_max × ‖W‖² (every weight layer's W): unchanged when BatchNorm-followed weights "
            "are scaled alike, where λ_max falls as 1/‖W‖²", "λ_max·‖W‖²", per_epoch=True,
            column=True, in_best=True, over_seeds=True),
    Measure("trace", ("curvature", "trace"), "Hessian trace of the true loss", "trace"),
    Measure("generalization_gap", ("curvature", "generalization_gap"),
            "generalisation gap (train − val top-1, eval mode)", "gen. gap", per_epoch=True,
            in_best=True, over_seeds=True),
    Measure("top_eigenvalue_recurrent", ("curvature", "top_eigenvalue_recurrent"),
            "top Hessian eigenvalue of the true loss in W_rec alone (recurrent models)",
            "λ_max W_rec", per_epoch=True),
    Measure("loss_gap", ("curvature", "loss_gap"),
            "loss gap (val − train loss, eval mode; every task)", "loss gap", per_epoch=True),
    Measure("train_loss_eval", ("curvature", "train_loss_eval"),
            "loss on the fixed training subset, eval mode (where the gaps are matched)",
            "train loss (eval)", per_epoch=True),
):
    register_measure(_measure)


# --- Tune's flat metrics and the study's rows ------------------------------------------------

def flat_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's record as Tune's flat metrics: the groups as JSON (``<group>_json``)."""
    metrics = {k: v for k, v in record.items() if k not in NESTED}
    for key in NESTED:
        if key in record:
            metrics[f"{key}_json"] = json.dumps(record[key])
    return metrics


def from_flat(metrics: Mapping[str, Any]) -> EpochRecord:
    """The epoch's record back from Tune's metrics: its fields and groups, nothing of Tune's."""
    record: dict[str, Any] = {k: v for k, v in metrics.items() if k in EPOCH_FIELDS}
    for key in NESTED:
        if metrics.get(f"{key}_json"):
            record[key] = json.loads(metrics[f"{key}_json"])
    return record  # type: ignore[return-value]


def history_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch as the study keeps it in ``history``: its scalars and per-epoch measures."""
    row = {k: v for k, v in record.items() if k not in NESTED}
    for measure in measures():
        if measure.per_epoch:
            value = measure.of_record(record)
            if value is not None:
                row[measure.history_key] = value
    return row


def trial_summary(last: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial keeps of its last epoch: the groups' summaries and every measure."""
    attrs: dict[str, Any] = {}
    for key in ("train_size", "val_size"):  # the examples the trial trained and validated on
        if key in last:
            attrs[key] = last[key]
    if "diagnostics" in last:
        attrs["diagnostics"] = last["diagnostics"]["summary"]
        attrs["diagnostics_per_layer"] = last["diagnostics"]["layers"]
    if "feedback_plan" in last:  # B's plan: filter and plot a study by it
        plan = last["feedback_plan"]
        attrs["feedback_plan"] = {**plan["summary"], "initial": plan.get("initial"),
                                  "limit": plan.get("limit")}
        attrs["feedback_plan_per_layer"] = plan["layers"]
    if "curvature" in last:  # beyond accuracy, at the end of the run
        attrs["curvature"] = last["curvature"]
    for measure in measures():
        value = measure.of_record(last)
        if value is not None:
            attrs[measure.name] = value
    return attrs


def trial_measures(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded trial's measures, one ``trials`` column each."""
    return {m.name: m.of_trial(attrs) for m in measures()}


def default_columns() -> tuple[str, ...]:
    return tuple(m.name for m in measures() if m.column)


def best_line(attrs: Mapping[str, Any]) -> str:
    """``, λ_max 12.3, gen. gap 0.01``: the measures ``best`` names beside the value."""
    return "".join(f", {m.label} {value:.4g}" for m in measures() if m.in_best
                   for value in [m.of_trial(attrs)] if _number(value))


def over_seeds() -> list[Measure]:
    return [m for m in measures() if m.over_seeds]


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def numbers(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values``."""
    return [float(v) for v in values if _number(v)]
