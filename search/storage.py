"""Optuna studies in an RDB (SQLAlchemy URL): opening storage, naming, recording, queries.

Every Ray trial becomes exactly one Optuna trial, keyed by the user attribute ``ray_trial_id``
so that a resumed or reconciled sweep never records a trial twice. Studies are plain Optuna
studies: ``optuna trials``, ``optuna best-trial`` and optuna-dashboard read them as they are.

Database errors are classified by their type (``classify``) and retried by one policy
(``RETRY``): a store that cannot be reached is retried and then reported as
``StorageUnavailable``; one that answers and refuses (credentials, a missing database, a file
that is not a database) is the user's to fix, reported at once as a ``UsageError``.
"""

from __future__ import annotations

import errno
import json
import math
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from catalogue.errors import EnvironmentProblem, StorageUnavailable, UsageError
from search.urls import (DEFAULT_STORAGE, PASSWORD_FILE_ENV, STORAGE_ENV, mask_password,
                         redact, storage_url)

__all__ = ["DEFAULT_STORAGE", "PASSWORD_FILE_ENV", "STORAGE_ENV", "mask_password", "redact",
           "storage_url"]

OBJECTIVE = "val_top1"  # what a study maximizes: best validation top-1 over the epochs
PARAMS = "params_"  # column prefix of a trial's parameters, as Optuna's trials_dataframe has it
T = TypeVar("T")

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- failures and the retry policy ---------------------------------------------------------------

Failure = Literal["transient", "usage", "environment", "other"]
_SQLITE_TRANSIENT = {5, 6, 10}  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR
_SQLITE_ENVIRONMENT = {8, 13}  # SQLITE_READONLY, SQLITE_FULL
# SQLSTATE classes a retry can outlast: connection exceptions, insufficient resources,
# operator intervention (a server shutting down or starting up), transaction rollbacks.
_SQLSTATE_TRANSIENT = ("08", "53", "57P", "40", "57014")  # 57014: statement timeout
# A concurrent writer got there first (two drivers creating Optuna's tables in a fresh
# database, or the same row): a retry sees what it made.
_SQLSTATE_RACE = ("23505", "42P07", "42710")
_SQLSTATE_USAGE = ("28", "3D", "42")  # credentials, unknown database, access and syntax
# The server's disk is full (53100); a read-only transaction, as on a hot standby (25006).
_SQLSTATE_ENVIRONMENT = ("53100", "25006")
# No space, over quota, a read-only file system: the machine refuses, not the input.
_ERRNO_ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _database_error(exc: BaseException) -> BaseException:
    """The error that says what happened: Optuna wraps a driver's error in its own
    ``StorageInternalError``, whose cause is the SQLAlchemy error."""
    from sqlalchemy import exc as sa

    seen = exc
    while seen is not None:
        if isinstance(seen, (sa.SQLAlchemyError, ImportError, OSError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def classify(exc: BaseException, url: str | None = None) -> Failure:
    """What a database error means, by its type and structured codes (never its text):
    ``transient`` is worth a retry, ``usage`` is the user's to fix, ``environment`` is the
    machine refusing (a read-only database or file system, a full disk), ``other`` a bug."""
    from sqlalchemy import exc as sa

    exc = _database_error(exc)
    if isinstance(exc, (sa.ArgumentError, ImportError)):  # malformed URL, missing driver
        return "usage"
    if isinstance(exc, (sa.TimeoutError, sa.DisconnectionError, ConnectionError, TimeoutError)):
        return "transient"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_ENVIRONMENT:
        return "environment"
    if not isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DatabaseError)):
        return "other"
    orig = getattr(exc, "orig", None)
    if _connection_timed_out(orig):  # a host that accepts and never answers: unreachable
        return "transient"
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return _sqlite_failure(code)
    state = getattr(orig, "sqlstate", None)
    if state:
        return _sqlstate_failure(state)
    if isinstance(exc, (sa.OperationalError, sa.InterfaceError)):
        # A failed connection carries no SQLSTATE: it is transient only while the server
        # cannot be reached at all; a server that answered and refused will refuse again.
        return "usage" if _server_answers(url) else "transient"
    return "other"


