"""Image files decoded lazily per batch (memory bounded by the batch, not the folder).

:class:`ImageFiles` is any list of image files with labels: only the list is built up front;
pixels are decoded with PIL when a batch asks for them, converted to one mode (grayscale ``L`` or
``RGB``) and resized to one size, so every batch stacks. :class:`FolderDataset` is an ImageFolder
directory, ``root/<class>/<image>`` or, with splits, ``root/<split>/<class>/<image>``, converted
to the mode of its first image and resized to ``image_size``; ``lpla.data.lists`` builds image
lists (members / non-members) on the same class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lpla.data.base import DatasetInfo, ImageDataset
from lpla.errors import LplaError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation", "unlabeled")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_base(root: Path, split: str) -> tuple[Path, list[str]]:
    """The folder holding ``split``'s classes, and the class names shared by every split folder.

    Classes are the union over all split folders so that a label means the same class in
    ``train`` and ``test`` even when one of them lacks a class.
    """
    present = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if (root / split).is_dir() and split not in present:
        present.append(split)
    if not present:
        return root, _subdirs(root)
    if split not in present:
        raise LplaError(
            f"{root} has split folders ({', '.join(present)}) but no {split!r}; "
            f"choose --split {present[0]} or add {root / split}"
        )
    classes = sorted({c for s in present for c in _subdirs(root / s)})
    return root / split, classes


def _unreadable(path: Path, exc: Exception) -> LplaError:
    return LplaError(f"cannot read image {path} ({exc}); remove or replace the file")


def _decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """``path`` as uint8 in ``mode``, resized to ``size`` = (H, W) (PIL skips same-size resizes)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            resized = im.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(resized, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def image_mode_and_size(path: Path) -> tuple[str, tuple[int, int]]:
    """The mode lpla decodes ``path`` to (``L`` for grey modes, else ``RGB``) and its (H, W).

    Reads only the header; an unreadable file is an error naming it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return ("L" if im.mode in _GRAY_MODES else "RGB"), (int(im.height), int(im.width))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


class ImageFiles(ImageDataset):
    """``files`` with ``labels`` (-1: none), each decoded to ``mode`` and ``size`` = (H, W)."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        *,
        mode: str,
        size: tuple[int, int],
        name: str,
        split: str,
        classes: tuple[str, ...] = (),
        source: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be L or RGB, got {mode!r}")
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.files):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        self.classes = tuple(classes)
        self.mode = mode
        self.size = (int(size[0]), int(size[1]))
        known = int(self.labels.max()) + 1 if len(self.labels) else 0
        info_extra = {"mode": mode, **(extra or {})}
        if classes:
            info_extra["classes"] = json.dumps(list(classes))
        self.info = DatasetInfo(
            name,
            split,
            len(self.files),
            max(len(classes), known),
            (1 if mode == "L" else 3, *self.size),
            source=source,
            extra=info_extra,
        )

    def _load(self, indices: np.ndarray) -> torch.Tensor:
        out = [_decode(self.files[int(i)], self.mode, self.size) for i in indices]
        if not out:
            return torch.empty((0, *self.info.image_shape), dtype=torch.uint8)
        arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in out]
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


class FolderDataset(ImageFiles):
    """Images under ``root`` (see the module docstring), labels from sorted class-folder names."""

    def __init__(self, root: Path, split: str = "train", image_size: int = 32) -> None:
        if not root.is_dir():
            raise LplaError(f"image folder not found: {root}; pass --data-root DIR")
        if image_size < 1:
            raise LplaError(f"--image-size must be a positive number of pixels, got {image_size}")
        base, classes = _split_base(root, split)
        if not classes:
            raise LplaError(f"{base} has no class sub-folders (expected {base}/<class>/<image>)")
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            folder = base / name
            if not folder.is_dir():
                continue
            found = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            files.extend(found)
            labels.extend([label] * len(found))
        if not files:
            raise LplaError(
                f"{base} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its class folders"
            )
        self.image_size = int(image_size)
        mode, _ = image_mode_and_size(files[0])
        super().__init__(
            files,
            np.asarray(labels, dtype=np.int64),
            mode=mode,
            size=(self.image_size, self.image_size),
            name="imagefolder",
            split=split,
            classes=tuple(classes),
            source=str(base),
        )
