"""Fashion-MNIST and MNIST from their four IDX files (gzipped or not), checked strictly.

Where they are looked for: in ``--data-dir`` alone when one is named (a missing or incomplete
folder is an error, never a fall-back to another copy); otherwise ``$CREDITSWEEP_DATA_DIR``,
then (for Fashion-MNIST) Debian's package ``dataset-fashion-mnist``, which installs them in
/usr/share/datasets/fashion-mnist/. In each place the files may sit directly or in a folder
named after the dataset. Validation is the official 10,000-image test split.

Every file is validated in full: magic number, item type, dimensions, counts that agree
between images and labels, the exact byte length, and labels within the classes. A truncated
or corrupt file is a one-line error, never a traceback and never a silently smaller set. Sizes
come from the header (and, uncompressed, the file's size) before any data is read.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from trainer.datasets.base import (DataError, Dataset, DatasetSource, balanced_subset,
                                   register_dataset, require_examples)

DATA_DIR_ENV = "CREDITSWEEP_DATA_DIR"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_UBYTE = 0x08
_MAX_BYTES = 200 * 2**20  # no IDX file of these sets is larger: refuse a decompression bomb


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Read errors (a bad gzip stream, a truncated one, an unreadable file) as one line."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"corrupt IDX file {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # type: ignore


def _header(fh: BinaryIO, path: Path, dims: int) -> tuple[int, ...]:
    """The shape the header declares, checked against the cap and (for a raw file) against
    the file's size before any data is read: a wrong header never costs a large read."""
    head = fh.read(4 + 4 * dims)
    if len(head) < 4 + 4 * dims:
        raise DataError(f"corrupt IDX file {path}: {len(head)} bytes, shorter than its header")
    zero, kind, ndim = struct.unpack(">HBB", head[:4])
    if zero != 0 or kind != _UBYTE or ndim != dims:
        raise DataError(f"corrupt IDX file {path}: bad magic number {head[:4].hex()} (expected "
                        f"0000080{dims}, unsigned bytes in {dims} dimensions)")
    shape = struct.unpack(f">{dims}I", head[4:])
    count = math.prod(shape)  # Python ints: a header cannot overflow to a small size
    if count > _MAX_BYTES:
        raise DataError(f"corrupt IDX file {path}: its header declares "
                        f"{'x'.join(map(str, shape))} = {count:,} bytes, larger than any IDX "
                        "file of this set")
    if path.suffix != ".gz":
        _check_length(path, os.fstat(fh.fileno()).st_size, 4 + 4 * dims + count)
    return shape


def _check_length(path: Path, length: int, expected: int) -> None:
    if length != expected:
        what = "truncated" if length < expected else "longer than its header says"
        raise DataError(f"corrupt IDX file {path}: {what} ({length} bytes, header says "
                        f"{expected})")


def read_header(path: Path, dims: int) -> tuple[int, ...]:
    """The shape an IDX file declares, from its first 4 + 4 * dims bytes only."""
    with _reading(path), _open(path) as fh:
        return _header(fh, path, dims)


def parse_idx(path: Path, dims: int) -> np.ndarray:
    """The array an IDX file holds (unsigned bytes, ``dims`` dimensions), validated. Exactly
    the declared bytes are read, plus one to detect trailing data in a gzipped file."""
    with _reading(path), _open(path) as fh:
        shape = _header(fh, path, dims)
        count = math.prod(shape)
        data = fh.read(count + 1)
    header = 4 + 4 * dims
    _check_length(path, header + len(data), header + count)
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


