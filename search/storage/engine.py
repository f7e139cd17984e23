"""Opening an RDB storage: the engine's timeouts, and the checks made before a command works.

Apart from the studies and trials it holds because every command opens storage the same way,
and a database it cannot use (unreachable, of another Optuna schema, read-only for a writer)
must be refused here, in one line, before a command starts Ray, never at its first write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from catalogue.errors import EnvironmentProblem, StorageUnavailable, UsageError
from search.storage.errors import RETRY, RetryPolicy, cause, classify
from search.urls import redact

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
