"""What tests read back from a study database without changing it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna


def sqlite_digest(url: str) -> str | None:
    """SHA-256 of a SQLite database file (None while it does not exist): equal digests, the
    database is unchanged. ``PostgresServer.dump`` is the PostgreSQL counterpart."""
    path = Path(url.removeprefix("sqlite:///"))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def study_or_none(url: str, name: str) -> optuna.Study | None:
    """The study, or None while a sweep that will create it has not yet done so."""
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None
