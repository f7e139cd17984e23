"""What the driver of a Ray Tune experiment has registered, read from the experiment folder, so
that a fault test waits on that state instead of on time.

A checkpoint folder appears in the storage path when the worker uploads it, before the driver
knows of it; a worker killed then is retried from the checkpoint before. The driver registers
the checkpoint when it processes the save, and with ``CheckpointConfig(num_to_keep=1)`` Tune
then forces a snapshot of its experiment state (``experiment_state-*.json``), which names the
trial's latest checkpoint. The names are read out of the snapshot's bytes: the checkpoint
manager is stored as a cloudpickle blob, which a test has no reason to execute.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_NAME = re.compile(rb"checkpoint_\d{6}")


def registered_checkpoints(ray_dir: Path) -> list[Path]:
    """Each trial's latest checkpoint that the driver has registered, as a folder under
    ``ray_dir`` (experiment/trial/checkpoint_NNNNNN); snapshots being written are skipped."""
    found = []
    for snapshot in sorted(Path(ray_dir).glob("*/experiment_state-*.json")):
        try:
            trials = json.loads(snapshot.read_text()).get("trial_data", [])
        except (OSError, ValueError):  # being written or replaced: read it next time
            continue
        for trial_json, metadata_json in trials:
            folder = json.loads(trial_json).get("relative_logdir")
            manager = json.loads(metadata_json).get("checkpoint_manager") or {}
            names = _NAME.findall(bytes.fromhex(manager.get("value", "")))
            if folder and names:
                found.append(snapshot.parent / folder / max(names).decode())
    return found


def registered_at_least(ray_dir: Path, name: str) -> list[Path]:
    """The registered checkpoints from ``name`` on (checkpoint_000001: after epoch 2) whose
    state is in the storage path."""
    return [p for p in registered_checkpoints(ray_dir)
            if p.name >= name and (p / "state.pt").is_file()]
