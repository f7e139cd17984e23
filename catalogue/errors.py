"""The errors every layer raises for input it cannot use, and for a store it cannot reach.

They live in this torch-free base layer so that the trainer, the spaces and the search service
raise them without importing each other or the command line. The command line maps each to
its own exit code: a usage error exits 2, an unreachable store 3, an environment that refuses
(a read-only or full disk, a port in use) 4; anything else is a bug.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Input the user can fix: printed as one line, exit code 2, nothing written."""


class UnknownName(UsageError):
    """A name that no registry holds; the message lists the valid ones."""


class StorageUnavailable(RuntimeError):
    """The study database could not be reached or written, even after retrying: exit code 3."""


class EnvironmentProblem(RuntimeError):
    """The machine, not the input or the code, stops the command: a read-only database or
    file system, a full disk, a database schema of another Optuna version, a port in use.
    One line saying which, exit code 4; retrying as it is will fail again."""


class LeaseLost(RuntimeError):
    """Another driver took over this driver's sweep after it stalled: exit code 1."""


class Interrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped a study cleanly: exit 128 + the signal's number (130, 143),
    with how far it got and how to continue, never a result that looks final."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
