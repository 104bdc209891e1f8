"""Datasets behind one registry: ``create_dataset(name, split)`` -> :class:`ImageDataset`.

``fashion-mnist`` is an embedded 10k/2k subset that works offline with no download (the default
of every command). The others read the real on-disk formats: IDX, CIFAR python batches (through a
restricted unpickler), STL-10 binaries, SVHN .mat files and ImageFolder directories.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from lpla.data.base import ArrayDataset, ImageDataset
from lpla.errors import LplaError
from lpla.registry import Registry

DatasetFactory = Callable[..., ImageDataset]
DATASETS: Registry[DatasetFactory] = Registry("dataset")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def default_root(name: str) -> Path:
    base = os.environ.get("LPLA_DATA")
    return Path(base) / name if base else Path.home() / ".cache" / "lpla" / "data" / name


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise LplaError(f"dataset {name} has no split {split!r}; choose one of: {', '.join(allowed)}")


@lru_cache(maxsize=2)
def _fashion_subset(split: str) -> ArrayDataset:
    with resources.files("lpla.data.assets").joinpath("fashion_mnist_subset.npz").open("rb") as fh, \
            np.load(fh, allow_pickle=False) as z:
        images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    return ArrayDataset(images, labels, name="fashion-mnist", split=split, num_classes=10,
                        source="embedded Fashion-MNIST subset (MIT, Zalando Research)")


@DATASETS.register("fashion-mnist", "embedded Fashion-MNIST subset: 10,000 train / 2,000 test, 1x28x28, offline")
def fashion_mnist(split: str = "train", root: str | None = None, download: bool = False,
                  image_size: int | None = None) -> ImageDataset:
    _check_split("fashion-mnist", split, ("train", "test"))
    return _fashion_subset(split)


@DATASETS.register("fashion-mnist-full", "full Fashion-MNIST 60,000/10,000 from IDX files (Debian dataset-fashion-mnist or --data-root)")
def fashion_mnist_full(split: str = "train", root: str | None = None, download: bool = False,
                       image_size: int | None = None) -> ImageDataset:
    from lpla.data.idx import read_idx

    _check_split("fashion-mnist-full", split, ("train", "test"))
    base = Path(root) if root else DEBIAN_FASHION
    prefix = "train" if split == "train" else "t10k"
    files = {}
    for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
        found = [base / (stem + ext) for ext in (".gz", "") if (base / (stem + ext)).is_file()]
        if not found:
            raise LplaError(f"Fashion-MNIST IDX file {stem}[.gz] not found under {base}; "
                            "install Debian's dataset-fashion-mnist or pass --data-root DIR")
        files[kind] = found[0]
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    return ArrayDataset(images, labels, name="fashion-mnist-full", split=split, num_classes=10, source=str(base))


@DATASETS.register("digits", "scikit-learn's handwritten digits: 1,497 train / 300 test, 1x8x8, offline")
def digits(split: str = "train", root: str | None = None, download: bool = False,
           image_size: int | None = None) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split("digits", split, ("train", "test"))
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=300, stratify=d.target, random_state=0)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return ArrayDataset(images[idx], d.target[idx], name="digits", split=split, num_classes=10,
                        source="sklearn.datasets.load_digits (seeded 1497/300 split)")


def _torchvision_download(cls_name: str, root: Path, **kwargs: object) -> None:
    import torchvision.datasets as tvd

    getattr(tvd, cls_name)(str(root), download=True, **kwargs)


def _cifar(name: str, folder: str, files: dict[str, list[str]], label_key: str, n_cls: int,
           split: str, root: str | None, download: bool) -> ImageDataset:
    from lpla.data.safe_pickle import load_cifar_batch

    _check_split(name, split, tuple(files))
    base = Path(root) if root else default_root(name)
    if download and not (base / folder).is_dir():
        _torchvision_download("CIFAR10" if name == "cifar10" else "CIFAR100", base)
    if not (base / folder).is_dir():
        raise LplaError(f"{name} not found: expected {base / folder}; pass --download or --data-root DIR")
    data, labels = [], []
    for f in files[split]:
        batch = load_cifar_batch(base / folder / f)
        try:
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (KeyError, ValueError) as exc:
            raise LplaError(f"{base / folder / f} is not a {name} batch ({exc})") from None
    return ArrayDataset(np.concatenate(data), np.concatenate(labels), name=name, split=split,
                        num_classes=n_cls, source=str(base))


@DATASETS.register("cifar10", "CIFAR-10 (torchvision on-disk format; --download or --data-root), 3x32x32")
def cifar10(split: str = "train", root: str | None = None, download: bool = False,
            image_size: int | None = None) -> ImageDataset:
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    return _cifar("cifar10", "cifar-10-batches-py", files, "labels", 10, split, root, download)


@DATASETS.register("cifar100", "CIFAR-100 fine labels (torchvision on-disk format), 3x32x32")
def cifar100(split: str = "train", root: str | None = None, download: bool = False,
             image_size: int | None = None) -> ImageDataset:
    return _cifar("cifar100", "cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100,
                  split, root, download)


@DATASETS.register("stl10", "STL-10 binaries (train/test/unlabeled), 3x96x96")
def stl10(split: str = "train", root: str | None = None, download: bool = False,
          image_size: int | None = None) -> ImageDataset:
    _check_split("stl10", split, ("train", "test", "unlabeled"))
    base = Path(root) if root else default_root("stl10")
    if download and not (base / "stl10_binary").is_dir():
        _torchvision_download("STL10", base, split="train")
    folder = base / "stl10_binary"
    x_path = folder / f"{split}_X.bin"
    if not x_path.is_file():
        raise LplaError(f"stl10 not found: expected {x_path}; pass --download or --data-root DIR")
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise LplaError(f"{x_path} is truncated ({raw.size} bytes is not a whole number of 3x96x96 images)")
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # stored column-major
    if split == "unlabeled":
        labels = np.full(len(images), -1, dtype=np.int64)
    else:
        labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(labels) != len(images):
            raise LplaError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return ArrayDataset(np.ascontiguousarray(images), labels, name="stl10", split=split, num_classes=10,
                        source=str(base))


@DATASETS.register("svhn", "SVHN cropped digits (.mat files), 3x32x32")
def svhn(split: str = "train", root: str | None = None, download: bool = False,
         image_size: int | None = None) -> ImageDataset:
    from scipy.io import loadmat

    _check_split("svhn", split, ("train", "test"))
    base = Path(root) if root else default_root("svhn")
    path = base / f"{split}_32x32.mat"
    if download and not path.is_file():
        _torchvision_download("SVHN", base, split=split)
    if not path.is_file():
        raise LplaError(f"svhn not found: expected {path}; pass --download or --data-root DIR")
    try:
        mat = loadmat(path)
        images = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)
        labels = mat["y"].astype(np.int64).reshape(-1) % 10  # the files label digit 0 as 10
    except (KeyError, ValueError, OSError) as exc:
        raise LplaError(f"{path} is not an SVHN .mat file ({exc})") from None
    return ArrayDataset(np.ascontiguousarray(images), labels, name="svhn", split=split, num_classes=10,
                        source=str(base))


@DATASETS.register("imagefolder", "any ImageFolder directory (root/<class>/<image>), decoded lazily per batch")
def imagefolder(split: str = "train", root: str | None = None, download: bool = False,
                image_size: int | None = None) -> ImageDataset:
    from lpla.data.folder import FolderDataset

    if root is None:
        raise LplaError("dataset imagefolder needs --data-root DIR (a folder of class sub-folders)")
    return FolderDataset(Path(root), split=split, image_size=image_size or 32)


def create_dataset(name: str, split: str = "train", root: str | None = None, download: bool = False,
                   image_size: int | None = None) -> ImageDataset:
    """The dataset ``name`` (see ``lpla list datasets``), split ``train`` or ``test``."""
    if root is not None and not Path(root).exists() and not download:
        raise LplaError(f"data root not found: {root}")
    return DATASETS.get(name)(split=split, root=root, download=download, image_size=image_size)


def list_datasets() -> list[str]:
    return DATASETS.names()
