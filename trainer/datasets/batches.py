"""Batches of a loaded dataset, and the tensor operations loading uses (torch from here on)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.datasets.base import Batch, check_image_size


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


def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Per-channel standardization with the training split's statistics."""
    dims = [0, 2, 3]
    mean, std = train.mean(dims, keepdim=True), train.std(dims, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def resized(images: Tensor, size: int | None) -> Tensor:
    """Images (N, C, H, W) resized to size x size (antialiased bilinear), or as they are."""
    check_image_size(size)
    if size is None or size == images.shape[-1] == images.shape[-2]:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)
