"""Processes a test starts: the CLI as a subprocess, free ports, and the processes of a
test's own Ray, found through /proc so that a test kills only its own."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path


def cli(*args: str) -> list[str]:
    """The command line that runs ``creditsweep ARGS`` with this interpreter."""
    return [sys.executable, "-m", "search.cli", *args]


def free_port() -> int:
    """A free TCP port on loopback, from the kernel's ephemeral range (above Ray's worker
    ports, 10002-19999)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[str, int, float]:
    """(command name, parent pid, CPU seconds) of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> list[tuple[int, str, float]]:
    """(pid, name, CPU seconds) of every living descendant of ``root``."""
    table = {}
    for pid in _pids():
        try:
            table[pid] = _stat(pid)
        except (OSError, ValueError):
            continue
    found, frontier = [], {root}
    while frontier:
        children = {pid for pid, (_, ppid, _) in table.items() if ppid in frontier}
        found += [(pid, table[pid][0], table[pid][2]) for pid in children]
        frontier = children
    return found


def _uses(pid: int, folder: str) -> bool:
    """Whether the process has RAY_TMPDIR=folder in its environment or a file open under it
    (Ray's agents drop the environment but keep their session logs open)."""
    proc = Path(f"/proc/{pid}")
    if f"RAY_TMPDIR={folder}".encode() in (proc / "environ").read_bytes().split(b"\0"):
        return True
    for fd in (proc / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(folder + "/"):
                return True
        except OSError:
            continue
    return False


def kill_ray_of(folder: str) -> int:
    """SIGKILL every process of the Ray whose RAY_TMPDIR is ``folder``: a killed driver's
    leftovers, or a test cluster. Returns how many were killed."""
    killed = 0
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            if _uses(pid, folder):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        except OSError:
            continue
    return killed
