"""``--image-size`` for fixed-size datasets: resize each batch as it is read.

Resizing per batch (not the whole set up front) keeps memory bounded by the batch and leaves
the indices, labels and pool size of the underlying dataset unchanged, so a membership split
made at one image size stays valid at another.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from lpla.data.base import ImageDataset
from lpla.errors import LplaError


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 ``[B, C, H, W]`` to ``size x size``."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < images.shape[-1] or size < images.shape[-2]
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


class ResizedDataset(ImageDataset):
    """``dataset`` with every image resized to ``size x size`` on the fly."""

    def __init__(self, dataset: ImageDataset, size: int) -> None:
        if size < 1:
            raise LplaError(f"--image-size must be a positive number of pixels, got {size}")
        self.base = dataset
        self.size = int(size)
        self.labels = dataset.labels
        self.classes = dataset.classes
        c = dataset.info.image_shape[0]
        self.info = replace(dataset.info, image_shape=(c, self.size, self.size))

    def _load(self, indices: np.ndarray) -> torch.Tensor:
        return resize_uint8(self.base._load(indices), self.size)


def with_image_size(dataset: ImageDataset, size: int | None) -> ImageDataset:
    """``dataset`` itself when ``size`` is None or already its size, else a resizing view."""
    if size is None or dataset.info.image_shape[1:] == (size, size):
        return dataset
    return ResizedDataset(dataset, size)
