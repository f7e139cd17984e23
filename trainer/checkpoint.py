"""A run's full state at the end of an epoch, so that a killed run continues where it was.

What ``train`` needs to go on exactly as if it had never stopped: W, B and BatchNorm's running
statistics, the optimizer (momentum buffers and each group's learning-rate scale, which B's
plan may have set), the step count (the schedule is indexed by it), every random generator
(the noise rules and update noise draw from the global ones), the history so far, and the
feedback planner's bookkeeping. The data order needs nothing: each epoch's batches come from a
generator seeded by the epoch.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
so that a file planted in a checkpoint folder cannot run code when a trial restores it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

FILE = "state.pt"


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
    """Write ``state`` into ``folder`` (created); returns the file."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    target = path / FILE
    partial = path / f".{FILE}.partial"
    torch.save(state, partial)
    partial.replace(target)  # a kill mid-write leaves the previous checkpoint whole
    return target


def read(folder: str | Path) -> dict[str, Any] | None:
    """The state in ``folder``, or None when it holds none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class FolderCheckpointer:
    """Checkpoints in a local folder: one file, replaced at each save."""

    def __init__(self, folder: str | Path, every: int = 1) -> None:
        self.folder, self.every = Path(folder), every

    def restore(self) -> dict[str, Any] | None:
        return read(self.folder)

    def save(self, state: dict[str, Any]) -> None:
        write(state, self.folder)
