"""Readers for torchvision's on-disk formats: CIFAR python batches, STL-10 binaries, SVHN .mat.

We read the files ourselves rather than through torchvision's dataset classes because those
``pickle.load`` CIFAR batches; torchvision is used only to download and verify the archives
(md5), see :func:`download`. Each reader checks shapes and label ranges and returns uint8
``[N, C, H, W]`` images with int64 labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lpla.data.base import DatasetInfo, ImageDataset
from lpla.errors import LplaError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and which key holds its labels."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    num_classes: int
    meta_file: str
    names_key: str


CIFAR10 = CifarLayout(
    "cifar10",
    "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "labels",
    10,
    "batches.meta",
    "label_names",
)
CIFAR100 = CifarLayout(
    "cifar100",
    "cifar-100-python",
    {"train": ("train",), "test": ("test",)},
    "fine_labels",
    100,
    "meta",
    "fine_label_names",
)
STL10_FOLDER = "stl10_binary"
STL10_SHAPE = (3, 96, 96)
SVHN_SPLITS = ("train", "test", "extra")


def check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        choices = ", ".join(allowed)
        raise LplaError(f"dataset {name} has no split {split!r}; choose one of: {choices}")


def _check_labels(where: Path, labels: np.ndarray, num_classes: int, num_images: int) -> None:
    if len(labels) != num_images:
        raise LplaError(f"{where}: {num_images} images but {len(labels)} labels; re-download it")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise LplaError(
            f"{where}: labels must lie in 0..{num_classes - 1}, found "
            f"{int(labels.min())}..{int(labels.max())}; re-download it"
        )


def _names(values: object) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        return ()
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values)


def read_cifar(
    base: Path, layout: CifarLayout, split: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``[N, 3, 32, 32]``, labels and class names from ``base/<layout.folder>``."""
    from lpla.data.safe_pickle import load_cifar_batch

    folder = base / layout.folder
    images, labels = [], []
    for fname in layout.files[split]:
        path = folder / fname
        batch = load_cifar_batch(path)
        if "data" not in batch or layout.label_key not in batch:
            raise LplaError(f"{path} is not a {layout.name} batch (keys: {sorted(batch)})")
        data = np.asarray(batch["data"])
        lab = np.asarray(batch[layout.label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise LplaError(
                f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}"
            )
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise LplaError(f"{path}: {layout.label_key!r} must be a list of integers")
        _check_labels(path, lab.astype(np.int64), layout.num_classes, len(data))
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        labels.append(lab.astype(np.int64))
    meta_path = folder / layout.meta_file
    classes = (
        _names(load_cifar_batch(meta_path).get(layout.names_key)) if meta_path.is_file() else ()
    )
    return np.concatenate(images), np.concatenate(labels), classes


def _stl_images(path: Path) -> np.memmap:
    """STL-10 ``*_X.bin`` as a read-only memmap ``[N, 3, 96(W), 96(H)]`` (stored column-major)."""
    if not path.is_file():
        raise LplaError(f"stl10 images not found: {path}; pass --download or --data-root DIR")
    per_image = int(np.prod(STL10_SHAPE))
    size = path.stat().st_size
    if size == 0 or size % per_image:
        raise LplaError(
            f"{path} is truncated ({size} bytes is not a whole number of 3x96x96 images); "
            "re-download it"
        )
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(size // per_image, *STL10_SHAPE))


def stl_to_chw(raw: np.ndarray) -> np.ndarray:
    """Column-major STL-10 records -> row-major ``[N, 3, H, W]``."""
    return np.ascontiguousarray(np.asarray(raw).transpose(0, 1, 3, 2))


def read_stl10(base: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Labelled STL-10 split: images ``[N, 3, 96, 96]``, labels 0..9 (files store 1..10)."""
    folder = base / STL10_FOLDER
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    if not y_path.is_file():
        raise LplaError(f"stl10 labels not found: {y_path}; re-download the dataset")
    images = stl_to_chw(_stl_images(x_path))
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    _check_labels(y_path, labels, 10, len(images))
    names_path = folder / "class_names.txt"
    classes = tuple(names_path.read_text().split()) if names_path.is_file() else ()
    return images, labels, classes


class Stl10Unlabeled(ImageDataset):
    """STL-10's 100,000 unlabeled images (2.7 GB), read from a memmap batch by batch; labels -1."""

    def __init__(self, base: Path) -> None:
        path = base / STL10_FOLDER / "unlabeled_X.bin"
        self._raw = _stl_images(path)
        self.labels = np.full(len(self._raw), -1, dtype=np.int64)
        self.info = DatasetInfo("stl10", "unlabeled", len(self._raw), 10, STL10_SHAPE, str(base))

    def _load(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(stl_to_chw(self._raw[indices]))


def read_svhn(base: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``<split>_32x32.mat``: ``X`` [32, 32, 3, N], ``y`` [N, 1] with digit 0 stored as 10."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = base / f"{split}_32x32.mat"
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except (
        MatReadError,
        ValueError,
        OSError,
        TypeError,
        KeyError,
        IndexError,
        EOFError,
        NotImplementedError,
    ) as exc:  # scipy raises all of these on foreign or cut files
        raise LplaError(f"{path} is not a readable SVHN .mat file ({exc}); re-download") from None
    if "X" not in mat or "y" not in mat:
        raise LplaError(f"{path} is not an SVHN .mat file (needs variables X and y)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise LplaError(f"{path}: X must be uint8 [32, 32, 3, N], got {x.dtype} {list(x.shape)}")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise LplaError(f"{path}: y must hold integer labels")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise LplaError(f"{path}: SVHN labels must lie in 1..10 (10 = digit 0); re-download it")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # [H, W, C, N] -> [N, C, H, W]
    return images, labels % 10


def download(name: str, base: Path, split: str) -> None:
    """Fetch and md5-check the archive torchvision knows for ``name`` into ``base``.

    Only torchvision's download helpers are used: its dataset classes would ``pickle.load``
    the CIFAR batches right after downloading them.
    """
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    try:
        if name in ("cifar10", "cifar100", "stl10"):
            cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}[name]
            download_and_extract_archive(cls.url, str(base), filename=cls.filename, md5=cls.tgz_md5)
        elif name == "svhn":
            url, filename, md5 = tvd.SVHN.split_list[split]
            download_url(url, str(base), filename=filename, md5=md5)
        else:  # pragma: no cover - callers only pass the names above
            raise LplaError(f"dataset {name} cannot be downloaded")
    except (OSError, RuntimeError) as exc:
        raise LplaError(
            f"downloading {name} into {base} failed ({exc}); check the network or place the files "
            "there yourself (see docs/datasets.md)"
        ) from None
