"""The one dataset interface every layer above ``data`` relies on.

A dataset is a fixed, indexable set of images with integer labels. Images come out in batches as
``uint8`` tensors ``[B, C, H, W]``; conversion to float, normalisation and augmentation happen
later, on whole batches (kornia, CPU or GPU). Keeping the interface batch-based lets in-memory
sets (Fashion-MNIST, CIFAR) and lazily decoded folders of files share one code path, with memory
bounded by the batch size rather than by the dataset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lpla.errors import LplaError


@dataclass(frozen=True)
class DatasetInfo:
    """What a consumer needs to know before it sees a pixel."""

    name: str
    split: str
    num_images: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class ImageDataset(ABC):
    """Indexable images + labels. Subclasses implement :meth:`_load` for a batch of indices."""

    info: DatasetInfo
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...] = ()  # class names by label, when the dataset ships them

    def __len__(self) -> int:
        return self.info.num_images

    def get_images(self, indices: np.ndarray | list[int] | torch.Tensor) -> torch.Tensor:
        """``uint8`` images ``[B, C, H, W]`` for dataset indices (validated)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise LplaError(
                f"index out of range for {self.info.name}/{self.info.split} "
                f"({len(self)} images): got {int(idx.min())}..{int(idx.max())}"
            )
        return self._load(idx)

    @abstractmethod
    def _load(self, indices: np.ndarray) -> torch.Tensor: ...

    def iter_batches(
        self, indices: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)`` batches in order; memory bounded by ``batch_size``."""
        for start in range(0, len(indices), batch_size):
            chunk = np.asarray(indices[start : start + batch_size], dtype=np.int64)
            yield chunk, self.get_images(chunk)


class ArrayDataset(ImageDataset):
    """Images held in memory as one ``uint8 [N, C, H, W]`` tensor (small and medium sets)."""

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: np.ndarray,
        *,
        name: str,
        split: str,
        num_classes: int | None = None,
        source: str = "",
    ) -> None:
        imgs = torch.as_tensor(images)
        if imgs.dtype != torch.uint8:
            raise LplaError(f"{name}: images must be uint8, got {imgs.dtype}")
        if imgs.ndim == 3:  # [N, H, W] grayscale
            imgs = imgs.unsqueeze(1)
        if imgs.ndim != 4:
            raise LplaError(f"{name}: images must be [N, C, H, W], got shape {tuple(imgs.shape)}")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != imgs.shape[0]:
            raise LplaError(f"{name}: {imgs.shape[0]} images but {len(labels)} labels")
        self.images = imgs.contiguous()
        self.labels = labels
        inferred = labels.max() + 1 if len(labels) else 0
        n_cls = int(num_classes if num_classes is not None else inferred)
        c, h, w = (int(s) for s in imgs.shape[1:])
        self.info = DatasetInfo(name, split, int(imgs.shape[0]), n_cls, (c, h, w), source)

    def _load(self, indices: np.ndarray) -> torch.Tensor:
        return self.images[torch.from_numpy(indices)]
