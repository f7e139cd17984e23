"""What produced a study: package versions and, from a git checkout, the commit.

Read from the installed distributions' metadata, so nothing heavy is imported (``best`` and
``--version`` stay instant). Every sweep, transfer and robustness run records it.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("creditsweep", "torch", "ray", "optuna", "hyperopt")


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def commit() -> str | None:
    """The commit of the checkout this code runs from (None when installed from a wheel or
    git is absent); ``+dirty`` when the tree has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}" if head else None


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, str | None]:
    """``{package: version, ..., "commit": …}``, read once per process."""
    return {**{p: version(p) for p in PACKAGES}, "commit": commit()}


def describe(record: dict[str, str | None] | None) -> str:
    """One line for people: ``creditsweep 0.1.0, torch 2.14.1, … (commit abc1234)``."""
    if not record:
        return "versions not recorded"
    text = ", ".join(f"{p} {record[p]}" for p in PACKAGES if record.get(p))
    head = record.get("commit") or ""
    shown = head[:12] + ("+dirty" if head.endswith("+dirty") else "")
    return text + (f" (commit {shown})" if head else "")
