"""One driver for every kind of study.

A sweep, a transfer study, a robustness study and a resumed sweep all go through the same
sequence, once per command:

1. the kind validates and resolves its spec (no database, no Ray);
2. the storage is opened, and the kind reads what it needs from it (a transfer's source);
3. the kind names the studies it will write, with their identity, and each is checked
   against what is stored (a study of another configuration is refused here);
4. Ray is connected: after every check that needs no Ray, so bad input answers at once;
5. one lease per study (per sweep, for a sweep) is taken, for the whole command;
6. the studies are created or loaded, and the kind runs;
7. the kind's summary is returned.

A kind that runs another kind inside it (``transfer --retune`` runs a sweep per target)
declares the nested kind's studies as its own, so they are checked, leased and created with
the rest, and runs it in the same session: nothing is opened, connected or leased twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import optuna
from optuna.distributions import BaseDistribution

from search import storage as st
from search.execution import Execution
from search.identity import check_study_fits, create_or_load_study
from search.lease import Lease, fence_of, held_leases

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StudyPlan:
    """A study a command writes: its name and attributes, the attributes a continuation
    must match (``identity``), its search space (a sweep's), and its lease."""

    name: str
    attrs: dict[str, Any]
    identity: tuple[str, ...]
    lease_key: str
    lease_what: str
    distributions: Mapping[str, BaseDistribution] | None = None
    hint: str = "choose another study name"  # what to do when it holds another configuration


class StudyKind(Protocol):
    """What the driver needs from a kind of study; see the module's sequence."""

    execution: Execution  # how its trials run (read after ``prepare``)

    def prepare(self, session: "Session") -> None:
        """Read what the kind needs from the storage (its source study, what a study
        already holds); no Ray, nothing written."""

    def studies(self) -> list[StudyPlan]:
        """Every study the command writes, nested kinds' included."""

    def run(self, session: "Session") -> None:
        """Run, under the session's leases, with its studies created."""

    def summary(self, session: "Session") -> Any:
        """What the command returns."""


@dataclass
class Session:
    """What one command opens once: the storage, Ray, the leases, its studies."""

    url: str
    storage: optuna.storages.BaseStorage
    progress: Progress
    execution: Execution = field(default_factory=Execution)  # the driven kind's
    started: float = field(default_factory=time.perf_counter)
    leases: list[Lease] = field(default_factory=list)
    studies: dict[str, optuna.Study] = field(default_factory=dict)

    def study(self, name: str) -> optuna.Study:
        """A study this command created or loaded (named in some kind's ``studies``)."""
        return self.studies[name]

    def fence(self) -> Callable[[], None] | None:
        """Checked before every write: raises once another driver took any lease over."""
        return fence_of(self.leases)

    def watch(self, stop: Callable[[], None]) -> None:
        """Losing any lease asks the running experiment to stop."""
        for lease in self.leases:
            lease.on_lost = stop

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def open_session(storage: str | None, progress: Progress) -> Session:
    url = st.storage_url(storage)
    return Session(url, st.open_storage(url), progress)


def drive(kind: StudyKind, session: Session) -> Any:
    """Steps 2 to 7 of the module's sequence for an opened session (step 1 is the kind's
    constructor, which validates)."""
    kind.prepare(session)
    session.execution = kind.execution
    plans = _unique(kind.studies())
    for plan in plans:
        check_study_fits(session.storage, plan.name, plan.attrs, plan.identity,
                         plan.distributions, plan.hint)
    if not plans:  # nothing to write (a resumed sweep that has all its trials): no Ray
        return kind.summary(session)
    session.execution.connect()
    with held_leases(session.storage.engine,
                     [(plan.lease_key, plan.lease_what) for plan in plans]) as leases:
        session.leases.extend(leases)
        for plan in plans:
            session.studies[plan.name] = create_or_load_study(
                session.storage, plan.name, plan.attrs, plan.identity, plan.distributions)
        kind.run(session)
    return kind.summary(session)


def run_kind(kind: StudyKind, storage: str | None, progress: Progress) -> Any:
    """One command: open the session, drive the kind."""
    return drive(kind, open_session(storage, progress))


def _unique(plans: Sequence[StudyPlan]) -> list[StudyPlan]:
    """One plan per study name (a baseline study two kinds share is written once)."""
    return list({plan.name: plan for plan in plans}.values())
