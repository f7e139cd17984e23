"""A run's full state at the end of an epoch, so that a killed run continues where it was.

What ``train`` needs to go on exactly as if it had never stopped: W, B and BatchNorm's running
statistics, the optimizer (momentum buffers and each group's learning-rate scale, which B's
plan may have set), the step count (the schedule is indexed by it), every random generator
(the noise rules and update noise draw from the global ones), the history so far, and the
feedback planner's bookkeeping. The data order needs nothing: each epoch's batches come from a
generator seeded by the epoch.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
so that a file planted in a checkpoint folder cannot run code when a trial restores it.

A checkpoint that cannot be read (truncated, garbage, a planted pickle, a state without a
run's keys) is never fatal: a folder keeps the state before the last one, which ``read``
falls back to, and a run with nothing readable starts from scratch. Either way it says so on
stderr: a restart costs the epochs the checkpoint held, and that should not pass unnoticed.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

FILE = "state.pt"
PREVIOUS = "state.previous.pt"  # the state before the last, kept by ``write``
TRAINING_KEYS = ("model", "optimizer", "step", "history", "rng")  # what ``train`` restores


class CheckpointUnreadable(ValueError):
    """A checkpoint that cannot be restored; ``problem`` says why, without the path."""

    def __init__(self, file: str | Path, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file, self.problem = str(file), problem


class Checkpointer(Protocol):
    """Where a run's state goes every ``every`` epochs, and where a restarted run finds it."""

    every: int

    def restore(self) -> dict[str, Any] | None: ...
    def save(self, state: dict[str, Any]) -> None: ...


def due(every: int, epoch: int, epochs: int) -> bool:
    """Save after ``epoch`` (1-based)? Never after the last: a finished run needs none."""
    return every > 0 and epoch < epochs and epoch % every == 0


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write(state: dict[str, Any], folder: str | Path) -> Path:
    """Write ``state`` into ``folder`` (created), keeping the one before as ``PREVIOUS``;
    returns the file."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    target = path / FILE
    partial = path / f".{FILE}.partial"
    torch.save(state, partial)
    if target.is_file():  # a kill between the two renames leaves PREVIOUS, which read takes
        os.replace(target, path / PREVIOUS)
    partial.replace(target)  # a kill mid-write leaves the previous checkpoint whole
    return target


def say(line: str) -> None:
    """Where a discarded checkpoint is reported: the worker's stderr."""
    print(line, file=sys.stderr, flush=True)


def read(folder: str | Path, notice: Callable[[str], None] = say,
         check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any] | None:
    """The newest usable state in ``folder``, or None when it holds none.

    A state is usable when it loads and ``check`` (why not, or None) passes it. An unusable
    newest state falls back to the one before it (``notice`` says so); when none is usable,
    ``CheckpointUnreadable`` names the newest and why."""
    path = Path(folder)
    unreadable: list[CheckpointUnreadable] = []
    for name in (FILE, PREVIOUS):
        if not (path / name).is_file():
            continue
        try:
            state = load(path / name, check)
        except CheckpointUnreadable as exc:
            unreadable.append(exc)
            continue
        if unreadable:
            notice(f"checkpoint {unreadable[0]}; going on from the previous one, {path / name}")
        return state
    if unreadable:
        raise unreadable[0]
    return None


def load(file: str | Path,
         check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """One checkpoint file's state; ``CheckpointUnreadable`` when it does not load as a dict
    or ``check`` refuses it."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or a pickle that asks for code
        text = str(exc).strip().splitlines()
        raise CheckpointUnreadable(file, f"{type(exc).__name__}: "
                                         f"{text[0][:200] if text else 'unreadable'}") from exc
    problem = (f"holds a {type(state).__name__}, not a state" if not isinstance(state, dict)
               else check(state) if check is not None else None)
    if problem is not None:
        raise CheckpointUnreadable(file, problem)
    return state


def state_problem(state: dict[str, Any]) -> str | None:
    """Why ``state`` is not one ``train`` can go on from (None when it is): its keys, and
    what each holds."""
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        return f"lacks {', '.join(missing)} (holds {', '.join(sorted(state)) or 'nothing'})"
    kinds = {"model": dict, "optimizer": dict, "step": int, "history": list, "rng": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(state[k], kind)]
    if wrong:
        return f"holds the wrong kind of {', '.join(wrong)}"
    return None


class FolderCheckpointer:
    """Checkpoints in a local folder: one file, replaced at each save (the one before it
    kept, to fall back to)."""

    def __init__(self, folder: str | Path, every: int = 1) -> None:
        self.folder, self.every = Path(folder), every

    def restore(self) -> dict[str, Any] | None:
        """The folder's state; from scratch (and said on stderr) when none can be read."""
        try:
            return read(self.folder, check=state_problem)
        except CheckpointUnreadable as exc:
            say(f"checkpoint {exc}; starting from scratch")
            return None

    def save(self, state: dict[str, Any]) -> None:
        write(state, self.folder)
