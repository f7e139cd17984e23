"""What a database failure means, and the one retry policy over it.

Kept apart from opening and writing so that every caller (the storage, the recorder, the CLI's
last-resort handler) judges a failure the same way: by its type and structured codes, never
its text. A store that cannot be reached is retried (``RETRY``) and then reported as
``StorageUnavailable``; one that answers and refuses (credentials, a missing database, a file
that is not a database) is the user's to fix, reported at once as a ``UsageError``.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from typing import Callable, Literal, TypeVar

from search.urls import mask_password

T = TypeVar("T")

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
