"""One driver per sweep or planned study: a lease row in the study database.

Two drivers on one sweep each run "the missing trials" and together overshoot the sweep's
count. Before a driver runs trials it takes the lease of what it runs (a sweep, or a transfer
or robustness study) in the same database as the study, so the guard holds across machines:

- taking it is one atomic statement: an INSERT of the key (the primary key refuses a second),
  or, when the row exists but its holder is dead, a conditional UPDATE that only one contender
  can win (it matches the old holder's token);
- the holder renews a heartbeat every ``HEARTBEAT_S``; a holder is dead when its heartbeat is
  older than ``STALE_S``, or at once when it ran on this host and its process is gone (checked
  by pid and process start time, so a reused pid is not taken for the holder);
- a second live driver gets ``LeaseHeld`` (exit 2) naming the holder's host and pid;
- a holder whose lease was taken over (it stalled past ``STALE_S``) is told through
  ``on_lost`` and stops, so that two drivers never run one sweep for long.
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
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from catalogue.errors import UsageError

TABLE = "creditsweep_leases"
HEARTBEAT_S = 10.0
STALE_S = 60.0

log = logging.getLogger(__name__)
_metadata = sa.MetaData()
_leases = sa.Table(
    TABLE, _metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_start", sa.String(32), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
)


class LeaseHeld(UsageError):
    """Another live driver holds the lease: one line, exit 2."""


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
    token: str
    host: str
    pid: int
    pid_start: str
    heartbeat: float

    def dead(self, now: float) -> bool:
        if now - self.heartbeat > STALE_S:
            return True
        return self.host == socket.gethostname() and not _alive_here(self.pid, self.pid_start)


class Lease:
    """``with Lease(engine, key, what):`` holds ``key`` for the block, with a heartbeat."""

    def __init__(self, engine: sa.engine.Engine, key: str, what: str,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.engine, self.key, self.what = engine, key, what
        self.on_lost = on_lost
        self.token = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _row(self, now: float) -> dict[str, Any]:
        return {"key": self.key, "token": self.token, "host": self.host[:255], "pid": self.pid,
                "pid_start": _process_start(self.pid), "heartbeat": now}

    def acquire(self) -> None:
        _create_table(self.engine)
        now = time.time()
        try:
            with self.engine.begin() as conn:
                conn.execute(_leases.insert().values(**self._row(now)))
        except sa.exc.IntegrityError:
            self._take_over(now)
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.key}",
                                        daemon=True)
        self._thread.start()

    def _take_over(self, now: float) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_leases).where(_leases.c.key == self.key)).first()
        if row is None:  # released between our insert and our read: try once more
            try:
                with self.engine.begin() as conn:
                    conn.execute(_leases.insert().values(**self._row(now)))
            except sa.exc.IntegrityError:
                raise LeaseHeld(self._held_by("was just taken by")) from None
            return
        holder = Holder(row.token, row.host, row.pid, row.pid_start, row.heartbeat)
        if not holder.dead(now):
            raise LeaseHeld(f"{self.what} is being run by another driver (host {holder.host}, "
                            f"pid {holder.pid}, heartbeat {now - holder.heartbeat:.0f} s ago); "
                            f"wait for it, or stop it first")
        with self.engine.begin() as conn:
            won = conn.execute(_leases.update()
                               .where(_leases.c.key == self.key, _leases.c.token == holder.token)
                               .values(**self._row(now))).rowcount
        if won != 1:  # another driver took it over in between
            raise LeaseHeld(self._held_by("was just taken over by"))
        log.info("took over %s from dead driver %s pid %d", self.key, holder.host, holder.pid)

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
                    kept = conn.execute(_leases.update()
                                        .where(_leases.c.key == self.key,
                                               _leases.c.token == self.token)
                                        .values(heartbeat=time.time())).rowcount
            except sa.exc.SQLAlchemyError as exc:  # the database is away: try again later
                log.warning("lease heartbeat for %s failed: %s", self.key, self._first_line(exc))
                continue
            if kept != 1:
                self.lost = (f"{self.what}: another driver took over this driver's lease "
                             f"(no heartbeat for over {STALE_S:g} s); this driver stops")
                if self.on_lost is not None:
                    self.on_lost(self.lost)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self.engine.begin() as conn:
                conn.execute(_leases.delete().where(_leases.c.key == self.key,
                                                    _leases.c.token == self.token))
        except sa.exc.SQLAlchemyError as exc:  # it goes stale on its own
            log.warning("could not release lease %s: %s", self.key, self._first_line(exc))

    def _first_line(self, exc: BaseException) -> str:
        """An error's first line with the URL's password masked (by structure)."""
        from search.urls import mask_password

        lines = str(exc).strip().splitlines()
        url = self.engine.url.render_as_string(hide_password=False)
        return mask_password(lines[0][:300] if lines else type(exc).__name__, url)


def _create_table(engine: sa.engine.Engine) -> None:
    """Create the lease table once; two drivers creating it at once is not an error."""
    try:
        _metadata.create_all(engine, checkfirst=True)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        if not sa.inspect(engine).has_table(TABLE):
            raise


def sweep_key(study: str, sweep: str) -> str:
    return f"sweep:{study}:{sweep}"


def study_key(study: str) -> str:
    return f"study:{study}"


@contextmanager
def study_leases(engine: sa.engine.Engine, studies: Iterable[str | None],
                 what: str) -> Iterator[list[Lease]]:
    """The leases of a transfer or robustness study (and of the baseline study it shares),
    held for the block: run twice at once, the second command is refused."""
    with ExitStack() as stack:
        yield [stack.enter_context(Lease(engine, study_key(name), f"{what} study {name}"))
               for name in dict.fromkeys(studies) if name]
