"""One driver per sweep or planned study: a lease row in the study database.

Two drivers on one sweep each run "the missing trials" and together overshoot the sweep's
count. Before a driver runs trials it takes the lease of what it runs (a sweep, or a transfer
or robustness study) in the same database as the study, so the guard holds across machines:

- taking it is one atomic statement: an INSERT of the key (the primary key refuses a second),
  or, when the row exists but is free or its holder is dead, a conditional UPDATE that only
  one contender can win (it matches the old holder's fence number);
- every taking raises the row's ``fence`` number by one; the row outlives its holder (a
  release only frees it), so the number only grows. The recorder checks it right before each
  write (``Lease.check``): a driver that was taken over records nothing more;
- the holder renews a heartbeat every ``HEARTBEAT_S``; a holder is dead when its heartbeat is
  older than ``STALE_S``, or at once when it ran on this host and its process is gone (checked
  by pid and process start time, so a reused pid is not taken for the holder);
- heartbeats are written and judged on the database's clock, never a driver's own: a host
  whose clock runs ahead would otherwise block the others long after it died, and one whose
  clock lags would be taken over while alive;
- a second live driver gets ``LeaseHeld`` (exit 2) naming the holder's host and pid;
- a holder whose lease was taken over (it stalled past ``STALE_S``) is told through
  ``on_lost`` and stops, so that two drivers never run one sweep for long;
- the table has a schema version (``SCHEMA``, kept in ``creditsweep_schema`` by
  ``search.storage.versions``): an older table is migrated when a lease is first taken, and a
  database whose table is newer than this code is refused (exit 4), unchanged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from catalogue.errors import LeaseLost, UsageError
from search.storage.versions import Schema, ensure

TABLE = "creditsweep_leases"
HEARTBEAT_S = 10.0
STALE_S = 60.0
FREE = ""  # the token of a released lease: its row stays, so that its fence number only grows

log = logging.getLogger(__name__)
_metadata = sa.MetaData()
_leases = sa.Table(
    TABLE, _metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_start", sa.String(32), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # the database's clock, epoch seconds
    sa.Column("fence", sa.BigInteger, nullable=False, server_default=sa.text("0")),
)


class LeaseHeld(UsageError):
    """Another live driver holds the lease: one line, exit 2."""


def db_now(engine: sa.engine.Engine) -> sa.ColumnElement[float]:
    """The database's clock in seconds since the epoch, as SQL: one clock for every driver.

    A dialect without a known clock falls back to this host's clock (with a warning)."""
    name = engine.dialect.name
    if name == "sqlite":  # julianday is fractional: millisecond precision
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Float)
    if name == "postgresql":  # clock_timestamp, not now(): now() stops at the transaction's start
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
    if name in ("mysql", "mariadb"):
        return sa.literal_column("UNIX_TIMESTAMP(SYSDATE(6))", sa.Float)
    log.warning("leases on %s use each driver's own clock: keep the hosts' clocks in step", name)
    return sa.literal(time.time(), sa.Float)


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is not there)."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return ""
    return text[text.rindex(")") + 2:].split()[19]