class IdxDataset(DatasetSource):
    """A 28x28 grey, 10-class set in four IDX files."""

    image_size = 28
    in_channels = 1

    def __init__(self, name: str, summary: str, folders: tuple[str, ...],
                 system_dir: str | None, package: str | None) -> None:
        self.name, self.summary = name, summary
        self.folders, self.system_dir, self.package = folders, system_dir, package

    @staticmethod
    def _found(folder: Path) -> dict[str, Path | None]:
        """Each of the four files in ``folder`` (gzipped preferred), None where absent."""
        found: dict[str, Path | None] = {}
        for stem in (stem for stems in SPLITS.values() for stem in stems):
            found[stem] = next((folder / n for n in (f"{stem}.gz", stem)
                                if (folder / n).is_file()), None)
        return found

    def _holding(self, root: Path) -> Path | None:
        """The folder, ``root`` or one of its usual sub-folders, that holds all four files."""
        for folder in (root / sub for sub in ("", *self.folders)):
            if all(self._found(folder).values()):
                return folder
        return None

    def resolve(self, data_dir: str | None) -> str:
        if data_dir:
            return str(self._named(Path(data_dir).expanduser().resolve()))
        for root in (os.environ.get(DATA_DIR_ENV), self.system_dir):
            folder = self._holding(Path(root).expanduser().resolve()) if root else None
            if folder is not None:
                return str(folder)
        names = ", ".join(f"{stem}[.gz]" for stems in SPLITS.values() for stem in stems)
        where = f"--data-dir, ${DATA_DIR_ENV}" + (f" or {self.system_dir}" if self.system_dir
                                                  else "")
        install = f" (apt-get install {self.package})" if self.package else ""
        raise DataError(f"{self.name}: no folder holds all four files {names}; looked in "
                        f"{where}{install}")

    def _named(self, root: Path) -> Path:
        """The folder the user named, and nothing else: the files, or what is missing."""
        if not root.is_dir():
            raise DataError(f"{self.name}: --data-dir {root} does not exist or is not a folder")
        folder = self._holding(root)
        if folder is not None:
            return folder
        candidates = [root / sub for sub in ("", *self.folders)]
        best = max(candidates, key=lambda c: sum(p is not None for p in self._found(c).values()))
        missing = [f"{stem}[.gz]" for stem, p in self._found(best).items() if p is None]
        subs = ", ".join(f"{sub}/" for sub in self.folders)
        raise DataError(f"{self.name}: {best} lacks {', '.join(missing)} (looked in {root} "
                        f"and its sub-folders {subs})")

    def files(self, data_dir: str | None) -> dict[str, tuple[Path, Path]]:
        """The four files, from the folder ``resolve`` finds."""
        found = self._found(Path(self.resolve(data_dir)))
        return {split: (found[images], found[labels])  # type: ignore[misc]
                for split, (images, labels) in SPLITS.items()}

    def split_sizes(self, data_dir: str | None) -> tuple[int, int]:
        """From the four headers alone (through gzip where compressed)."""
        counts = []
        for images, labels in self.files(data_dir).values():
            n_images, n_labels = read_header(images, 3)[0], read_header(labels, 1)[0]
            _same_count(images, n_images, labels, n_labels)
            counts.append(n_images)
        return counts[0], counts[1]

    def arrays(self, data_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        found = self.files(data_dir)
        arrays = {split: _validated(*paths) for split, paths in found.items()}
        require_examples(self.name, found["train"][0].parent,
                         (len(arrays["train"][1]), len(arrays["val"][1])))
        return arrays

    def check(self, data_dir: str | None) -> None:
        self.arrays(data_dir)

    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        import torch

        from trainer.datasets.batches import TensorBatches, resized, standardize

        arrays = self.arrays(data_dir)
        (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
        train_idx = balanced_subset(y_train, train_subset, "--train-subset",
                                    f"{self.name}'s training split")
        val_idx = balanced_subset(y_val, val_subset, "--val-subset",
                                  f"{self.name}'s validation split")
        self.check_memory(image_size, len(train_idx) + len(val_idx))
        xs = [resized(torch.from_numpy(x[i]).float().unsqueeze(1) / 255.0, image_size)
              for x, i in ((x_train, train_idx), (x_val, val_idx))]
        x_train_t, x_val_t = standardize(*xs)
        y_train_t = torch.from_numpy(y_train[train_idx].astype(np.int64))
        y_val_t = torch.from_numpy(y_val[val_idx].astype(np.int64))
        return Dataset(self.name, 10, 1, x_train_t.shape[-1],
                       TensorBatches(x_train_t, y_train_t, batch_size, shuffle=True, seed=seed),
                       TensorBatches(x_val_t, y_val_t, 500, shuffle=False, seed=seed),
                       len(train_idx), len(val_idx))


def _same_count(images: Path, n_images: int, labels: Path, n_labels: int) -> None:
    if n_images != n_labels:
        raise DataError(f"{images.name} holds {n_images} images but {labels.name} "
                        f"{n_labels} labels")


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
    _same_count(images, len(x), labels, len(y))
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
