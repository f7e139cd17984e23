"""Trials that were running when a sweep's driver died, found again with their checkpoints.

``resume`` runs a sweep's missing trials. Those that were running when the driver died left
their last checkpoint in the sweep's Ray experiment folders: ``resume`` continues each of them
from there, with its own sampled setting, before TPE samples the rest. A trial is found by its
folder (``params.json``, the first line of ``result.json`` for its id, ``checkpoint_*``); one
that the study already holds, or that a later continuation took over (``origin``), is left.
The folders are read through pyarrow's filesystems, as Tune writes them: a local or shared
``--ray-dir`` and a bucket alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CONTINUED = "continued"  # the experiment-name infix of a continuation run


@dataclass(frozen=True)
class Unfinished:
    ray_id: str  # experiment/trial_id, as the study would have recorded it
    params: dict[str, Any]
    checkpoint: str  # its last checkpoint: a folder, or a URI under a bucket --ray-dir


class _Store:
    """The Ray folder through pyarrow's filesystems: a local or shared folder and a bucket
    (s3://, gs://, …) are read the same way, as Ray Tune itself writes them."""

    def __init__(self, ray_dir: str) -> None:
        import pyarrow.fs as pafs

        self.pafs = pafs
        if "://" in ray_dir:
            self.fs, self.root = pafs.FileSystem.from_uri(ray_dir)
            self.prefix = ray_dir[:len(ray_dir) - len(self.root)] if ray_dir.endswith(
                self.root) else None
        else:
            self.fs, self.root, self.prefix = pafs.LocalFileSystem(), ray_dir, ""

    def folders(self, path: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(self.pafs.FileSelector(path, allow_not_found=True))
        except OSError:
            return []
        return sorted(i.path for i in infos if i.type == self.pafs.FileType.Directory)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == self.pafs.FileType.File

    def text(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read().decode()
        except (OSError, UnicodeDecodeError):
            return None

    def address(self, path: str) -> str:
        """A path as Ray's ``Checkpoint`` takes it: local as it is, else the URI."""
        return path if self.prefix == "" else f"{self.prefix}{path}"


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text and text.strip() else None
    except ValueError:
        return None


def unfinished_trials(ray_dir: str, sweep_id: str, recorded: set[str]) -> list[Unfinished]:
    """The sweep's unrecorded trials that left a checkpoint, latest continuation only."""
    store = _Store(ray_dir)
    if store.prefix is None:  # a URI pyarrow maps to a path we cannot map back
        return []
    found: dict[str, Unfinished] = {}
    superseded: set[str] = set()
    experiments = [e for e in store.folders(store.root) if _name(e) == sweep_id or _name(e)
                   .startswith((f"{sweep_id}-resumed-", f"{sweep_id}-{CONTINUED}-"))]
    for experiment in experiments:
        for trial_dir in store.folders(experiment):
            results = store.text(f"{trial_dir}/result.json")
            first = _json(results.splitlines()[0] if results else None)
            config = _json(store.text(f"{trial_dir}/params.json"))
            if not isinstance(first, dict) or "trial_id" not in first \
                    or not isinstance(config, dict):
                continue
            run = config.get("run") if isinstance(config.get("run"), dict) else None
            checkpoints = [c for c in store.folders(trial_dir)
                           if _name(c).startswith("checkpoint_")
                           and store.exists(f"{c}/state.pt")]
            ray_id = f"{_name(experiment)}/{first['trial_id']}"
            if run is not None and "origin" in run and (ray_id in recorded or checkpoints):
                superseded.add(run["origin"])  # a continuation that got further
            if ray_id in recorded or not checkpoints:
                continue
            params = run["sampled"] if run is not None else config
            found[ray_id] = Unfinished(ray_id, dict(params), store.address(checkpoints[-1]))
    return [u for ray_id, u in found.items() if ray_id not in superseded]