def _alive_here(pid: int, pid_start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return not pid_start or _process_start(pid) in ("", pid_start)


@dataclass(frozen=True)
class Holder:
    """The lease row as read, with the database's clock at that moment (``now``)."""

    token: str
    host: str
    pid: int
    pid_start: str
    heartbeat: float
    fence: int
    now: float

    @property
    def age(self) -> float:
        return self.now - self.heartbeat

    @property
    def free(self) -> bool:
        return self.token == FREE

    def gone(self) -> bool:
        """Its process, on this host, has ended: no need to wait for the heartbeat to age."""
        return self.host == socket.gethostname() and not _alive_here(self.pid, self.pid_start)


class Lease:
    """``with Lease(engine, key, what):`` holds ``key`` for the block, with a heartbeat."""

    def __init__(self, engine: sa.engine.Engine, key: str, what: str,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.engine, self.key, self.what = engine, key, what
        self.on_lost = on_lost
        self.token = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.fence: int | None = None  # the row's fence number once taken
        self.lost: str | None = None
        self._released = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _holder_values(self) -> dict[str, Any]:
        """The columns that name this driver as the holder, heartbeat now (the database's)."""
        return {"token": self.token, "host": self.host[:255], "pid": self.pid,
                "pid_start": _process_start(self.pid), "heartbeat": db_now(self.engine)}

    def _ours(self) -> Any:
        """The SQL condition: the row is still ours (our token and our fence number)."""
        return sa.and_(_leases.c.key == self.key, _leases.c.token == self.token,
                       _leases.c.fence == self.fence)

    def acquire(self) -> None:
        _create_table(self.engine)
        if not self._insert():
            self._take_over()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.key}",
                                        daemon=True)
        self._thread.start()

    def _insert(self) -> bool:
        """Take a key no row holds yet (fence 1); False when a row exists."""
        try:
            with self.engine.begin() as conn:
                conn.execute(_leases.insert().values(key=self.key, fence=1,
                                                     **self._holder_values()))
        except sa.exc.IntegrityError:
            return False
        self.fence = 1
        return True

    def _read(self) -> Holder | None:
        """The row and the database's clock, read in one statement."""
        now = db_now(self.engine).label("db_now")
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_leases, now).where(_leases.c.key == self.key)).first()
        if row is None:
            return None
        return Holder(row.token, row.host, row.pid, row.pid_start, row.heartbeat,
                      int(row.fence), float(row.db_now))

    def _take_over(self) -> None:
        holder = self._read()
        if holder is None:  # freed by deletion in between (an older driver): insert once more
            if self._insert():
                return
            raise LeaseHeld(self._held_by("was just taken by"))
        condition = self._claimable(holder)
        if condition is None:
            raise LeaseHeld(f"{self.what} is being run by another driver (host {holder.host}, "
                            f"pid {holder.pid}, heartbeat {max(0.0, holder.age):.0f} s ago); "
                            f"wait for it, or stop it first")
        with self.engine.begin() as conn:
            won = conn.execute(
                _leases.update()
                .where(_leases.c.key == self.key, _leases.c.token == holder.token,
                       _leases.c.fence == holder.fence, condition)
                .values(fence=holder.fence + 1, **self._holder_values())).rowcount
        if won != 1:  # another driver took it, or the holder renewed its heartbeat, in between
            raise LeaseHeld(self._held_by("was just taken over by"))
        self.fence = holder.fence + 1
        if not holder.free:
            log.info("took over %s from dead driver %s pid %d", self.key, holder.host,
                     holder.pid)

    def _claimable(self, holder: Holder) -> Any:
        """The SQL condition under which the row may be taken from ``holder``, or None.

        Staleness is checked again in the UPDATE, on the database's clock: a heartbeat that
        lands between the read and the update keeps the lease with its holder."""
        if holder.free:
            return sa.true()
        if holder.age > STALE_S:
            return _leases.c.heartbeat < db_now(self.engine) - STALE_S
        if holder.gone():
            return sa.true()  # a process that has ended renews nothing
        return None

    def _held_by(self, verb: str) -> str:
        """One line naming the driver that won a race for the lease (read back now)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_leases).where(_leases.c.key == self.key)).first()
        who = f" (host {row.host}, pid {row.pid})" if row is not None else ""
        return f"{self.what} {verb} another driver{who}; wait for it"

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self.engine.begin() as conn:
                    kept = conn.execute(_leases.update().where(self._ours())
                                        .values(heartbeat=db_now(self.engine))).rowcount
            except sa.exc.SQLAlchemyError as exc:  # the database is away: try again later
                log.warning("lease heartbeat for %s failed: %s", self.key, self._first_line(exc))
                continue
            if kept != 1:
                self._lose()
                return

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the row still carries this driver's token and fence.

        The recorder calls it right before each write, so that a driver taken over while it
        stalled records nothing more, even before its heartbeat finds out. A database error
        propagates (the write would have failed too)."""
        if self.lost is None and not self._released:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(_leases.c.token, _leases.c.fence)
                                   .where(_leases.c.key == self.key)).first()
            if row is None or row.token != self.token or row.fence != self.fence:
                self._lose()
        if self.lost is not None:
            raise LeaseLost(self.lost)
        if self._released:
            raise LeaseLost(f"{self.what}: this driver has released its lease")

    def _lose(self) -> None:
        """Note the take-over once, and tell ``on_lost`` (from whichever thread found it)."""
        with self._lock:
            if self.lost is not None:
                return
            self.lost = (f"{self.what}: another driver took over this driver's lease "
                         f"(no heartbeat for over {STALE_S:g} s); this driver stops and "
                         f"records nothing more")
        if self.on_lost is not None:
            self.on_lost(self.lost)

    def release(self) -> None:
        """Free the row (it stays, with its fence number) unless another driver holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._released = True
        if self.fence is None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(_leases.update().where(self._ours())
                             .values(token=FREE, heartbeat=db_now(self.engine)))
        except sa.exc.SQLAlchemyError as exc:  # it goes stale on its own
            log.warning("could not release lease %s: %s", self.key, self._first_line(exc))

    def _first_line(self, exc: BaseException) -> str:
        """An error's first line with the URL's password masked (by structure)."""
        from search.urls import mask_password

        lines = str(exc).strip().splitlines()
        url = self.engine.url.render_as_string(hide_password=False)
        return mask_password(lines[0] if lines else type(exc).__name__, url)[:300]


# The lease table's schema versions. Version 1: the table as first made; version 2 added the
# ``fence`` column. A change to the table is a new migration appended here (and the table
# above changed to match): ``versions.ensure`` runs it on databases of an older version.
def _add_fence(conn: sa.Connection) -> None:
    """1 -> 2: fencing; the rows of a table made before it start at fence 0."""
    conn.execute(sa.text(f"ALTER TABLE {TABLE} ADD COLUMN fence BIGINT NOT NULL DEFAULT 0"))


def _unversioned(conn: sa.Connection) -> int | None:
    """The version of a lease table made before versions were recorded, by its columns."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(TABLE):
        return None
    return 2 if any(c["name"] == "fence" for c in inspector.get_columns(TABLE)) else 1


