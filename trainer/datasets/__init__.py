"""Dataset registry: the embedded digits (no download), CIFAR-10 and ImageNet from local folders.

``digits.npz`` beside this file is the UCI optical-recognition handwritten digits set as
scikit-learn distributes it (1,797 8x8 images, 17 grey levels, 10 classes), stored once as
uint8 so the package needs neither scikit-learn nor the network at run time.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor]


class DataError(ValueError):
    """A dataset folder is missing or not in the expected layout."""


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
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        flip = torch.rand(n, generator=gen) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)

    return augment


# --- registry --------------------------------------------------------------------------------

DatasetBuilder = Callable[..., Dataset]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def decorator(build: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = build
        return build
    return decorator


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def load_dataset(name: str, *, batch_size: int, seed: int = 0, data_dir: str | None = None,
                 image_size: int | None = None, num_workers: int = 0) -> Dataset:
    try:
        build = _DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}") \
            from None
    return build(batch_size=batch_size, seed=seed, data_dir=data_dir, image_size=image_size,
                 num_workers=num_workers)


def check_dataset(name: str, data_dir: str | None) -> None:
    """Cheap layout check (no images read), so a sweep fails before it writes anything."""
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
    if name == "cifar10":
        _cifar_folder(data_dir)
    elif name == "imagenet":
        _imagenet_root(data_dir)


def _standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Per-channel standardization with the training split's statistics."""
    dims = [0, 2, 3]
    mean, std = train.mean(dims, keepdim=True), train.std(dims, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


# --- digits (embedded default) -----------------------------------------------------------------

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the split is fixed forever, whatever the training seed


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    with resources.files(__name__).joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh)
        return data["images"], data["labels"]


@register_dataset("digits")
def _digits(*, batch_size: int, seed: int, data_dir: str | None, image_size: int | None,
            num_workers: int) -> Dataset:
    images, labels = digits_arrays()
    x = torch.from_numpy(images).float().unsqueeze(1) / 16.0
    y = torch.from_numpy(labels).long()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_val = int(round(len(x) * DIGITS_VAL_FRACTION))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_train, x_val = _standardize(x[train_idx], x[val_idx])
    return Dataset("digits", 10, 1, 8,
                   TensorBatches(x_train, y[train_idx], batch_size, shuffle=True, seed=seed),
                   TensorBatches(x_val, y[val_idx], 512, shuffle=False, seed=seed),
                   len(train_idx), n_val)


# --- CIFAR-10 (the python pickled batches) --------------------------------------------------------

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


def _cifar_folder(data_dir: str | None) -> Path:
    if not data_dir:
        raise DataError("cifar10 needs --data-dir: a folder holding cifar-10-batches-py/ "
                        "(data_batch_1..5, test_batch)")
    root = Path(data_dir)
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / CIFAR_TEST_FILE).is_file():
            return candidate
    raise DataError(f"no CIFAR-10 batches in {root}: expected cifar-10-batches-py/ with "
                    f"{', '.join(CIFAR_TRAIN_FILES)} and {CIFAR_TEST_FILE}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get(b"labels", entry.get(b"fine_labels")), dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 file {path}") from None
    except Exception as exc:  # corrupt pickle, wrong keys, wrong size
        raise DataError(f"malformed CIFAR-10 file {path}: {type(exc).__name__}: {exc}") from None
    if len(data) != len(labels):
        raise DataError(f"malformed CIFAR-10 file {path}: {len(data)} images, "
                        f"{len(labels)} labels")
    return data, labels


@register_dataset("cifar10")
def _cifar10(*, batch_size: int, seed: int, data_dir: str | None, image_size: int | None,
             num_workers: int) -> Dataset:
    folder = _cifar_folder(data_dir)
    parts = [_read_cifar_batch(folder / name) for name in CIFAR_TRAIN_FILES]
    x_train = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0
    y_train = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    x_val_np, y_val_np = _read_cifar_batch(folder / CIFAR_TEST_FILE)
    x_train, x_val = _standardize(x_train, torch.from_numpy(x_val_np).float() / 255.0)
    return Dataset("cifar10", 10, 3, 32,
                   TensorBatches(x_train, y_train, batch_size, shuffle=True, seed=seed,
                                 augment=crop_and_flip(4)),
                   TensorBatches(x_val, torch.from_numpy(y_val_np), 500, shuffle=False,
                                 seed=seed),
                   len(x_train), len(x_val))


# --- ImageNet (an ImageFolder tree: train/<class>/*.JPEG, val/<class>/*.JPEG) -----------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _imagenet_root(data_dir: str | None) -> Path:
    if not data_dir:
        raise DataError("imagenet needs --data-dir: a folder with train/ and val/, "
                        "one sub-folder of images per class")
    root = Path(data_dir)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"no {split}/ folder in {root}: expected train/ and val/ with one "
                            "sub-folder of images per class")
    return root


@register_dataset("imagenet")
def _imagenet(*, batch_size: int, seed: int, data_dir: str | None, image_size: int | None,
              num_workers: int) -> Dataset:
    from torchvision import datasets, transforms

    root = _imagenet_root(data_dir)
    size = image_size or 224
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   normalize])
    val_tf = transforms.Compose([transforms.Resize(int(round(size * 256 / 224))),
                                 transforms.CenterCrop(size), transforms.ToTensor(), normalize])
    splits = {}
    for split, tf in (("train", train_tf), ("val", val_tf)):
        path = root / split
        try:
            splits[split] = datasets.ImageFolder(str(path), transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"malformed image folder {path}: {str(exc).splitlines()[0]}") \
                from None
    if splits["train"].classes != splits["val"].classes:
        raise DataError(f"train/ and val/ in {root} name different classes")

    def loader(split: str, shuffle: bool) -> Callable[[int], torch.utils.data.DataLoader]:
        def make(epoch: int) -> torch.utils.data.DataLoader:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            return torch.utils.data.DataLoader(
                splits[split], batch_size=batch_size, shuffle=shuffle, generator=gen,
                num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                persistent_workers=False)
        return make

    return Dataset("imagenet", len(splits["train"].classes), 3, size,
                   LoaderBatches(loader("train", True)), LoaderBatches(loader("val", False)),
                   len(splits["train"]), len(splits["val"]))
