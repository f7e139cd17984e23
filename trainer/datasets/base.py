"""What a dataset is to the trainer: batches per epoch, its shape, and its availability check.

Torch-free on purpose: a sweep checks folders, split sizes, subsets and memory before Ray
starts, and a usage error should answer as fast as a query does. What loading needs from
torch lives in ``trainer.datasets.batches``."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol

import numpy as np

from catalogue.errors import UsageError
from catalogue.registry import Registry, import_submodules
from catalogue.tasks import InputSpec, Task, get_task

if TYPE_CHECKING:  # torch is imported by loading, never by checking
    from torch import Tensor

Batch = tuple["Tensor", "Tensor"]
SUBSET_SEED = 0  # subsets are fixed: every trial and training seed sees the same examples
FLOAT_BYTES = 4  # images are held as float32
ASSUMED_MEMORY = 16 * 2**30  # when the machine cannot say how much memory it has


class DataError(UsageError):
    """A dataset folder is missing, incomplete or not in the expected format."""


class BatchSource(Protocol):
    def batches(self, epoch: int) -> Iterable[Batch]: ...
    def __len__(self) -> int: ...  # batches per epoch


@dataclass
class Dataset:
    """A loaded dataset. ``num_classes`` is the model's output width: the classes of a
    classification task, the target's dimensions of a regression. An image set leaves
    ``spec`` to be its images' (``in_channels`` x ``image_size``^2); a sequence set gives it
    and leaves the image fields 0."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train: BatchSource
    val: BatchSource
    train_size: int
    val_size: int
    task: str = "classification"
    spec: InputSpec | None = None

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = InputSpec.image(self.in_channels, self.image_size)

    @property
    def task_declaration(self) -> Task:
        return get_task(self.task)


class DatasetSource(ABC):
    """A registered dataset: where its files are, how to check them, how to load them."""

    name: str
    summary: str
    image_size: int  # the side its images have unless --image-size resizes them
    in_channels: int
    in_memory: bool = True  # held whole as float32 tensors, so memory bounds --image-size
    task: str = "classification"  # catalogue.tasks
    # Options a generated set takes (--dataset-option NAME=VALUE): name -> (default, help).
    options: dict[str, tuple[object, str]] = {}

    def check_options(self, options: dict[str, object] | None) -> None:
        """DataError naming an option this set does not take."""
        unknown = sorted(set(options or {}) - set(self.options))
        if unknown:
            takes = ", ".join(sorted(self.options)) or "none"
            raise DataError(f"{self.name} takes no option {', '.join(unknown)} (its options: "
                            f"{takes})")

    def input_spec(self, image_size: int | None = None,
                   options: dict[str, object] | None = None) -> InputSpec:
        """The shape of its inputs (images at ``image_size`` when resized), known before
        loading, so that a model that cannot take them is refused first. A generated
        sequence set overrides it (its ``options`` set lengths)."""
        return InputSpec.image(self.in_channels, image_size or self.image_size)

    def resolve(self, data_dir: str | None) -> str | None:
        """The absolute folder its files are read from, so that every process (whatever its
        working directory) reads the same one; DataError when there is none. None: the set
        ships inside the package."""
        return None

    def check(self, data_dir: str | None) -> None:  # noqa: B027 (most sets need no check)
        """Availability check before a sweep writes anything: raise DataError naming what is
        missing or malformed. A set that ships inside the package has nothing to check."""

    @abstractmethod
    def split_sizes(self, data_dir: str | None) -> tuple[int, int]:
        """(training, validation) example counts, read cheaply (headers, file counts), so
        subsets and memory are checked before anything large is read."""

    @abstractmethod
    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        """``train_subset``/``val_subset``: a fixed, class-balanced subset of that size."""

    def check_memory(self, image_size: int | None, examples: int) -> None:
        """DataError unless ``examples`` images at ``image_size`` fit in memory as float32:
        called before resizing, so an absurd size is refused rather than allocated."""
        check_image_size(image_size)
        if not self.in_memory:
            return
        side = image_size or self.image_size
        needed = examples * self.in_channels * side * side * FLOAT_BYTES
        cap = memory_cap()
        if needed > cap:
            raise DataError(f"--image-size {side}: {examples:,} {self.name} images at "
                            f"{side}x{side} need {_bytes(needed)} of memory as float32, more "
                            f"than the {_bytes(cap)} allowed (half this machine's memory)")


def check_image_size(image_size: int | None) -> None:
    if image_size is not None and image_size < 1:
        raise DataError(f"--image-size {image_size}: must be at least 1")


