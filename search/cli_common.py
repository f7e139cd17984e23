"""Shared CLI plumbing: the one-line error contract and NAME=VALUE parsing."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2, nothing written."""


class StorageUnavailable(RuntimeError):
    """The study could not be written even after retrying: printed as one line, exit code 1."""


def parse_assignments(items: list[str], flag: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{flag} expects NAME=VALUE, got {item!r}")
        try:
            values[name.strip()] = float(raw)
        except ValueError:
            raise UsageError(f"{flag} {item!r}: {raw!r} is not a number") from None
    return values
