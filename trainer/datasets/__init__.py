"""Datasets, one module each, in one registry: every module here is imported the first time
the registry is read, so a new dataset is a new file that calls ``register_dataset``.

Each dataset declares its own availability check (``DatasetSource.check``), so that a sweep can
refuse a missing or malformed folder before it writes anything, and resolves the folder it
reads (``resolve_data_dir``), so that the driver hands every trial that same absolute folder.
Checking imports no torch; the batch classes below load it when first named.
"""

from typing import Any

from trainer.datasets.base import (DATASETS, Batch, BatchSource, DataError, Dataset,
                                   DatasetSource, check_dataset, check_image_size_fits,
                                   check_model_fits, check_subsets, list_datasets,
                                   load_dataset, register_dataset, resolve_data_dir,
                                   split_sizes)
from trainer.datasets.digits import digits_arrays

_BATCHES = ("LoaderBatches", "TensorBatches")

__all__ = ["Batch", "BatchSource", "DATASETS", "DataError", "Dataset", "DatasetSource",
           "LoaderBatches", "TensorBatches", "check_dataset", "check_image_size_fits",
           "check_model_fits", "check_subsets", "digits_arrays", "list_datasets",
           "load_dataset", "register_dataset", "resolve_data_dir", "split_sizes"]


def __getattr__(name: str) -> Any:
    if name in _BATCHES:
        from trainer.datasets import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