SCHEMA = Schema("leases", _metadata, migrations=(_add_fence,), unversioned=_unversioned)


def _create_table(engine: sa.engine.Engine) -> None:
    """The lease table at this code's schema version: created, or migrated from an older
    one; a database holding a newer one is refused (``EnvironmentProblem``, exit 4)."""
    ensure(engine, SCHEMA)


def fence_of(leases: Sequence[Lease]) -> Callable[[], None] | None:
    """The recorder's fence over every lease a run holds (a transfer holds its study's and
    its baseline study's): None when it holds none."""
    held = list(leases)
    if not held:
        return None

    def check() -> None:
        for lease in held:
            lease.check()
    return check


def sweep_key(study: str, sweep: str) -> str:
    return f"sweep:{study}:{sweep}"


def study_key(study: str) -> str:
    return f"study:{study}"


@contextmanager
def held_leases(engine: sa.engine.Engine, wanted: Iterable[tuple[str, str]]
                ) -> Iterator[list[Lease]]:
    """The leases of one command, ``(key, what)`` each (a key named twice is taken once),
    held for the block: a second command wanting any of them is refused, and what the
    refused one had already taken is released on its way out."""
    with ExitStack() as stack:
        yield [stack.enter_context(Lease(engine, key, what))
               for key, what in dict(wanted).items()]
