"""Which folder a dataset is read from, and the cheap checks a sweep runs before any trial:
split sizes from headers, subsets that fit, image sizes that fit in memory, and IDX files
whose headers or sizes lie. All on real files written here."""

import gzip
import math
import resource
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from test_data import _write_cifar, _write_image_folder
from test_idx import _idx, needs_fashion, write_mnist

import trainer
from search.cli import main
from trainer.datasets import (DataError, check_dataset, check_image_size_fits, check_subsets,
                              resolve_data_dir, split_sizes)
from trainer.datasets.base import memory_cap
from trainer.datasets.idx import DATA_DIR_ENV

GiB = 2**30


def test_a_relative_data_dir_resolves_to_the_absolute_folder_every_process_reads(
        tmp_path, monkeypatch):
    write_mnist(tmp_path / "data" / "mnist", n_train=40)
    write_mnist(tmp_path / "other", n_train=30)  # what a fall-back would find instead
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "other"))
    monkeypatch.chdir(tmp_path)
    folder = resolve_data_dir("mnist", "data")
    assert folder == str((tmp_path / "data" / "mnist").resolve())  # the sub-folder with files
    assert check_dataset("mnist", "data", ("mlp",), None) == folder  # as search/specs calls it
    before = trainer.load_dataset("mnist", batch_size=8, data_dir="data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a Ray worker's working directory
    after = trainer.load_dataset("mnist", batch_size=8, data_dir=folder)
    assert (after.train_size, after.val_size) == (40, 20)
    x0, y0 = next(iter(before.val.batches(0)))
    x1, y1 = next(iter(after.val.batches(0)))
    assert np.array_equal(x0.numpy(), x1.numpy()) and np.array_equal(y0.numpy(), y1.numpy())
    # The relative name, from the wrong directory, is refused, not replaced by $DATA_DIR.
    with pytest.raises(DataError, match=f"{tmp_path / 'elsewhere' / 'data'} does not exist"):
        trainer.load_dataset("mnist", batch_size=8, data_dir="data")
    assert resolve_data_dir("mnist", None) == str((tmp_path / "other").resolve())
    assert resolve_data_dir("digits", None) is None  # ships inside the package


def test_a_named_folder_that_is_missing_never_falls_back(tmp_path, monkeypatch, capsys):
    write_mnist(tmp_path / "good")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "good"))
    missing = tmp_path / "no" / "such" / "folder"
    for name in ("mnist", "fashion_mnist"):  # fashion_mnist also has a system copy
        with pytest.raises(DataError, match=f"{name}: --data-dir {missing} does not exist"):
            resolve_data_dir(name, str(missing))
        with pytest.raises(DataError, match=str(missing)):
            trainer.load_dataset(name, batch_size=8, data_dir=str(missing))
        with pytest.raises(DataError, match=str(missing)):
            check_dataset(name, str(missing))
    assert main(["train", "--dataset", "fashion_mnist", "--data-dir", str(missing),
                 "--epochs", "1", "--train-subset", "100", "--val-subset", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0], err
    for name, match in (("cifar10", "no CIFAR-10 batches in .*does not exist"),
                        ("imagenet", "does not exist")):
        with pytest.raises(DataError, match=match):
            resolve_data_dir(name, str(missing))


def test_an_incomplete_folder_names_what_is_missing(tmp_path, monkeypatch):
    write_mnist(tmp_path / "good")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "good"))
    folder = write_mnist(tmp_path / "data" / "mnist", compress=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        resolve_data_dir("mnist", str(tmp_path / "data"))
    message = str(info.value)
    assert f"{folder} lacks t10k-labels-idx1-ubyte[.gz]" in message
    assert "train-images" not in message and "t10k-images" not in message
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        trainer.load_dataset("mnist", batch_size=8, data_dir=str(tmp_path / "data"))

    cifar = _write_cifar(tmp_path / "cifar")
    assert resolve_data_dir("cifar10", str(tmp_path / "cifar")) == str(cifar)
    (cifar / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"missing CIFAR-10 file \S*data_batch_4$"):
        resolve_data_dir("cifar10", str(tmp_path / "cifar"))
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no val/ folder in"):
        resolve_data_dir("imagenet", str(tmp_path / "images"))


def _write(path: Path, data: bytes, compress: bool) -> Path:
    path = path.with_name(path.name + ".gz") if compress else path
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_an_idx_header_whose_size_overflows_is_refused(tmp_path, compress):
    shape = (2**31, 2**31, 4)
    assert np.prod(shape, dtype=np.int64) == 0  # what the old check computed: "0 bytes"
    folder = write_mnist(tmp_path, compress=compress)
    (folder / ("train-images-idx3-ubyte" + (".gz" if compress else ""))).unlink()
    header = struct.pack(">HBB3I", 0, 0x08, 3, *shape)
    _write(folder / "train-images-idx3-ubyte", header, compress)
    expected = f"declares 2147483648x2147483648x4 = {math.prod(shape):,} bytes, larger than"
    with pytest.raises(DataError, match=expected):
        split_sizes("mnist", str(folder))
    with pytest.raises(DataError, match=expected):
        check_dataset("mnist", str(folder))
    with pytest.raises(DataError, match=expected):
        trainer.load_dataset("mnist", batch_size=8, data_dir=str(folder))


def _measured(call) -> tuple[str, float, int, int]:
    """The DataError's message, the seconds, the peak bytes Python allocated and the growth
    of the process's peak resident memory while ``call`` ran."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            call()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
    return str(info.value), seconds, peak, grown


def _sparse(path: Path, header: bytes, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(size)  # a hole: no disk used, but 2 GiB to read


@pytest.mark.parametrize("case", ["longer than the header says", "header matches the size"])
def test_a_huge_raw_idx_file_is_refused_from_its_size_without_reading_it(tmp_path, case):
    folder = write_mnist(tmp_path, compress=False)
    if case == "longer than the header says":
        path = folder / "train-images-idx3-ubyte"
        _sparse(path, struct.pack(">HBB3I", 0, 0x08, 3, 40, 28, 28), 2 * GiB)
        expected = "longer than its header says (2147483648 bytes, header says 31376)"
    else:  # a consistent file, but far beyond any IDX file of this set
        path = folder / "train-labels-idx1-ubyte"
        _sparse(path, struct.pack(">HBBI", 0, 0x08, 1, 2 * GiB - 8), 2 * GiB)
        expected = "larger than any IDX file of this set"
    for call in (lambda: check_dataset("mnist", str(folder)),
                 lambda: trainer.load_dataset("mnist", batch_size=8, data_dir=str(folder))):
        message, seconds, peak, grown = _measured(call)
        assert str(path) in message and expected in message
        assert seconds < 2, seconds
        assert peak < 50 * 2**20, peak  # reading the file would allocate 2 GiB
        assert grown < GiB // 2, grown


def test_trailing_data_in_a_gzipped_idx_file_is_found_without_inflating_it(tmp_path):
    folder = write_mnist(tmp_path)
    labels = _idx(np.arange(40) % 10) + bytes(100 * 2**20)  # 100 MiB of zeros after the data
    _write(folder / "train-labels-idx1-ubyte", labels, compress=True)
    message, seconds, peak, _ = _measured(lambda: check_dataset("mnist", str(folder)))
    assert "train-labels-idx1-ubyte.gz: longer than its header says" in message
    assert peak < 10 * 2**20, peak  # only the declared bytes and one more were inflated


@pytest.mark.parametrize("split", ["training", "validation"])
def test_a_split_without_images_is_refused(tmp_path, split):
    sizes = {"n_train": 0} if split == "training" else {"n_val": 0}
    folder = write_mnist(tmp_path, **sizes)
    expected = f"mnist: {folder} holds 0 {split} images"
    for call in (lambda: split_sizes("mnist", str(folder)),
                 lambda: check_dataset("mnist", str(folder)),
                 lambda: trainer.load_dataset("mnist", batch_size=8, data_dir=str(folder))):
        with pytest.raises(DataError, match=expected):
            call()


def test_split_sizes_are_read_cheaply_and_agree_with_loading(tmp_path):
    folder = write_mnist(tmp_path / "mnist", n_train=50, n_val=30, compress=False)
    assert split_sizes("mnist", str(folder)) == (50, 30)
    assert split_sizes("digits", None) == (1438, 359)
    _write_cifar(tmp_path / "cifar")
    assert split_sizes("cifar10", str(tmp_path / "cifar")) == (30, 6)
    _write_image_folder(tmp_path / "images", per_class=3)
    assert split_sizes("imagenet", str(tmp_path / "images")) == (9, 9)
    (tmp_path / "images" / "train" / "cat" / "notes.txt").write_text("not an image")
    assert split_sizes("imagenet", str(tmp_path / "images")) == (9, 9)  # as loading counts
    for name, data_dir in (("mnist", str(folder)), ("digits", None),
                           ("cifar10", str(tmp_path / "cifar"))):
        data = trainer.load_dataset(name, batch_size=8, data_dir=data_dir)
        assert split_sizes(name, data_dir) == (data.train_size, data.val_size)


def test_a_subset_larger_than_its_split_is_refused_before_loading(tmp_path):
    with pytest.raises(DataError,
                       match="^--train-subset 100000: digits's training split has 1438 "
                             "examples$"):
        check_subsets("digits", None, 100000, None)
    folder = write_mnist(tmp_path / "mnist")
    check_subsets("mnist", str(folder), 40, 20)  # the whole split is a subset that fits
    with pytest.raises(DataError, match="--val-subset 21: mnist's validation split has 20"):
        check_subsets("mnist", str(folder), 40, 21)
    with pytest.raises(DataError, match="--train-subset 41: mnist's training split has 40"):
        check_dataset("mnist", str(folder), ("mlp",), None, train_subset=41)
    with pytest.raises(DataError, match="--train-subset 0: mnist's training split"):
        check_subsets("mnist", str(folder), 0, None)
    _write_image_folder(tmp_path / "images", per_class=3)
    with pytest.raises(DataError, match="--train-subset 10: imagenet's training split has 9"):
        check_dataset("imagenet", str(tmp_path / "images"), train_subset=10)


@needs_fashion
def test_fashion_mnist_subsets_are_checked_from_the_headers():
    assert split_sizes("fashion_mnist", None) == (60000, 10000)
    with pytest.raises(DataError, match="^--train-subset 100000: fashion_mnist's training "
                                        "split has 60000 examples$"):
        check_subsets("fashion_mnist", None, 100000, None)


def test_an_image_size_beyond_memory_is_refused_before_anything_is_allocated(tmp_path):
    needed = 1797 * 100000**2 * 4
    with pytest.raises(DataError, match=r"^--image-size 100000: 1,797 digits images at "
                                        r"100000x100000 need 65\.4 TiB of memory"):
        check_image_size_fits("digits", None, 100000)
    assert needed > memory_cap()
    start = time.perf_counter()
    with pytest.raises(DataError, match="--image-size 100000"):
        trainer.load_dataset("digits", batch_size=8, image_size=100000)
    with pytest.raises(DataError, match="--image-size 100000"):
        check_dataset("digits", None, image_size=100000)
    assert time.perf_counter() - start < 2
    # The subsets count: a size whose 200 images fill the cap fits 100, not all 1,797.
    side = math.isqrt(memory_cap() // (200 * 4))
    check_image_size_fits("digits", None, side, 50, 50)
    with pytest.raises(DataError, match=f"--image-size {side}: 1,797 digits images"):
        check_image_size_fits("digits", None, side)
    folder = write_mnist(tmp_path / "mnist")
    with pytest.raises(DataError, match="--image-size 100000: 60 mnist images"):
        check_image_size_fits("mnist", str(folder), 100000)
    for size in (0, -3):
        with pytest.raises(DataError, match=f"--image-size {size}: must be at least 1"):
            check_image_size_fits("digits", None, size)
    check_image_size_fits("digits", None, 64)
    _write_image_folder(tmp_path / "images")
    check_image_size_fits("imagenet", str(tmp_path / "images"), 100000)  # read batch by batch
    with pytest.raises(DataError, match="must be at least 1"):
        check_dataset("imagenet", str(tmp_path / "images"), image_size=0)
