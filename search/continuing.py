"""Trials that were running when a sweep's driver died, found again with their checkpoints.

``resume`` runs a sweep's missing trials. Those that were running when the driver died left
their last checkpoint in the sweep's Ray experiment folders: ``resume`` continues each of them
from there, with its own sampled setting, before TPE samples the rest. A trial is found by its
folder (``params.json``, the first line of ``result.json`` for its id, ``checkpoint_*``); one
that the study already holds, or that a later continuation took over (``origin``), is left.
Only a local or shared ``--ray-dir`` is searched: on a bucket the trials run again from scratch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTINUED = "continued"  # the experiment-name infix of a continuation run


@dataclass(frozen=True)
class Unfinished:
    ray_id: str  # experiment/trial_id, as the study would have recorded it
    params: dict[str, Any]
    checkpoint: str  # the folder of its last checkpoint


def _first_result(trial_dir: Path) -> dict[str, Any] | None:
    try:
        with (trial_dir / "result.json").open() as fh:
            line = fh.readline()
        return json.loads(line) if line.strip() else None
    except (OSError, ValueError):
        return None


def _sweep_experiments(ray_dir: Path, sweep_id: str) -> list[Path]:
    return sorted(p for p in ray_dir.iterdir() if p.is_dir() and (
        p.name == sweep_id or p.name.startswith((f"{sweep_id}-resumed-",
                                                 f"{sweep_id}-{CONTINUED}-"))))


def unfinished_trials(ray_dir: str, sweep_id: str, recorded: set[str]) -> list[Unfinished]:
    """The sweep's unrecorded trials that left a checkpoint, latest continuation only."""
    root = Path(ray_dir)
    if "://" in ray_dir or not root.is_dir():
        return []
    found: dict[str, Unfinished] = {}
    superseded: set[str] = set()
    for experiment in _sweep_experiments(root, sweep_id):
        for trial_dir in (p for p in experiment.iterdir() if p.is_dir()):
            first = _first_result(trial_dir)
            try:
                config = json.loads((trial_dir / "params.json").read_text())
            except (OSError, ValueError):
                continue
            if first is None or "trial_id" not in first or not isinstance(config, dict):
                continue
            run = config.get("run") if isinstance(config.get("run"), dict) else None
            checkpoints = sorted(trial_dir.glob("checkpoint_*/state.pt"))
            ray_id = f"{experiment.name}/{first['trial_id']}"
            if run is not None and "origin" in run and (ray_id in recorded or checkpoints):
                superseded.add(run["origin"])  # a continuation that got further
            if ray_id in recorded or not checkpoints:
                continue
            params = run["sampled"] if run is not None else config
            found[ray_id] = Unfinished(ray_id, dict(params), str(checkpoints[-1].parent))
    return [u for ray_id, u in found.items() if ray_id not in superseded]
