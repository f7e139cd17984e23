"""CIFAR-10 from its python batches (``cifar-10-batches-py/``: data_batch_1..5, test_batch)."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
from trainer.datasets.base import (DataError, Dataset, DatasetSource, balanced_subset,
                                   register_dataset)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FILES = (*TRAIN_FILES, TEST_FILE)
SUB_FOLDER = "cifar-10-batches-py"
CLASSES = 10


def _safe_globals() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR-10 batch needs: numpy's array and dtype rebuilders (under
    numpy 1's and numpy 2's module names) and bytes from Python 2 strings."""
    import codecs

    from numpy._core import multiarray, numeric

    return {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
            ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
            ("_codecs", "encode"): codecs.encode}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else: a pickle can name any callable, so one
    placed in a data folder could run code in every trial; here only arrays, lists and bytes
    can be built."""

    def find_class(self, module: str, name: str) -> object:
        allowed = _safe_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 "
                                         "batch never holds (refused: data may not run code)")
        return allowed


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            entry = _BatchUnpickler(fh, encoding="bytes").load()
        data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get(b"labels", entry.get(b"fine_labels")), dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 file {path}") from None
    except Exception as exc:  # corrupt pickle, wrong keys, wrong size
        raise DataError(f"malformed CIFAR-10 file {path}: {type(exc).__name__}: {exc}") from None
    if len(data) != len(labels) or len(data) == 0:
        raise DataError(f"malformed CIFAR-10 file {path}: {len(data)} images, "
                        f"{len(labels)} labels")
    if labels.ndim != 1 or labels.min() < 0 or labels.max() >= CLASSES:
        raise DataError(f"malformed CIFAR-10 file {path}: labels must be 0..{CLASSES - 1}, "
                        f"found {int(labels.min())}..{int(labels.max())}")
    return data, labels


class Cifar10(DatasetSource):
    name = "cifar10"
    image_size = 32
    in_channels = 3
    summary = "CIFAR-10, the python batches in --data-dir (cifar-10-batches-py/)"

    def resolve(self, data_dir: str | None) -> str:
        """The folder, ``data_dir`` or its cifar-10-batches-py/, that holds all six batches."""
        if not data_dir:
            raise DataError(f"cifar10 needs --data-dir: a folder holding {SUB_FOLDER}/ "
                            "(data_batch_1..5, test_batch)")
        root = Path(data_dir).expanduser().resolve()
        expected = f"expected {SUB_FOLDER}/ with {', '.join(TRAIN_FILES)} and {TEST_FILE}"
        if not root.is_dir():
            raise DataError(f"no CIFAR-10 batches in {root}: the folder does not exist; "
                            f"{expected}")
        present = {c: [n for n in FILES if (c / n).is_file()] for c in (root, root / SUB_FOLDER)}
        best = max(present, key=lambda c: len(present[c]))
        if len(present[best]) == len(FILES):
            return str(best)
        if not present[best]:
            raise DataError(f"no CIFAR-10 batches in {root}: {expected}")
        missing = [n for n in FILES if n not in present[best]]
        raise DataError(f"missing CIFAR-10 file{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(str(best / n) for n in missing)}")

    def folder(self, data_dir: str | None) -> Path:
        return Path(self.resolve(data_dir))

    def check(self, data_dir: str | None) -> None:
        """Every batch read and checked (about a second): garbage in any of them is one line
        before the first trial, not a crash in every trial."""
        self.split_sizes(data_dir)

    def split_sizes(self, data_dir: str | None) -> tuple[int, int]:
        """Counted by reading every batch (a pickle has no header to read instead); the count
        is kept per file version, so the check and this read each batch once."""
        folder = self.folder(data_dir)
        return (sum(_counted(folder / name) for name in TRAIN_FILES),
                _counted(folder / TEST_FILE))

    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        import torch

        from trainer.datasets.batches import TensorBatches, crop_and_flip, resized, standardize

        folder = self.folder(data_dir)
        parts = [_read_batch(folder / name) for name in TRAIN_FILES]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        keep = balanced_subset(labels, train_subset, "--train-subset",
                               "cifar10's training split")
        x_val_np, y_val_np = _read_batch(folder / TEST_FILE)
        keep_val = balanced_subset(y_val_np, val_subset, "--val-subset",
                                   "cifar10's validation split")
        self.check_memory(image_size, len(keep) + len(keep_val))
        x_train = torch.from_numpy(images[keep]).float() / 255.0
        y_train = torch.from_numpy(labels[keep])
        x_val_np, y_val_np = x_val_np[keep_val], y_val_np[keep_val]
        x_val = torch.from_numpy(x_val_np).float() / 255.0
        x_train, x_val = (resized(x, image_size) for x in (x_train, x_val))
        x_train, x_val = standardize(x_train, x_val)
        size = x_train.shape[-1]
        return Dataset(self.name, 10, 3, size,
                       TensorBatches(x_train, y_train, batch_size, shuffle=True, seed=seed,
                                     augment=crop_and_flip(max(1, size // 8))),
                       TensorBatches(x_val, torch.from_numpy(y_val_np), 500, shuffle=False,
                                     seed=seed),
                       len(x_train), len(x_val))


def _counted(path: Path) -> int:
    """The examples in a batch, which is read and checked once per file version."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 file {path}") from None
    return _counted_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _counted_cached(path: Path, mtime_ns: int, size: int) -> int:
    return len(_read_batch(path)[1])


register_dataset(Cifar10())
