"""What a dataset is to the trainer: batches per epoch, its shape, and its availability check."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from catalogue.errors import UsageError
from catalogue.registry import Registry, import_submodules

Batch = tuple[Tensor, Tensor]
SUBSET_SEED = 0  # subsets are fixed: every trial and training seed sees the same examples


class DataError(UsageError):
    """A dataset folder is missing, incomplete or not in the expected format."""


class BatchSource(Protocol):
    def batches(self, epoch: int) -> Iterable[Batch]: ...
    def __len__(self) -> int: ...  # batches per epoch


@dataclass
class Dataset:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train: BatchSource
    val: BatchSource
    train_size: int
    val_size: int


class DatasetSource(ABC):
    """A registered dataset: where its files are, how to check them, how to load them."""

    name: str
    summary: str
    image_size: int  # the side its images have unless --image-size resizes them

    def check(self, data_dir: str | None) -> None:  # noqa: B027 (most sets need no check)
        """Availability check before a sweep writes anything: raise DataError naming what is
        missing or malformed. A set that ships inside the package has nothing to check."""

    @abstractmethod
    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        """``train_subset``/``val_subset``: a fixed, class-balanced subset of that size."""


class TensorBatches:
    """In-memory batches, reshuffled each epoch from a seeded generator (no DataLoader cost)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool, seed: int,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.augment = shuffle, seed, augment

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.x), generator=gen) if self.shuffle \
            else torch.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.x[idx]
            if self.augment is not None:
                x = self.augment(x, gen)
            yield x, self.y[idx]


class LoaderBatches:
    """Wraps a torch DataLoader (image folders too large to hold in memory)."""

    def __init__(self, make_loader: Callable[[int], torch.utils.data.DataLoader]) -> None:
        self.make_loader = make_loader
        self._length = len(make_loader(0))

    def __len__(self) -> int:
        return self._length

    def batches(self, epoch: int) -> Iterable[Batch]:
        return self.make_loader(epoch)


def crop_and_flip(pad: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    """The standard CIFAR augmentation (random crop after zero padding, horizontal flip)."""

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        flip = torch.rand(n, generator=gen) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)

    return augment


def balanced_subset(labels: np.ndarray | Tensor, size: int | None, flag: str) -> np.ndarray:
    """Indices of a fixed, seeded, class-balanced subset of ``size`` examples (all when None):
    the classes take turns, each in a fixed random order, so every class gets size / classes
    examples while it has them."""
    labels = np.asarray(labels)
    if size is None:
        return np.arange(len(labels))
    if not 0 < size <= len(labels):
        raise DataError(f"{flag} {size}: the split has {len(labels)} examples")
    rng = np.random.default_rng(SUBSET_SEED)
    ranks = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((labels, ranks))  # round-robin over the classes
    return np.sort(order[:size])


def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Per-channel standardization with the training split's statistics."""
    dims = [0, 2, 3]
    mean, std = train.mean(dims, keepdim=True), train.std(dims, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def resized(images: Tensor, size: int | None) -> Tensor:
    """Images (N, C, H, W) resized to size x size (antialiased bilinear), or as they are."""
    if size is None or size == images.shape[-1] == images.shape[-2]:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


DATASETS: Registry[DatasetSource] = Registry(
    "dataset", discover=import_submodules("trainer.datasets", skip=("base",)))


def register_dataset(source: DatasetSource) -> DatasetSource:
    return DATASETS.register(source.name, source)


def list_datasets() -> list[str]:
    return sorted(DATASETS.names())


def load_dataset(name: str, *, batch_size: int, seed: int = 0, data_dir: str | None = None,
                 image_size: int | None = None, num_workers: int = 0,
                 train_subset: int | None = None, val_subset: int | None = None) -> Dataset:
    source = DATASETS.get(name)
    return source.load(batch_size=batch_size, seed=seed, data_dir=data_dir,
                       image_size=image_size, num_workers=num_workers,
                       train_subset=train_subset, val_subset=val_subset)


def check_dataset(name: str, data_dir: str | None, archs: tuple[str, ...] = (),
                  image_size: int | None = None) -> None:
    """Whether the named dataset can be loaded from ``data_dir``, cheaply (DataError if not),
    and whether its images (at ``image_size`` when resized) fit each of ``archs``."""
    from catalogue.architectures import architecture

    source = DATASETS.get(name)
    source.check(data_dir)
    for arch in archs:
        architecture(arch).check_image_size(image_size or source.image_size,
                                            f"{name} images")