def memory_cap() -> int:
    """Half the physical memory: the rest is for the copies that standardizing makes, the
    model and every other process on the machine."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = 0
    return (total if total > 0 else ASSUMED_MEMORY) // 2


def _bytes(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def require_examples(name: str, where: object, sizes: tuple[int, int]) -> tuple[int, int]:
    """A split without examples would fail later as a division by zero in every trial."""
    for count, split in zip(sizes, ("training", "validation")):
        if count == 0:
            raise DataError(f"{name}: {where} holds 0 {split} images")
    return sizes


def subset_fits(size: int | None, available: int, flag: str, split: str) -> None:
    """DataError unless a subset of ``size`` can be drawn from ``available`` examples."""
    if size is not None and not 0 < size <= available:
        raise DataError(f"{flag} {size}: {split} has {available} examples")


def balanced_subset(labels: np.ndarray | Tensor, size: int | None, flag: str,
                    split: str = "the split") -> np.ndarray:
    """Indices of a fixed, seeded, class-balanced subset of ``size`` examples (all when None):
    the classes take turns, each in a fixed random order, so every class gets size / classes
    examples while it has them."""
    labels = np.asarray(labels)
    if size is None:
        return np.arange(len(labels))
    subset_fits(size, len(labels), flag, split)
    rng = np.random.default_rng(SUBSET_SEED)
    ranks = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((labels, ranks))  # round-robin over the classes
    return np.sort(order[:size])


DATASETS: Registry[DatasetSource] = Registry(
    "dataset", discover=import_submodules("trainer.datasets", skip=("base", "batches")))


def register_dataset(source: DatasetSource) -> DatasetSource:
    return DATASETS.register(source.name, source)


def list_datasets() -> list[str]:
    return sorted(DATASETS.names())


def load_dataset(name: str, *, batch_size: int, seed: int = 0, data_dir: str | None = None,
                 image_size: int | None = None, num_workers: int = 0,
                 train_subset: int | None = None, val_subset: int | None = None,
                 options: dict[str, object] | None = None) -> Dataset:
    """``options``: a generated set's own (its sizes, delays), checked against its
    declaration; a set without options is loaded as it always was."""
    source = DATASETS.get(name)
    source.check_options(options)
    return source.load(batch_size=batch_size, seed=seed, data_dir=data_dir,
                       image_size=image_size, num_workers=num_workers,
                       train_subset=train_subset, val_subset=val_subset, **_given(options))


def resolve_data_dir(name: str, data_dir: str | None) -> str | None:
    """The absolute folder the named dataset is read from (None: it ships in the package). A
    folder the user names is the only one used: a missing or incomplete one is a DataError,
    never a fall-back to $CREDITSWEEP_DATA_DIR or a system copy."""
    return DATASETS.get(name).resolve(data_dir)


def split_sizes(name: str, data_dir: str | None,
                options: dict[str, object] | None = None) -> tuple[int, int]:
    """(training, validation) example counts, read cheaply; DataError if either is 0."""
    source = DATASETS.get(name)
    folder = source.resolve(data_dir)
    return _sizes(source, folder, options)


def _given(options: dict[str, object] | None) -> dict[str, object]:
    """``options=`` for a generated set's methods, only when there are any: a set read from
    files takes none."""
    return {"options": dict(options)} if options else {}


def _sizes(source: DatasetSource, folder: str | None,
           options: dict[str, object] | None = None) -> tuple[int, int]:
    return require_examples(source.name, folder or "the package",
                            source.split_sizes(folder, **_given(options)))


def check_subsets(name: str, data_dir: str | None, train_subset: int | None,
                  val_subset: int | None) -> None:
    """DataError unless each subset fits its split: found before any trial starts."""
    source = DATASETS.get(name)
    _check_subsets(source, split_sizes(name, data_dir), train_subset, val_subset)


def _check_subsets(source: DatasetSource, sizes: tuple[int, int], train_subset: int | None,
                   val_subset: int | None) -> None:
    subset_fits(train_subset, sizes[0], "--train-subset", f"{source.name}'s training split")
    subset_fits(val_subset, sizes[1], "--val-subset", f"{source.name}'s validation split")


def check_image_size_fits(name: str, data_dir: str | None, image_size: int | None,
                          train_subset: int | None = None,
                          val_subset: int | None = None) -> None:
    """DataError unless the resized training and validation images of an in-memory set fit
    in memory as float32 (an image size of 100000 would ask for terabytes)."""
    check_image_size(image_size)
    source = DATASETS.get(name)
    if source.in_memory:  # a set read batch by batch needs no count of its files
        _check_memory(source, split_sizes(name, data_dir), image_size, train_subset,
                      val_subset)


def _check_memory(source: DatasetSource, sizes: tuple[int, int], image_size: int | None,
                  train_subset: int | None, val_subset: int | None,
                  options: dict[str, object] | None = None) -> None:
    used = [min(subset or size, size) for subset, size in zip((train_subset, val_subset), sizes)]
    source.check_memory(image_size, sum(used), **_given(options))


def check_model_fits(name: str, archs: tuple[str, ...], image_size: int | None = None,
                     options: dict[str, object] | None = None) -> None:
    """UsageError unless each of ``archs`` can train on the named dataset (its inputs, under
    its ``options``, and its task), from declarations alone: nothing is read, so a training
    run refuses a model that cannot take the set before it loads anything."""
    from catalogue.architectures import architecture

    source = DATASETS.get(name)
    source.check_options(options)
    spec, task = source.input_spec(image_size, options), get_task(source.task)
    for arch in archs:
        declared = architecture(arch)
        declared.check_fits(name, spec, task)
        if spec.kind == "image":
            declared.check_image_size(spec.size, f"{name} images")


def check_dataset(name: str, data_dir: str | None, archs: tuple[str, ...] = (),
                  image_size: int | None = None, *, train_subset: int | None = None,
                  val_subset: int | None = None,
                  options: dict[str, object] | None = None) -> str | None:
    """Whether the named dataset can be loaded from ``data_dir``, cheaply (DataError if not):
    its options, folder, files, split sizes, subsets and the memory its examples take, and
    whether its inputs (images at ``image_size`` when resized) fit each of ``archs``. Returns
    the absolute folder it is read from (see ``resolve_data_dir``), to hand to every trial."""
    check_image_size(image_size)
    source = DATASETS.get(name)
    source.check_options(options)
    folder = source.resolve(data_dir)
    source.check(folder)
    sizes = _sizes(source, folder, options)
    _check_subsets(source, sizes, train_subset, val_subset)
    _check_memory(source, sizes, image_size, train_subset, val_subset, options)
    check_model_fits(name, archs, image_size, options)
    return folder
