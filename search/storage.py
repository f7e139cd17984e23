"""Optuna studies in an RDB (SQLAlchemy URL): naming, recording Ray trials, queries.

Every Ray trial becomes exactly one Optuna trial, keyed by the user attribute ``ray_trial_id``
so that a resumed or reconciled sweep never records a trial twice. Studies are plain Optuna
studies: ``optuna trials``, ``optuna best-trial`` and optuna-dashboard read them as they are.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Mapping

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search.cli_common import UsageError

DEFAULT_STORAGE = "sqlite:///creditsweep.db"
STORAGE_ENV = "CREDITSWEEP_STORAGE"
PASSWORD_FILE_ENV = "CREDITSWEEP_STORAGE_PASSWORD_FILE"
OBJECTIVE = "val_top1"  # what a study maximizes: best validation top-1 over the epochs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(flag: str | None) -> str:
    """--storage, else $CREDITSWEEP_STORAGE, else a SQLite file in the current folder.

    A URL without a password takes it from the file named by $CREDITSWEEP_STORAGE_PASSWORD_FILE
    (a Docker secret, say), so that the password is in no command line and no environment.
    """
    url = flag or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    if not password_file:
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url  # open_storage reports the malformed URL
    if parsed.password is not None or parsed.drivername.startswith("sqlite"):
        return url
    try:
        password = open(password_file, encoding="utf-8").read().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the storage password file {password_file}: "
                         f"{exc.strerror}") from None
    return parsed.set(password=password).render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with any password masked, for everything a user sees or a log keeps."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def mask_password(text: str, url: str | None) -> str:
    """``text`` (a driver's error message, say) with the URL's password masked."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url or "").password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


# Errors that retrying cannot fix: fail at once instead of after the back-off.
_NOT_TRANSIENT = ("No module named", "Can't load plugin", "password authentication failed",
                  "no password supplied", "does not exist")


def open_storage(url: str, *, retries: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage; a malformed or unreachable URL becomes a one-line UsageError.

    Connections are checked before use (``pool_pre_ping``) so a database that went away and
    came back is reconnected instead of failing the sweep.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise UsageError(f"malformed storage URL {redact(url)!r}: expected a SQLAlchemy URL "
                         "such as sqlite:///creditsweep.db or postgresql+psycopg://…") from None
    last: Exception | None = None
    for attempt in range(retries):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=None)
        except Exception as exc:  # driver missing, server down, bad credentials
            last = exc
            if any(final in str(exc) for final in _NOT_TRANSIENT):
                break
            time.sleep(min(2.0, 0.2 * 2 ** attempt))
    message = str(last).strip().splitlines()[0] if last else "unknown error"
    raise UsageError(f"cannot open storage {redact(url)}: {mask_password(message, url)}")


def study_name_for(rule: str, arch: str, dataset: str) -> str:
    return f"{rule}.{arch}.{dataset}"


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        hint = f"; studies here: {', '.join(names)}" if names else "; the database has none"
        raise UsageError(f"no study named {name!r}{hint}") from None


def create_or_load_study(storage: optuna.storages.BaseStorage, name: str,
                         attrs: Mapping[str, Any]) -> optuna.Study:
    """The study for a sweep; a continued study must describe the same experiment."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    existing = study.user_attrs
    for key in ("rule", "arch", "dataset"):
        if key in existing and existing[key] != attrs[key]:
            raise UsageError(f"study {name!r} holds {key}={existing[key]!r}, not "
                             f"{attrs[key]!r}; choose another --study")
    for key, value in attrs.items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
    return study


@dataclass
class TrialRecord:
    """What one finished Ray trial leaves behind, independent of how Ray reported it."""

    ray_trial_id: str
    params: dict[str, float]
    history: list[dict[str, Any]]
    status: str  # completed | diverged | stopped | error
    reason: str | None = None
    wall_time: float | None = None
    node_ip: str | None = None
    node_id: str | None = None  # Ray's node id: unlike the IP, distinct for nodes on one host
    extra: dict[str, Any] | None = None  # further user attributes (e.g. a transfer run's key)


def recorded_ray_ids(study: optuna.Study) -> set[str]:
    return {t.user_attrs["ray_trial_id"] for t in study.get_trials(deepcopy=False)
            if "ray_trial_id" in t.user_attrs}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def to_frozen_trial(record: TrialRecord,
                    distributions: Mapping[str, BaseDistribution]) -> FrozenTrial:
    curve = {int(r["epoch"]): float(r[OBJECTIVE]) for r in record.history
             if _finite(r.get(OBJECTIVE))}
    last = record.history[-1] if record.history else {}
    attrs: dict[str, Any] = {
        "ray_trial_id": record.ray_trial_id, "status": record.status,
        "epochs_completed": len(record.history),
        "wall_time": record.wall_time if record.wall_time is not None else last.get("wall_time"),
        "history": [{k: v for k, v in r.items() if k != "diagnostics"} for r in record.history],
    }
    if record.node_ip:
        attrs["node_ip"] = record.node_ip
    if record.node_id:
        attrs["node_id"] = record.node_id
    attrs.update(record.extra or {})
    if "diagnostics" in last:
        attrs["diagnostics"] = last["diagnostics"]["summary"]
        attrs["diagnostics_per_layer"] = last["diagnostics"]["layers"]
    if record.reason:
        attrs["fail_reason"] = record.reason
    params = {k: v for k, v in record.params.items() if k in distributions}
    dists = {k: distributions[k] for k in params}
    if record.status == "completed" and curve:
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


def record_trials(study: optuna.Study, records: Iterable[TrialRecord],
                  distributions: Mapping[str, BaseDistribution], *,
                  known: set[str] | None = None, retries: int = 8) -> int:
    """Add the records not yet in the study; returns how many were added.

    ``known`` caches the recorded ids across calls (one driver owns its experiment's ids), so
    a long sweep does not re-read every trial per write; after a failed write it is re-read.
    Writes are retried with back-off, so a database that is briefly unreachable loses nothing.
    """
    if known is None:
        known = set()
    added = 0
    for record in records:
        for attempt in range(retries):
            try:
                if attempt or not known:
                    known |= recorded_ray_ids(study)
                if record.ray_trial_id in known:
                    break
                study.add_trial(to_frozen_trial(record, distributions))
                known.add(record.ray_trial_id)
                added += 1
                break
            except Exception:
                if attempt == retries - 1:
                    raise
                time.sleep(min(5.0, 0.25 * 2 ** attempt))
    return added


# --- queries -----------------------------------------------------------------------------------

def study_summaries(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        best = max((t.value for t in trials if t.state == TrialState.COMPLETE), default=None)
        attrs = study.user_attrs
        rows.append({"study": summary.study_name, "kind": attrs.get("kind", "sweep"),
                     "rule": attrs.get("rule"), "arch": attrs.get("arch"),
                     "dataset": attrs.get("dataset"),
                     "complete": counts[TrialState.COMPLETE], "failed": counts[TrialState.FAIL],
                     "pruned": counts[TrialState.PRUNED],
                     "running": counts[TrialState.RUNNING], "best": best})
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise UsageError(f"study {study.study_name!r} has no completed trial yet") from None


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        diag = t.user_attrs.get("diagnostics", {})
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "epochs": t.user_attrs.get("epochs_completed"),
                     "weight_angle_mean": diag.get("weight_angle_mean"),
                     "norm_ratio_mean": diag.get("norm_ratio_mean"),
                     "wall_time": t.user_attrs.get("wall_time"),
                     **{k: t.user_attrs.get(k) for k in ("node_ip", "device", "gpus",
                                                         "attempts")},
                     "fail_reason": t.user_attrs.get("fail_reason")})
    return rows
