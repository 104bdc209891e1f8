"""ImageFolder directories, decoded lazily per batch (memory bounded by the batch, not the folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lpla.data.base import DatasetInfo, ImageDataset
from lpla.errors import LplaError

_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class FolderDataset(ImageDataset):
    def __init__(self, root: Path, split: str = "train", image_size: int = 32) -> None:
        base = root / split if (root / split).is_dir() else root
        if not base.is_dir():
            raise LplaError(f"image folder not found: {base}")
        classes = sorted(p.name for p in base.iterdir() if p.is_dir())
        if not classes:
            raise LplaError(f"{base} has no class sub-folders (expected root/<class>/<image>)")
        files, labels = [], []
        for c, name in enumerate(classes):
            for f in sorted((base / name).rglob("*")):
                if f.suffix.lower() in _EXTS:
                    files.append(f)
                    labels.append(c)
        if not files:
            raise LplaError(f"{base} has no images ({', '.join(sorted(_EXTS))})")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = int(image_size)
        self.mode = self._detect_mode(files[0])
        channels = 1 if self.mode == "L" else 3
        self.info = DatasetInfo("imagefolder", split, len(files), len(classes),
                                (channels, self.image_size, self.image_size), source=str(base))
        self.classes = classes

    @staticmethod
    def _detect_mode(path: Path) -> str:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return "L" if im.mode in ("L", "1", "I;16") else "RGB"
        except OSError as exc:
            raise LplaError(f"cannot read image {path}: {exc}") from None

    def _load(self, indices: np.ndarray) -> torch.Tensor:
        from PIL import Image

        out = []
        for i in indices:
            path = self.files[int(i)]
            try:
                with Image.open(path) as im:
                    im = im.convert(self.mode).resize((self.image_size, self.image_size), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except OSError as exc:
                raise LplaError(f"cannot read image {path}: {exc}; remove or replace the file") from None
            out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(out))
