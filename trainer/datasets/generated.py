"""What the generated sets share (sequences, or vectors for a point regression): numeric options
with limits, a fixed seed per split, and sizes and shapes known from the options alone.

A generated set draws its examples from a seeded generator, never from the run's seed: every
trial and training seed sees the same training and validation examples, and the two splits are
independent draws (one stream each from ``data_seed``), so validation measures examples the
model never trained on. Nothing is read from disk, so the sweep's checks cost nothing.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np

from catalogue.tasks import InputSpec
from trainer.datasets.base import (FLOAT_BYTES, DataError, Dataset, DatasetSource, _bytes,
                                   balanced_subset, memory_cap)

# Stream 0 is what the splits share (a pattern generation's targets); 1 and 2 are the splits.
STREAMS = {"shared": 0, "train": 1, "val": 2}
VAL_BATCH = 512
Settings = dict[str, Any]
Drawn = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, the groups a subset balances


def stream(settings: Settings, name: str) -> np.random.Generator:
    """The seeded generator of one stream of a set's draws."""
    return np.random.default_rng((int(settings["data_seed"]), STREAMS[name]))


class GeneratedSource(DatasetSource):
    """A sequence set drawn from ``options``; ``limits`` bounds each numeric option."""

    image_size = 0
    in_channels = 0
    # name -> (lowest, highest or None), inclusive.
    limits: dict[str, tuple[float, float | None]] = {}

    def check_options(self, options: dict[str, object] | None) -> None:
        """DataError naming an unknown option, a value of the wrong kind or out of range."""
        super().check_options(options)
        for name, value in (options or {}).items():
            whole = isinstance(self.options[name][0], int)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
                    math.isfinite(value) or (whole and value != int(value)):
                kind = "a whole number" if whole else "a number"
                raise DataError(f"{self.name}: option {name} takes {kind}, got {value!r}")
            low, high = self.limits.get(name, (0, None))
            if value < low or (high is not None and value > high):
                bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
                raise DataError(f"{self.name}: option {name} must be {bound}, got {value!r}")

    def settings(self, options: dict[str, object] | None = None) -> Settings:
        """Every option's value: the defaults, overridden by ``options`` (checked)."""
        self.check_options(options)
        given = options or {}
        return {name: type(default)(given.get(name, default))
                for name, (default, _) in self.options.items()}

    @abstractmethod
    def shape(self, settings: Settings) -> tuple[int, int, int]:
        """(steps, input features, outputs) of one example under ``settings``."""

    @abstractmethod
    def generate(self, settings: Settings, split: str, size: int) -> Drawn:
        """One split, from its own stream: x (size, steps, features), or (size, features)
        for a vector set, y, and the group of each example that a subset balances (a label,
        a pattern)."""

    def spec_of(self, settings: Settings) -> InputSpec:
        """One example's input: a sequence of ``shape``'s steps; a vector set overrides it."""
        steps, features, _ = self.shape(settings)
        return InputSpec.sequence(steps, features)

    def input_spec(self, image_size: int | None = None,
                   options: dict[str, object] | None = None) -> InputSpec:
        return self.spec_of(self.settings(options))

    def split_sizes(self, data_dir: str | None,
                    options: dict[str, object] | None = None) -> tuple[int, int]:
        s = self.settings(options)
        return s["train_size"], s["val_size"]

    def check_memory(self, image_size: int | None, examples: int,
                     options: dict[str, object] | None = None) -> None:
        """Sequences and vectors are not images; and an absurd size is refused rather than
        allocated."""
        settings = self.settings(options)
        spec = self.spec_of(settings)
        if image_size is not None:
            raise DataError(f"--image-size {image_size}: {self.name} holds {spec.kind}s, not "
                            "images")
        steps, features, outputs = self.shape(settings)
        per_example = steps * (features + (outputs if self.task == "regression" else 0))
        needed, cap = examples * per_example * FLOAT_BYTES, memory_cap()
        if needed > cap:
            raise DataError(f"{self.name}: {examples:,} {spec.describe()} need "
                            f"{_bytes(needed)} of memory, more than the {_bytes(cap)} allowed "
                            "(half this machine's memory)")

    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None, options: dict[str, object] | None = None
             ) -> Dataset:
        """``seed`` orders the training batches only: the examples are the options'."""
        import torch

        from trainer.datasets.batches import TensorBatches

        s = self.settings(options)
        self.check_memory(image_size, s["train_size"] + s["val_size"], options)
        splits = {}
        for split, subset in (("train", train_subset), ("val", val_subset)):
            x, y, groups = self.generate(s, split, s[f"{split}_size"])
            keep = balanced_subset(groups, subset, f"--{split}-subset",
                                   f"{self.name}'s {split} split")
            splits[split] = (torch.from_numpy(np.ascontiguousarray(x[keep], np.float32)),
                             torch.from_numpy(y[keep]))
        (x_train, y_train), (x_val, y_val) = splits["train"], splits["val"]
        return Dataset(self.name, self.shape(s)[2], 0, 0,
                       TensorBatches(x_train, y_train, batch_size, shuffle=True, seed=seed),
                       TensorBatches(x_val, y_val, VAL_BATCH, shuffle=False, seed=seed),
                       len(x_train), len(x_val), task=self.task, spec=self.spec_of(s))


def describe_options(source: DatasetSource) -> str:
    """``name=default`` for each option a set takes, for listings."""
    return " ".join(f"{name}={default:g}" if isinstance(default, float) else f"{name}={default}"
                    for name, (default, _) in source.options.items())
