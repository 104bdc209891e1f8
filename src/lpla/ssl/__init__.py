"""Self-supervised encoders: backbones, augmentations, frameworks, the training loop, checkpoints.

Names are re-exported lazily: ``import lpla.ssl`` stays cheap, and ``lpla.ssl.train_encoder``
imports lightly/kornia only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKBONES": "backbones",
    "create_backbone": "backbones",
    "list_backbones": "backbones",
    "AUGMENTATIONS": "augment",
    "create_augmentation": "augment",
    "list_augmentations": "augment",
    "FRAMEWORKS": "frameworks",
    "SSLMethod": "frameworks",
    "create_framework": "frameworks",
    "list_frameworks": "frameworks",
    "TrainConfig": "config",
    "train_encoder": "train",
    "TrainingInterrupted": "train",
    "train_ensemble": "ensemble",
    "load_encoder": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lpla.ssl.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lpla.ssl' has no attribute {name!r}")
