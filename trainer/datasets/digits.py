"""The embedded default: scikit-learn's 8x8 handwritten digits, shipped inside the package.

``digits.npz`` beside this file is the UCI optical-recognition handwritten digits set as
scikit-learn distributes it (1,797 8x8 images, 17 grey levels, 10 classes), stored once as
uint8 so that the package needs neither scikit-learn nor the network at run time.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from trainer.datasets.base import (Dataset, DatasetSource, balanced_subset, register_dataset)

VAL_FRACTION = 0.2
SPLIT_SEED = 0  # the split is fixed forever, whatever the training seed


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    with resources.files(__package__).joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh, allow_pickle=False)
        return data["images"], data["labels"]


class Digits(DatasetSource):
    name = "digits"
    image_size = 8
    in_channels = 1
    summary = "scikit-learn's 8x8 handwritten digits, 1,438/359 fixed split (embedded)"

    def split_sizes(self, data_dir: str | None) -> tuple[int, int]:
        total = len(digits_arrays()[1])
        n_val = _val_count(total)
        return total - n_val, n_val

    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        import torch

        from trainer.datasets.batches import TensorBatches, resized, standardize

        images, labels = digits_arrays()
        x = torch.from_numpy(images).float().unsqueeze(1) / 16.0
        y = torch.from_numpy(labels).long()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_val = _val_count(len(x))
        val_idx, train_idx = order[:n_val], order[n_val:]
        train_idx = train_idx[balanced_subset(y[train_idx], train_subset, "--train-subset",
                                              "digits's training split")]
        val_idx = val_idx[balanced_subset(y[val_idx], val_subset, "--val-subset",
                                          "digits's validation split")]
        self.check_memory(image_size, len(train_idx) + len(val_idx))
        # Resized after selection (each image is resized on its own, so the result is the
        # same): only the images that train are held at the new size.
        x_train, x_val = standardize(resized(x[train_idx], image_size),
                                     resized(x[val_idx], image_size))
        return Dataset(self.name, 10, 1, x_train.shape[-1],
                       TensorBatches(x_train, y[train_idx], batch_size, shuffle=True, seed=seed),
                       TensorBatches(x_val, y[val_idx], 512, shuffle=False, seed=seed),
                       len(train_idx), len(val_idx))


def _val_count(total: int) -> int:
    return int(round(total * VAL_FRACTION))


register_dataset(Digits())
