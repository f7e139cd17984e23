"""Writing Ray trials into a study: the record a finished Ray trial leaves, its mapping to an
Optuna ``FrozenTrial``, and the idempotent write.

Every Ray trial becomes exactly one Optuna trial, keyed by the user attribute ``ray_trial_id``
so that a resumed or reconciled sweep never records a trial twice. Self-contained (it needs
only the retry policy) because the record mapping is the part of the schema that changes
with what a trial reports, and is meant to move into a schema module of its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Mapping

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search.records import history_row, trial_summary
from search.scores import score_of
from search.storage.errors import RETRY


@dataclass
class TrialRecord:
    """What one finished Ray trial leaves behind, independent of how Ray reported it."""

    ray_trial_id: str
    params: dict[str, float]
    history: list[dict[str, Any]]
    status: str  # completed | diverged | invalid | stopped | error
    reason: str | None = None
    wall_time: float | None = None
    node_ip: str | None = None
    node_id: str | None = None  # Ray's node id: unlike the IP, distinct for nodes on one host
    extra: dict[str, Any] | None = None  # further user attributes (e.g. a transfer run's key)
    value: float | None = None  # the trial's value when it is not its best score
    # The Optuna trial number it got in the study (what `best` and `trials` show), set by
    # ``record_trials`` once the study holds it; None until then.
    number: int | None = None


def recorded_numbers(study: optuna.Study) -> dict[str, int]:
    """The study's creditsweep trials: Ray trial id -> Optuna trial number."""
    return {t.user_attrs["ray_trial_id"]: t.number for t in study.get_trials(deepcopy=False)
            if "ray_trial_id" in t.user_attrs}


def recorded_ray_ids(study: optuna.Study) -> set[str]:
    return set(recorded_numbers(study))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def to_frozen_trial(record: TrialRecord,
                    distributions: Mapping[str, BaseDistribution]) -> FrozenTrial:
    # What a study maximizes: the best score over the epochs (search.scores).
    curve = {int(r.get("epoch_overall", r["epoch"])): score
             for r in record.history for score in [score_of(r)] if score is not None}
    last = record.history[-1] if record.history else {}
    attrs: dict[str, Any] = {
        "ray_trial_id": record.ray_trial_id, "status": record.status,
        "epochs_completed": len(record.history),
        "wall_time": record.wall_time if record.wall_time is not None else last.get("wall_time"),
        "history": [history_row(r) for r in record.history],
    }
    if record.node_ip:
        attrs["node_ip"] = record.node_ip
    if record.node_id:
        attrs["node_id"] = record.node_id
    attrs.update(record.extra or {})
    attrs.update(trial_summary(last))
    if record.reason:
        attrs["fail_reason"] = record.reason
    params = {k: v for k, v in record.params.items() if k in distributions}
    dists = {k: distributions[k] for k in params}
    if record.status == "completed" and record.value is not None:
        state, value = TrialState.COMPLETE, record.value  # an objective over architectures
    elif record.status == "completed" and curve:
        state, value = TrialState.COMPLETE, max(curve.values())
    elif record.status == "stopped" and curve:
        state, value = TrialState.PRUNED, None
    else:
        state, value = TrialState.FAIL, None
        attrs.setdefault("fail_reason", record.reason or f"trial ended as {record.status}")
    trial = optuna.trial.create_trial(state=state, value=value, params=params,
                                      distributions=dists, user_attrs=_jsonable(attrs),
                                      intermediate_values=curve)
    if _finite(attrs["wall_time"]) and trial.datetime_complete is not None:
        # Recorded when the trial ended: its start is that much earlier, so Optuna's tools
        # show the real duration.
        trial.datetime_start = trial.datetime_complete - timedelta(seconds=attrs["wall_time"])
    return trial


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs, default=str))


def add_trial(study: optuna.Study, trial: FrozenTrial) -> int:
    """Optuna's ``Study.add_trial``, returning the number the study gave the trial.

    Optuna's own returns nothing, and reading the study back to find the trial would race
    other drivers writing to it. This is what it does (its checks, then the storage API's
    ``create_new_trial``, which returns the new trial's id), plus asking the storage for that
    trial's number."""
    trial._validate()
    if trial.values is not None and len(study.directions) != len(trial.values):
        raise ValueError(f"the trial has {len(trial.values)} values; study "
                         f"{study.study_name!r} has {len(study.directions)} objectives")
    storage = study._storage
    trial_id = storage.create_new_trial(study._study_id, template_trial=trial)
    return storage.get_trial_number_from_id(trial_id)


def record_trials(study: optuna.Study, records: Iterable[TrialRecord],
                  distributions: Mapping[str, BaseDistribution], *, url: str | None = None,
                  known: dict[str, int] | None = None, attempts: int | None = None,
                  fence: Callable[[], None] | None = None) -> int:
    """Add the records not yet in the study; returns how many were added. Each record the
    study holds afterwards, written now or before, carries its Optuna trial number
    (``TrialRecord.number``), the one ``best`` and ``trials`` show.

    ``known`` caches the recorded ids and their numbers across calls (one driver owns its
    experiment's ids), so a long sweep does not re-read every trial per write; after a failed
    write it is re-read, since the write may have landed unacknowledged. Transient failures are retried under
    ``RETRY``, so a database that is briefly away loses nothing. ``fence`` (a driver's lease
    check) is called immediately before each write, each retry included: once it raises,
    nothing more is written.
    """
    if known is None:
        known = {}
    added = 0
    for record in records:
        def write(attempt: int, record: TrialRecord = record) -> int:
            if attempt or not known:
                known.update(recorded_numbers(study))
            if record.ray_trial_id in known:  # written before (or landed unacknowledged)
                record.number = known[record.ray_trial_id]
                return 0
            trial = to_frozen_trial(record, distributions)
            if fence is not None:
                fence()
            record.number = known[record.ray_trial_id] = add_trial(study, trial)
            return 1

        added += RETRY.run(write, url, attempts)
    return added
