"""Datasets behind one registry: ``create_dataset(name, split)`` -> :class:`ImageDataset`.

``fashion-mnist`` is an embedded 10k/2k subset that works offline with no download (the default
of every command). The others read the real on-disk formats: IDX (``fashion-mnist-full``),
CIFAR python batches through a restricted unpickler, STL-10 binaries, SVHN .mat files and
ImageFolder directories; ``digits`` comes with scikit-learn. docs/datasets.md describes each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from lpla.data.base import ArrayDataset, ImageDataset
from lpla.data.formats import check_split
from lpla.errors import LplaError
from lpla.registry import Registry

DatasetFactory = Callable[..., ImageDataset]
DATASETS: Registry[DatasetFactory] = Registry("dataset")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_ASSET = "fashion_mnist_subset.npz"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TEST_SIZE = 300
DIGITS_SPLIT_SEED = 0


def default_root(name: str) -> Path:
    """Where ``name``'s files live without ``--data-root``: ``$LPLA_DATA/<name>`` or the cache."""
    base = os.environ.get("LPLA_DATA")
    return Path(base) / name if base else Path.home() / ".cache" / "lpla" / "data" / name


def _describe(ds: ImageDataset, classes: tuple[str, ...], **extra: str) -> ImageDataset:
    """Attach class names (attribute and ``info.extra["classes"]`` as JSON) and provenance."""
    ds.classes = tuple(classes)
    meta = dict(ds.info.extra)
    if classes:
        meta["classes"] = json.dumps(list(classes))
    meta.update(extra)
    ds.info = replace(ds.info, extra=meta)
    return ds


# ---- Fashion-MNIST ---------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _fashion_subset(split: str) -> ImageDataset:
    asset = resources.files("lpla.data.assets").joinpath(FASHION_ASSET)
    try:
        with asset.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    except (OSError, KeyError, ValueError) as exc:  # a broken install, not a user mistake
        raise LplaError(
            f"the embedded Fashion-MNIST subset is missing or corrupt ({exc}); reinstall lpla"
        ) from None
    ds = ArrayDataset(
        images,
        labels,
        name="fashion-mnist",
        split=split,
        num_classes=10,
        source="embedded Fashion-MNIST subset (Zalando Research, MIT licence)",
    )
    return _describe(ds, FASHION_CLASSES, subset="1,000 train / 200 test images per class, seed 0")


@DATASETS.register(
    "fashion-mnist", "embedded Fashion-MNIST subset: 10,000 train / 2,000 test, 1x28x28, offline"
)
def fashion_mnist(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    check_split("fashion-mnist", split, ("train", "test"))
    return _fashion_subset(split)


def _find_idx(base: Path, stem: str) -> Path:
    for candidate in (base / f"{stem}.gz", base / stem):
        if candidate.is_file():
            return candidate
    raise LplaError(
        f"Fashion-MNIST file {stem}[.gz] not found under {base}; install Debian's package "
        "(apt-get install dataset-fashion-mnist) or pass --data-root DIR holding the IDX files"
    )


@lru_cache(maxsize=2)
def _fashion_full(base: Path, split: str) -> ImageDataset:
    from lpla.data.idx import read_idx

    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(base, f"{prefix}-images-idx3-ubyte"), ndim=3)
    labels = read_idx(_find_idx(base, f"{prefix}-labels-idx1-ubyte"), ndim=1)
    if images.dtype != np.uint8 or len(images) != len(labels):
        raise LplaError(
            f"{base}: {len(images)} {images.dtype} images but {len(labels)} labels; "
            "are these Fashion-MNIST files?"
        )
    if labels.size and labels.max() > 9:
        raise LplaError(f"{base}: Fashion-MNIST labels must lie in 0..9, found {int(labels.max())}")
    ds = ArrayDataset(
        images, labels, name="fashion-mnist-full", split=split, num_classes=10, source=str(base)
    )
    return _describe(ds, FASHION_CLASSES)


