"""Fashion-MNIST and MNIST from IDX files: the real Fashion-MNIST on small subsets, and tiny
crafted files for the layout, the search order and every kind of corruption."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import trainer
from search.cli import main
from trainer.datasets import DataError
from trainer.datasets.idx import DATA_DIR_ENV

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (DEBIAN / "t10k-labels-idx1-ubyte.gz").exists(),
                                   reason="apt-get install dataset-fashion-mnist")


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train=40, n_val=20, compress=True, **override) -> Path:
    """Four IDX files of random 28x28 images, labels cycling over the 10 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
             "train-labels-idx1-ubyte": np.arange(n_train) % 10,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_val, 28, 28)),
             "t10k-labels-idx1-ubyte": np.arange(n_val) % 10}
    for stem, array in files.items():
        data = override.get(stem, _idx(array))
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


@needs_fashion
def test_fashion_mnist_from_the_debian_package_trains_on_a_subset():
    data = trainer.load_dataset("fashion_mnist", batch_size=100, train_subset=1000,
                                val_subset=500)
    assert (data.train_size, data.val_size, data.image_size, data.in_channels) == (1000, 500,
                                                                                     28, 1)
    labels = np.concatenate([y.numpy() for _, y in data.train.batches(0)])
    assert np.bincount(labels).tolist() == [100] * 10  # class-balanced
    again = trainer.load_dataset("fashion_mnist", batch_size=100, train_subset=1000,
                                 val_subset=500, seed=5)
    x0 = next(iter(data.val.batches(0)))[0]
    assert (x0 == next(iter(again.val.batches(0)))[0]).all()  # fixed, whatever the seed
    result = trainer.train(dict(rule="backprop", arch="mlp", dataset="fashion_mnist",
                                train_subset=1000, val_subset=500, epochs=2, batch_size=100))
    assert result.status == "completed" and result.best_val_top1 > 0.6
    assert result.final["train_size"] == 1000 and result.final["val_size"] == 500


def test_mnist_from_data_dir_and_from_the_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "a" / "mnist")  # a folder named after the set, gzipped
    write_mnist(tmp_path / "b", compress=False)  # files directly, uncompressed
    data = trainer.load_dataset("mnist", batch_size=8, data_dir=str(tmp_path / "a"))
    assert (data.train_size, data.val_size, data.num_classes) == (40, 20, 10)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "b"))
    data = trainer.load_dataset("mnist", batch_size=8, train_subset=20, val_subset=10)
    assert (data.train_size, data.val_size) == (20, 10)
    labels = np.concatenate([y.numpy() for _, y in data.train.batches(0)])
    assert np.bincount(labels).tolist() == [2] * 10


CORRUPT = {
    "bad magic number": {"t10k-labels-idx1-ubyte": struct.pack(">HBBI", 0, 0x0D, 1, 20)
                         + bytes(20)},
    "truncated": {"train-images-idx3-ubyte": _idx(np.zeros((40, 28, 28)))[:-100]},
    "longer than its header says": {"train-labels-idx1-ubyte": _idx(np.arange(40) % 10)
                                    + b"\x00"},
    "holds 40 images but": {"train-labels-idx1-ubyte": _idx(np.arange(39) % 10)},
    "is not a class 0-9": {"t10k-labels-idx1-ubyte": _idx(np.full(20, 12))},
    "not 28x28": {"t10k-images-idx3-ubyte": _idx(np.zeros((20, 32, 32)))},
    "shorter than its header": {"train-labels-idx1-ubyte": b"\x00\x00"},
}


@pytest.mark.parametrize("problem", sorted(CORRUPT))
def test_corrupt_files_are_one_line_errors(problem, tmp_path, capsys):
    write_mnist(tmp_path, **CORRUPT[problem])
    with pytest.raises(DataError, match=problem):
        trainer.load_dataset("mnist", batch_size=8, data_dir=str(tmp_path))
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0]


def test_a_truncated_gzip_and_missing_files(tmp_path, monkeypatch):
    folder = write_mnist(tmp_path / "gz")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="corrupt IDX file .*EOFError"):
        trainer.load_dataset("mnist", batch_size=8, data_dir=str(folder))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:  # a named folder: that folder, and what it lacks
        trainer.load_dataset("mnist", batch_size=8, data_dir=str(tmp_path / "empty"))
    message = str(info.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(tmp_path / "empty"),
                 "mnist/"):
        assert name in message
    assert DATA_DIR_ENV not in message  # never consulted when a folder is named
    fashion = trainer.datasets.DATASETS.get("fashion_mnist")
    monkeypatch.setattr(fashion, "system_dir", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        fashion.check(None)
    assert "--data-dir" in str(info.value) and DATA_DIR_ENV in str(info.value)


def test_subset_larger_than_the_split_is_refused(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(DataError, match="--train-subset 41: mnist's training split has 40 "
                                        "examples"):
        trainer.load_dataset("mnist", batch_size=8, data_dir=str(tmp_path), train_subset=41)
