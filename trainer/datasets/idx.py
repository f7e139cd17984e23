"""Fashion-MNIST and MNIST from their four IDX files (gzipped or not), checked strictly.

Where they are looked for, in order: ``--data-dir``, ``$CREDITSWEEP_DATA_DIR``, then (for
Fashion-MNIST) Debian's package ``dataset-fashion-mnist``, which installs them in
/usr/share/datasets/fashion-mnist/. In each place the files may sit directly or in a folder
named after the dataset. Validation is the official 10,000-image test split.

Every file is validated in full: magic number, item type, dimensions, counts that agree
between images and labels, the exact byte length, and labels within the classes. A truncated
or corrupt file is a one-line error, never a traceback and never a silently smaller set.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from trainer.datasets.base import (DataError, Dataset, DatasetSource, TensorBatches,
                                   balanced_subset, register_dataset, resized, standardize)

DATA_DIR_ENV = "CREDITSWEEP_DATA_DIR"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_UBYTE = 0x08
_MAX_BYTES = 200 * 2**20  # no IDX file of these sets is larger: refuse a decompression bomb


def _read(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read(_MAX_BYTES + 1)
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"corrupt IDX file {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
    if len(data) > _MAX_BYTES:
        raise DataError(f"corrupt IDX file {path}: larger than any IDX file of this set")
    return data


def parse_idx(path: Path, dims: int) -> np.ndarray:
    """The array an IDX file holds (unsigned bytes, ``dims`` dimensions), validated."""
    data = _read(path)
    if len(data) < 4 + 4 * dims:
        raise DataError(f"corrupt IDX file {path}: {len(data)} bytes, shorter than its header")
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != _UBYTE or ndim != dims:
        raise DataError(f"corrupt IDX file {path}: bad magic number {data[:4].hex()} (expected "
                        f"0000080{dims}, unsigned bytes in {dims} dimensions)")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    expected = 4 + 4 * dims + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"corrupt IDX file {path}: {what} ({len(data)} bytes, header says "
                        f"{expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class IdxDataset(DatasetSource):
    """A 28x28 grey, 10-class set in four IDX files."""

    image_size = 28

    def __init__(self, name: str, summary: str, folders: tuple[str, ...],
                 system_dir: str | None, package: str | None) -> None:
        self.name, self.summary = name, summary
        self.folders, self.system_dir, self.package = folders, system_dir, package

    def _candidates(self, data_dir: str | None) -> list[Path]:
        roots = [r for r in (data_dir, os.environ.get(DATA_DIR_ENV), self.system_dir) if r]
        return [Path(root) / sub for root in roots for sub in ("", *self.folders)]

    def _file(self, folder: Path, stem: str) -> Path | None:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
        return None

    def files(self, data_dir: str | None) -> dict[str, tuple[Path, Path]]:
        """The four files, from the first place that has all of them."""
        for folder in self._candidates(data_dir):
            found = {split: tuple(self._file(folder, stem) for stem in stems)
                     for split, stems in SPLITS.items()}
            if all(p is not None for pair in found.values() for p in pair):
                return found  # type: ignore[return-value]
        names = ", ".join(f"{stem}[.gz]" for stems in SPLITS.values() for stem in stems)
        where = f"--data-dir, ${DATA_DIR_ENV}" + (f" or {self.system_dir}" if self.system_dir
                                                  else "")
        install = f" (apt-get install {self.package})" if self.package else ""
        raise DataError(f"{self.name}: no folder holds all four files {names}; looked in "
                        f"{where}{install}")

    def arrays(self, data_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        found = self.files(data_dir)
        return {split: _validated(*paths) for split, paths in found.items()}

    def check(self, data_dir: str | None) -> None:
        self.arrays(data_dir)

    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        arrays = self.arrays(data_dir)
        (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
        train_idx = balanced_subset(y_train, train_subset, "--train-subset")
        val_idx = balanced_subset(y_val, val_subset, "--val-subset")
        xs = [resized(torch.from_numpy(x[i]).float().unsqueeze(1) / 255.0, image_size)
              for x, i in ((x_train, train_idx), (x_val, val_idx))]
        x_train_t, x_val_t = standardize(*xs)
        y_train_t = torch.from_numpy(y_train[train_idx].astype(np.int64))
        y_val_t = torch.from_numpy(y_val[val_idx].astype(np.int64))
        return Dataset(self.name, 10, 1, x_train_t.shape[-1],
                       TensorBatches(x_train_t, y_train_t, batch_size, shuffle=True, seed=seed),
                       TensorBatches(x_val_t, y_val_t, 500, shuffle=False, seed=seed),
                       len(train_idx), len(val_idx))


def _validated(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    stat = [(p, p.stat().st_mtime_ns, p.stat().st_size) for p in (images, labels)]
    return _validated_cached(tuple(stat))


@functools.lru_cache(maxsize=4)
def _validated_cached(stat: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Parsed once per process and file version: a reused trial worker loads it once."""
    (images, _, _), (labels, _, _) = stat
    x, y = parse_idx(images, 3), parse_idx(labels, 1)
    if x.shape[1:] != (28, 28):
        raise DataError(f"corrupt IDX file {images}: images are {x.shape[1]}x{x.shape[2]}, "
                        "not 28x28")
    if len(x) != len(y):
        raise DataError(f"{images.name} holds {len(x)} images but {labels.name} "
                        f"{len(y)} labels")
    if len(y) and y.max() > 9:
        raise DataError(f"corrupt IDX file {labels}: label {int(y.max())} is not a class 0-9")
    return x, y


register_dataset(IdxDataset(
    "fashion_mnist", "Fashion-MNIST (Zalando), 60k/10k 28x28 grey, 10 classes",
    ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"))
register_dataset(IdxDataset(
    "mnist", "MNIST handwritten digits, 60k/10k 28x28 grey, 10 classes",
    ("mnist", "MNIST/raw"), None, None))