@DATASETS.register(
    "fashion-mnist-full",
    "full Fashion-MNIST 60,000/10,000, 1x28x28, from IDX files (Debian dataset-fashion-mnist or "
    "--data-root)",
)
def fashion_mnist_full(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    check_split("fashion-mnist-full", split, ("train", "test"))
    return _fashion_full(Path(root).resolve() if root else DEBIAN_FASHION, split)


# ---- scikit-learn digits ---------------------------------------------------------------------
def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified train/test split of sklearn's 1,797 digits (seed 0, 300 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train, test = train_test_split(
        np.arange(len(target)),
        test_size=DIGITS_TEST_SIZE,
        stratify=target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {"train": np.sort(train), "test": np.sort(test)}


@DATASETS.register(
    "digits", "scikit-learn's handwritten digits: 1,497 train / 300 test, 1x8x8, offline"
)
def digits(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    from sklearn.datasets import load_digits

    check_split("digits", split, ("train", "test"))
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    idx = digits_split_indices()[split]
    ds = ArrayDataset(
        images[idx],
        d.target[idx],
        name="digits",
        split=split,
        num_classes=10,
        source="sklearn.datasets.load_digits (UCI optical digits)",
    )
    return _describe(
        ds,
        tuple(str(i) for i in range(10)),
        split_rule=f"stratified train_test_split, test_size={DIGITS_TEST_SIZE}, "
        f"random_state={DIGITS_SPLIT_SEED}",
    )


# ---- torchvision on-disk formats -------------------------------------------------------------
def _data_root(name: str, root: str | None) -> Path:
    return Path(root) if root else default_root(name)


def _missing(name: str, expected: Path) -> LplaError:
    return LplaError(
        f"{name} not found: expected {expected}; pass --download, --data-root DIR or set LPLA_DATA"
    )


def _cifar(layout_name: str, split: str, root: str | None, download: bool) -> ImageDataset:
    from lpla.data.formats import CIFAR10, CIFAR100, read_cifar
    from lpla.data.formats import download as fetch

    layout = CIFAR10 if layout_name == "cifar10" else CIFAR100
    check_split(layout.name, split, tuple(layout.files))
    base = _data_root(layout.name, root)
    if download and not (base / layout.folder).is_dir():
        fetch(layout.name, base, split)
    if not (base / layout.folder).is_dir():
        raise _missing(layout.name, base / layout.folder)
    images, labels, classes = read_cifar(base, layout, split)
    ds = ArrayDataset(
        images,
        labels,
        name=layout.name,
        split=split,
        num_classes=layout.num_classes,
        source=str(base),
    )
    return _describe(ds, classes)


@DATASETS.register("cifar10", "CIFAR-10 50,000/10,000, 3x32x32 (torchvision files; --download)")
def cifar10(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    return _cifar("cifar10", split, root, download)


@DATASETS.register(
    "cifar100", "CIFAR-100 50,000/10,000, fine labels, 3x32x32 (torchvision files; --download)"
)
def cifar100(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    return _cifar("cifar100", split, root, download)


@DATASETS.register(
    "stl10", "STL-10 5,000/8,000 (+100,000 unlabeled, label -1), 3x96x96 (torchvision files)"
)
def stl10(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    from lpla.data.formats import STL10_FOLDER, Stl10Unlabeled, read_stl10
    from lpla.data.formats import download as fetch

    check_split("stl10", split, ("train", "test", "unlabeled"))
    base = _data_root("stl10", root)
    if download and not (base / STL10_FOLDER / f"{split}_X.bin").is_file():
        fetch("stl10", base, split)
    if not (base / STL10_FOLDER / f"{split}_X.bin").is_file():
        raise _missing("stl10", base / STL10_FOLDER / f"{split}_X.bin")
    if split == "unlabeled":
        return Stl10Unlabeled(base)
    images, labels, classes = read_stl10(base, split)
    return _describe(
        ArrayDataset(images, labels, name="stl10", split=split, num_classes=10, source=str(base)),
        classes,
    )


@DATASETS.register("svhn", "SVHN cropped digits 73,257/26,032 (+extra), 3x32x32 (.mat files)")
def svhn(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    from lpla.data.formats import SVHN_SPLITS, read_svhn
    from lpla.data.formats import download as fetch

    check_split("svhn", split, SVHN_SPLITS)
    base = _data_root("svhn", root)
    path = base / f"{split}_32x32.mat"
    if download and not path.is_file():
        fetch("svhn", base, split)
    if not path.is_file():
        raise _missing("svhn", path)
    images, labels = read_svhn(base, split)
    ds = ArrayDataset(images, labels, name="svhn", split=split, num_classes=10, source=str(base))
    return _describe(ds, tuple(str(i) for i in range(10)))


# ---- any folder of images --------------------------------------------------------------------
@DATASETS.register(
    "imagefolder", "any ImageFolder directory (--data-root root/[split/]<class>/<image>), lazy"
)
def imagefolder(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    from lpla.data.folder import FolderDataset

    if root is None:
        raise LplaError("dataset imagefolder needs --data-root DIR (a folder of class sub-folders)")
    size = 32 if image_size is None else image_size
    return FolderDataset(Path(root), split=split, image_size=size)


# ---- public entry points ---------------------------------------------------------------------
def create_dataset(
    name: str,
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    """The dataset ``name`` (see ``lpla list datasets``); ``image_size`` resizes on the fly."""
    from lpla.data.resize import with_image_size

    factory = DATASETS.get(name)
    if root is not None and not Path(root).exists() and not download:
        raise LplaError(f"data root not found: {root}; check --data-root")
    if image_size is not None and image_size < 1:
        raise LplaError(f"--image-size must be a positive number of pixels, got {image_size}")
    dataset = factory(
        split=split,
        root=None if root is None else str(root),
        download=download,
        image_size=image_size,
    )
    return with_image_size(dataset, image_size)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names (``fnmatch`` pattern), sorted."""
    return DATASETS.names(pattern)


def dataset_summaries() -> dict[str, str]:
    """One line per dataset, for ``lpla list datasets``."""
    return {name: DATASETS.summary(name) for name in DATASETS.names()}
