"""ImageNet, or any image-classification folder tree: train/<class>/*, val/<class>/*."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from trainer.datasets.base import (DataError, Dataset, DatasetSource, balanced_subset,
                                   check_image_size, register_dataset)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


class ImageNet(DatasetSource):
    name = "imagenet"
    image_size = DEFAULT_SIZE
    in_channels = 3
    in_memory = False  # read from disk batch by batch
    summary = "an ImageFolder tree in --data-dir: train/<class>/*, val/<class>/*"

    def resolve(self, data_dir: str | None) -> str:
        if not data_dir:
            raise DataError("imagenet needs --data-dir: a folder with train/ and val/, "
                            "one sub-folder of images per class")
        root = Path(data_dir).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"imagenet: --data-dir {root} does not exist or is not a folder: "
                            "expected train/ and val/ with one sub-folder of images per class")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise DataError(f"no {split}/ folder in {root}: expected train/ and val/ with "
                                "one sub-folder of images per class")
        return str(root)

    def root(self, data_dir: str | None) -> Path:
        return Path(self.resolve(data_dir))

    def check(self, data_dir: str | None) -> None:
        """The layout, the same classes in both splits, no empty class, and one image per class
        and split decoded: a folder of non-images fails here in one line, not in every trial."""
        for folder in self._splits(self.root(data_dir)).values():
            first: dict[int, str] = {}
            for path, target in folder.samples:
                first.setdefault(target, path)
            for path in first.values():
                _decode(path)

    def split_sizes(self, data_dir: str | None) -> tuple[int, int]:
        """The image files that loading would see, in train/ and val/."""
        splits = self._splits(self.root(data_dir))
        return len(splits["train"].samples), len(splits["val"].samples)

    def _splits(self, root: Path) -> dict[str, Any]:
        from torchvision import datasets

        splits = {split: self._folder(datasets, root / split) for split in ("train", "val")}
        if splits["train"].classes != splits["val"].classes:
            raise DataError(f"train/ and val/ in {root} name different classes")
        return splits

    @staticmethod
    def _folder(datasets: Any, path: Path, transform: Any = None) -> Any:
        try:
            return datasets.ImageFolder(str(path), transform=transform)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"malformed image folder {path}: "
                            f"{str(exc).splitlines()[0][:200]}") from None

    def load(self, *, batch_size: int, seed: int, data_dir: str | None,
             image_size: int | None, num_workers: int, train_subset: int | None = None,
             val_subset: int | None = None) -> Dataset:
        import torch

        from trainer.datasets.batches import LoaderBatches

        from torchvision import datasets, transforms

        check_image_size(image_size)
        root = self.root(data_dir)
        size = image_size or DEFAULT_SIZE
        normalize = transforms.Normalize(MEAN, STD)
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size),
                                       transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                       normalize])
        val_tf = transforms.Compose([transforms.Resize(int(round(size * 256 / 224))),
                                     transforms.CenterCrop(size), transforms.ToTensor(),
                                     normalize])
        splits = {}
        for split, tf in (("train", train_tf), ("val", val_tf)):
            splits[split] = self._folder(datasets, root / split, tf)
        if splits["train"].classes != splits["val"].classes:
            raise DataError(f"train/ and val/ in {root} name different classes")
        classes = len(splits["train"].classes)
        for split, subset, flag, name in (("train", train_subset, "--train-subset", "training"),
                                          ("val", val_subset, "--val-subset", "validation")):
            if subset is not None:
                keep = balanced_subset(splits[split].targets, subset, flag,
                                       f"imagenet's {name} split")
                splits[split] = torch.utils.data.Subset(splits[split], keep.tolist())

        def loader(split: str, shuffle: bool) -> Callable[[int], torch.utils.data.DataLoader]:
            def make(epoch: int) -> torch.utils.data.DataLoader:
                gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
                return torch.utils.data.DataLoader(
                    splits[split], batch_size=batch_size, shuffle=shuffle, generator=gen,
                    num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                    persistent_workers=False)
            return make

        return Dataset(self.name, classes, 3, size,
                       LoaderBatches(loader("train", True)), LoaderBatches(loader("val", False)),
                       len(splits["train"]), len(splits["val"]))


def _decode(path: str) -> None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.convert("RGB").load()
    except Exception as exc:  # PIL raises many types for a file that is not an image
        raise DataError(f"cannot decode image {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


register_dataset(ImageNet())
