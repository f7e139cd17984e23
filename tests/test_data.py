"""Datasets: the embedded digits, and the CIFAR-10 / ImageNet folder loaders on tiny folders."""

import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

import trainer
from catalogue.errors import UnknownName
from trainer.datasets import DataError, digits_arrays


def test_digits_is_embedded_with_fixed_split():
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8) and images.max() == 16
    assert sorted(set(labels.tolist())) == list(range(10))
    a = trainer.load_dataset("digits", batch_size=100, seed=1)
    b = trainer.load_dataset("digits", batch_size=100, seed=2)
    assert (a.train_size, a.val_size) == (1438, 359)
    xa, ya = next(iter(a.val.batches(0)))
    xb, yb = next(iter(b.val.batches(0)))
    torch.testing.assert_close(xa, xb)  # the split does not depend on the training seed
    assert xa.shape == (359, 1, 8, 8)
    train_x = torch.cat([x for x, _ in a.train.batches(0)])
    assert abs(float(train_x.mean())) < 1e-4  # standardized with training statistics
    first_a = next(iter(a.train.batches(0)))[1]
    assert not torch.equal(first_a, next(iter(a.train.batches(1)))[1])  # reshuffled per epoch


def _write_cifar(root, n_per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    return folder


def test_cifar10_folder_loads_and_trains(tmp_path):
    _write_cifar(tmp_path)
    data = trainer.load_dataset("cifar10", batch_size=8, data_dir=str(tmp_path))
    assert (data.train_size, data.val_size, data.image_size, data.in_channels) == (30, 6, 32, 3)
    x, y = next(iter(data.train.batches(0)))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long
    result = trainer.train(dict(rule="feedback_alignment", arch="resnet8", dataset="cifar10",
                                data_dir=str(tmp_path), epochs=1, batch_size=8))
    assert result.status == "completed" and len(result.history) == 1


def test_cifar10_errors_name_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="needs --data-dir"):
        trainer.load_dataset("cifar10", batch_size=8)
    with pytest.raises(DataError, match="expected cifar-10-batches-py/"):
        trainer.load_dataset("cifar10", batch_size=8, data_dir=str(tmp_path / "missing"))
    folder = _write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="malformed CIFAR-10 file .*data_batch_3"):
        trainer.load_dataset("cifar10", batch_size=8, data_dir=str(tmp_path))
    (folder / "data_batch_2").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 file .*data_batch_2"):
        trainer.load_dataset("cifar10", batch_size=8, data_dir=str(tmp_path))


def _write_image_folder(root, classes=("cat", "dog", "eel"), per_class=3, size=20):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) \
                    .save(d / f"{i}.png")


@pytest.mark.slow
def test_imagenet_folder_loads_and_trains(tmp_path):
    _write_image_folder(tmp_path)
    data = trainer.load_dataset("imagenet", batch_size=4, data_dir=str(tmp_path), image_size=16)
    assert (data.num_classes, data.train_size, data.val_size) == (3, 9, 9)
    subset = trainer.load_dataset("imagenet", batch_size=4, data_dir=str(tmp_path),
                                  image_size=16, train_subset=6, val_subset=3)
    assert (subset.train_size, subset.val_size) == (6, 3)
    labels = torch.cat([y for _, y in subset.train.batches(0)]).tolist()
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]  # class-balanced
    x, y = next(iter(data.val.batches(0)))
    assert x.shape == (4, 3, 16, 16)
    result = trainer.train(dict(rule="information_alignment", arch="resnet18",
                                dataset="imagenet", data_dir=str(tmp_path), image_size=16,
                                epochs=1, batch_size=4))
    assert result.status == "completed"
    assert result.final["diagnostics"]["layers"]["fc"]["norm_ratio"] > 0


def test_imagenet_errors(tmp_path):
    with pytest.raises(DataError, match="needs --data-dir"):
        trainer.load_dataset("imagenet", batch_size=4)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no val/ folder"):
        trainer.load_dataset("imagenet", batch_size=4, data_dir=str(tmp_path))
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="malformed image folder"):  # class folders, no images
        trainer.load_dataset("imagenet", batch_size=4, data_dir=str(tmp_path))
    with pytest.raises(UnknownName,
                       match="unknown dataset 'nope'; valid: cifar10, delayed_match, digits"):
        trainer.load_dataset("nope", batch_size=4)


class _Exploit:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cifar_batch_does_not_run_code(tmp_path):
    folder = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    entry = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 6,
             b"payload": _Exploit(marker)}
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    with pytest.raises(DataError, match="data_batch_2.*asks for (posix|os).system.*refused"):
        trainer.load_dataset("cifar10", batch_size=8, data_dir=str(tmp_path))
    assert not marker.exists()
    # Batches pickled by Python 2 (protocol 2, numpy 1's module names) still load.
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"labels": [1] * 6}, fh,
                    protocol=2)
    assert trainer.load_dataset("cifar10", batch_size=8, data_dir=str(tmp_path)).train_size == 30


def _garbage_cifar(root):
    folder = _write_cifar(root)
    with open(folder / "data_batch_4", "wb") as fh:  # a valid pickle, labels out of range
        pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"labels": [12] * 6}, fh)
    return "cifar10", "data_batch_4.*labels must be 0..9"


def _corrupt_jpeg(root):
    _write_image_folder(root)
    (root / "val" / "dog" / "0.png").unlink()
    (root / "val" / "dog" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 40)
    return "imagenet", r"cannot decode image .*val/dog/0\.jpg"


def _empty_class(root):
    _write_image_folder(root)
    for image in (root / "train" / "eel").iterdir():
        image.unlink()
    return "imagenet", "malformed image folder .*train.*eel"


@pytest.mark.parametrize("make", [_garbage_cifar, _corrupt_jpeg, _empty_class])
def test_data_that_is_not_data_is_one_line_before_anything_is_written(tmp_path, capsys, make):
    """Each of these used to pass the layout check; every trial then crashed, was retried, and
    the sweep exited 0."""
    from search.cli import main

    data = tmp_path / "data"
    dataset, expected = make(data)
    db = tmp_path / "s.db"
    assert main(["sweep", "--arch", "mlp", "--dataset", dataset, "--data-dir", str(data),
                 "--trials", "1", "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("creditsweep: error:"), err
    assert re.search(expected, err[0]), err[0]
    assert not db.exists()