def _sqlite_failure(code: int) -> Failure:
    """Python reports SQLite's extended code (SQLITE_READONLY_DBMOVED, SQLITE_BUSY_SNAPSHOT):
    its low byte is the primary code."""
    primary = code & 0xFF
    if primary in _SQLITE_ENVIRONMENT:
        return "environment"
    return "transient" if primary in _SQLITE_TRANSIENT else "usage"


def _sqlstate_failure(state: str) -> Failure:
    if state in _SQLSTATE_ENVIRONMENT:
        return "environment"
    if state.startswith(_SQLSTATE_TRANSIENT) or state in _SQLSTATE_RACE:
        return "transient"
    return "usage" if state.startswith(_SQLSTATE_USAGE) else "other"


def _connection_timed_out(orig: BaseException | None) -> bool:
    try:
        from psycopg.errors import ConnectionTimeout
    except ImportError:
        return False
    return isinstance(orig, ConnectionTimeout)


def _server_answers(url: str | None, timeout: float = 2.0) -> bool:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url or "")
    except Exception:
        return False
    if not parsed.host:
        return False  # a local socket: no host to probe; treat the failure as transient
    default_ports = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
    port = parsed.port or default_ports.get(parsed.get_backend_name(), 0)
    try:
        with socket.create_connection((parsed.host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off over a bounded number of attempts, for transient failures only."""

    attempts: int = 5
    first_delay: float = 0.2
    max_delay: float = 5.0

    def run(self, action: Callable[[int], T], url: str | None = None,
            attempts: int | None = None) -> T:
        """``action(attempt)`` until it succeeds, a failure is not transient, or attempts run
        out; the attempt number lets an action re-read state a failed attempt may have left."""
        total = max(1, self.attempts if attempts is None else attempts)
        for attempt in range(total):
            try:
                return action(attempt)
            except Exception as exc:
                if attempt == total - 1 or classify(exc, url) != "transient":
                    raise
                time.sleep(min(self.max_delay, self.first_delay * 2 ** attempt))
        raise AssertionError("unreachable")


RETRY = RetryPolicy()


def cause(exc: BaseException, url: str | None) -> str:
    """First line of the innermost cause, credentials masked: Optuna wraps a lost connection
    in a generic 'exception during the commit'; the driver's own message says what happened.
    Masked before it is cut, so a cut never leaves part of a password."""
    exc = _database_error(exc)
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return mask_password(lines[0], url)[:300] if lines else type(exc).__name__


# Bounds on how long one database call may block a driver or the Tune loop. A URL's own
# query parameters (``?connect_timeout=30``, ``?timeout=60`` for SQLite) take precedence.
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a host that accepts TCP and never answers
STATEMENT_TIMEOUT_MS = 120_000  # PostgreSQL: a statement stuck behind a lock or a stalled server
SQLITE_BUSY_TIMEOUT_S = 30.0  # SQLite: how long a write waits for another writer's lock


def connect_args(url: Any) -> dict[str, Any]:
    """The driver's timeouts for a parsed URL, leaving any the URL sets itself."""
    query = dict(url.query)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {} if "timeout" in query else {"timeout": SQLITE_BUSY_TIMEOUT_S}
    if backend != "postgresql":
        return {}
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "options" not in query:
        args["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return args


def open_storage(url: str, *, create: bool = True,
                 policy: RetryPolicy = RETRY) -> optuna.storages.RDBStorage:
    """An RDB storage. ``create=False`` (read-only commands) never creates a database file or
    Optuna's tables. Connections are checked before use (``pool_pre_ping``), so a database
    that went away and came back is reconnected instead of failing a sweep; every call is
    bounded in time (``connect_args``), so a silent server fails instead of hanging. A
    database of another Optuna schema, or (``create``) one that refuses writes, is refused
    here as ``EnvironmentProblem``, before a command starts its work."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        raise UsageError(f"malformed storage URL {redact(url)!r}: expected a SQLAlchemy URL "
                         "such as sqlite:///creditsweep.db or postgresql+psycopg://…") from None
    if not create and parsed.drivername.startswith("sqlite"):
        path = _sqlite_path(parsed)
        if not path or not Path(path).is_file():
            raise UsageError(f"no database at {redact(url)}: nothing has been recorded there "
                             "yet (give --storage, or run a sweep first)")

    def connect(attempt: int) -> optuna.storages.RDBStorage:
        engine = {"pool_pre_ping": True, "connect_args": connect_args(parsed)}
        # The schema check is ours (_check_schema): Optuna's raises a bare RuntimeError.
        return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                          heartbeat_interval=None,
                                          skip_table_creation=not create,
                                          skip_compatibility_check=True)
    try:
        storage = policy.run(connect, url)
        if not create and not _has_tables(storage):
            raise UsageError(f"no studies in {redact(url)}: the database holds no Optuna "
                             "tables")
        _check_schema(storage, url)
        if create:
            policy.run(lambda attempt: _check_writable(storage), url)
    except (UsageError, EnvironmentProblem):
        raise
    except Exception as exc:
        failure = _storage_failure(exc, url)
        if failure is exc:
            raise  # not a storage condition: a bug, with its traceback and causes
        raise failure from None
    return storage


def _sqlite_path(parsed: Any) -> str | None:
    """The file a SQLite URL opens, also when it is a URI filename (``file:x.db`` with
    ``?uri=true``, the form that takes ``mode=ro``); None for an in-memory database."""
    from urllib.parse import unquote, urlsplit

    path = parsed.database or ""
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and path.startswith("file:"):
        if parsed.query.get("mode") == "memory":
            return None
        path = unquote(urlsplit(path).path)
    return None if path in ("", ":memory:") else path


def _storage_failure(exc: Exception, url: str) -> Exception:
    """The error a command reports for a storage that failed to open, by its class."""
    kind = classify(exc, url)
    if kind == "usage":
        return UsageError(f"cannot open storage {redact(url)}: {cause(exc, url)}")
    if kind == "transient":
        return StorageUnavailable(f"storage {redact(url)} is unreachable: {cause(exc, url)}")
    if kind == "environment":
        return EnvironmentProblem(f"cannot use storage {redact(url)}: {cause(exc, url)}")
    return exc


def _check_writable(storage: optuna.storages.RDBStorage) -> None:
    """A write rolled back: a read-only database (a read-only file, ``?mode=ro``, a hot
    standby) is refused here, before a command starts Ray, not at its first record."""
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        transaction = conn.begin()
        try:
            conn.execute(text("UPDATE version_info SET library_version = library_version"))
        finally:
            transaction.rollback()


def _check_schema(storage: optuna.storages.RDBStorage, url: str) -> None:
    """Refuse a database whose Optuna schema (its alembic revision) is not this Optuna's:
    an older one needs ``optuna storage upgrade``, an unknown one a newer Optuna."""
    current, head = storage.get_current_version(), storage.get_head_version()
    if current == head:
        return
    if current in storage.get_all_versions():
        raise EnvironmentProblem(
            f"storage {redact(url)} has an older Optuna schema (revision {current!r}; Optuna "
            f"{optuna.__version__} needs {head!r}): back it up, then run optuna storage "
            "upgrade --storage URL")
    raise EnvironmentProblem(
        f"storage {redact(url)} has Optuna schema revision {current[:40]!r}, which Optuna "
        f"{optuna.__version__} does not know (a newer Optuna wrote it): upgrade Optuna "
        "(pip install -U optuna), or use another database")


def _has_tables(storage: optuna.storages.RDBStorage) -> bool:
    from sqlalchemy import inspect

    return inspect(storage.engine).has_table("studies")


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
    value: float | None = None  # the trial's value when it is not its best val top-1


def recorded_ray_ids(study: optuna.Study) -> set[str]:
    return {t.user_attrs["ray_trial_id"] for t in study.get_trials(deepcopy=False)
            if "ray_trial_id" in t.user_attrs}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def to_frozen_trial(record: TrialRecord,
                    distributions: Mapping[str, BaseDistribution]) -> FrozenTrial:
    curve = {int(r.get("epoch_overall", r["epoch"])): float(r[OBJECTIVE])
             for r in record.history if _finite(r.get(OBJECTIVE))}
    last = record.history[-1] if record.history else {}
    attrs: dict[str, Any] = {
        "ray_trial_id": record.ray_trial_id, "status": record.status,
        "epochs_completed": len(record.history),
        "wall_time": record.wall_time if record.wall_time is not None else last.get("wall_time"),
        "history": [_history_row(r) for r in record.history],
    }
    for key in ("train_size", "val_size"):  # the examples the trial trained and validated on
        if key in last:
            attrs[key] = last[key]
    if record.node_ip:
        attrs["node_ip"] = record.node_ip
    if record.node_id:
        attrs["node_id"] = record.node_id
    attrs.update(record.extra or {})
    if "diagnostics" in last:
        attrs["diagnostics"] = last["diagnostics"]["summary"]
        attrs["diagnostics_per_layer"] = last["diagnostics"]["layers"]
    if "feedback_plan" in last:  # B's plan: filter and plot a study by it
        plan = last["feedback_plan"]
        attrs["feedback_plan"] = {**plan["summary"], "initial": plan.get("initial"),
                                  "limit": plan.get("limit")}
        attrs["feedback_plan_per_layer"] = plan["layers"]
        attrs["relaxations_min"] = plan["summary"].get("relaxations_min")
        attrs["stability_ratio_max"] = plan["summary"].get("stability_ratio_max")
    if "curvature" in last:  # beyond accuracy, at the end of the run
        attrs["curvature"] = last["curvature"]
        for key in ("top_eigenvalue", "trace", "generalization_gap"):
            attrs[key] = last["curvature"].get(key)
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


def _history_row(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch as the study keeps it: the scalars, and B's plan in three numbers."""
    row = {k: v for k, v in record.items()
           if k not in ("diagnostics", "feedback_plan", "curvature")}
    curvature = record.get("curvature") or {}
    row.update({k: curvature[k] for k in ("top_eigenvalue", "generalization_gap")
                if k in curvature})
    plan = (record.get("feedback_plan") or {}).get("summary")
    if plan:
        row.update({f"plan_{k}": plan.get(k) for k in ("verdict", "relaxations_min",
                                                      "stability_ratio_max")})
    return row


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs, default=str))


def record_trials(study: optuna.Study, records: Iterable[TrialRecord],
                  distributions: Mapping[str, BaseDistribution], *, url: str | None = None,
                  known: set[str] | None = None, attempts: int | None = None) -> int:
    """Add the records not yet in the study; returns how many were added.

    ``known`` caches the recorded ids across calls (one driver owns its experiment's ids), so
    a long sweep does not re-read every trial per write; after a failed write it is re-read,
    since the write may have landed unacknowledged. Transient failures are retried under
    ``RETRY``, so a database that is briefly away loses nothing.
    """
    if known is None:
        known = set()
    added = 0
    for record in records:
        def write(attempt: int, record: TrialRecord = record) -> int:
            if attempt or not known:
                known.update(recorded_ray_ids(study))
            if record.ray_trial_id in known:
                return 0
            study.add_trial(to_frozen_trial(record, distributions))
            known.add(record.ray_trial_id)
            return 1

        added += RETRY.run(write, url, attempts)
    return added


# --- queries ---------------------------------------------------------------------------------

def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = study_names(storage)
        shown = ", ".join(repr(n) for n in names[:20]) + (" …" if len(names) > 20 else "")
        hint = f"; studies here: {shown}" if names else "; the database has none"
        raise UsageError(f"no study named {name!r}{hint}") from None
    except ValueError:  # optuna: several studies match, or the name is ambiguous
        raise UsageError(f"study {name!r} cannot be loaded by name") from None


def single_direction(study: optuna.Study) -> optuna.study.StudyDirection:
    """The direction of a single-objective study; a multi-objective one has no one best."""
    if len(study.directions) != 1:
        raise UsageError(f"study {study.study_name!r} has {len(study.directions)} objectives: "
                         "creditsweep reads single-objective studies only")
    return study.directions[0]


def ranked_complete(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first, in the study's own direction (maximize or minimize)."""
    maximize = single_direction(study) == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: -t.value if maximize else t.value)


def study_summaries(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = optuna.load_study(study_name=frozen.study_name,
                                   storage=storage).get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        directions = [d.name.lower() for d in frozen.directions]
        # ``t.value`` raises on a multi-objective study (another tool's, in a shared database)
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE
                  and len(directions) == 1 and t.values and math.isfinite(t.values[0])]
        best = None
        if values:
            best = max(values) if directions[0] == "maximize" else min(values)
        attrs = frozen.user_attrs
        rows.append({"study": frozen.study_name, "kind": attrs.get("kind", "-"),
                     "rule": attrs.get("rule"), "arch": attrs.get("arch"),
                     "dataset": attrs.get("dataset"), "direction": ",".join(directions),
                     "complete": counts[TrialState.COMPLETE], "failed": counts[TrialState.FAIL],
                     "pruned": counts[TrialState.PRUNED],
                     "running": counts[TrialState.RUNNING], "best": best})
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial:
    ranked = ranked_complete(study)
    if not ranked:
        raise UsageError(f"study {study.study_name!r} has no completed trial yet")
    return ranked[0]


def _shown_value(trial: FrozenTrial) -> float | str | None:
    """The objective, or a multi-objective study's values joined (``t.value`` raises there)."""
    values = trial.values
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(f"{v:.6g}" for v in values)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, columns in a stable order: number, state, value, the parameters
    (sorted), then what creditsweep records."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    archs = study.user_attrs.get("archs") or []  # a transfer-aware sweep: one column each
    rows = []
    for t in trials:
        diag = t.user_attrs.get("diagnostics") or {}
        by_arch = t.user_attrs.get("val_top1_by_arch") or {}
        across = {f"top1_{a}": by_arch.get(a) for a in archs}
        if archs:
            across["diverged_archs"] = ",".join(t.user_attrs.get("diverged_archs") or {}) or None
        rows.append({"number": t.number, "state": t.state.name, "value": _shown_value(t),
                     **{f"{PARAMS}{k}": t.params.get(k) for k in names}, **across,
                     "searcher": t.user_attrs.get("searcher"),
                     "epochs": t.user_attrs.get("epochs_completed"),
                     "train_size": t.user_attrs.get("train_size"),
                     "weight_angle_mean": diag.get("weight_angle_mean"),
                     "norm_ratio_mean": diag.get("norm_ratio_mean"),
                     "relaxations_min": t.user_attrs.get("relaxations_min"),
                     "stability_ratio_max": t.user_attrs.get("stability_ratio_max"),
                     "top_eigenvalue": t.user_attrs.get("top_eigenvalue"),
                     "generalization_gap": t.user_attrs.get("generalization_gap"),
                     "wall_time": t.user_attrs.get("wall_time"),
                     **{k: t.user_attrs.get(k) for k in ("node_ip", "device", "gpus",
                                                         "attempts")},
                     "fail_reason": t.user_attrs.get("fail_reason")})
    return rows
