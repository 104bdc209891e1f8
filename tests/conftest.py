"""Test-wide settings: one torch thread (2-core machines thrash otherwise), headless plots."""

from __future__ import annotations

import os

os.environ.setdefault("LPLA_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tiny_dataset():
    """A 64-image, 4-class, 1x12x12 in-memory dataset with class-dependent blobs (learnable)."""
    from lpla.data.base import ArrayDataset

    g = np.random.default_rng(0)
    n, n_cls = 64, 4
    labels = np.arange(n) % n_cls
    imgs = g.integers(0, 60, size=(n, 1, 12, 12))
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        imgs[i, 0, r * 6 : r * 6 + 6, c * 6 : c * 6 + 6] += 150
    return ArrayDataset(
        imgs.astype(np.uint8), labels, name="tiny", split="train", num_classes=n_cls
    )
