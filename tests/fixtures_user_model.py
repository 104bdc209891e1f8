"""A stand-in for a user's own model package, loaded as ``fixtures_user_model:tiny_encoder``.

Tests put the ``tests`` folder on ``sys.path`` (or ``PYTHONPATH`` for subprocesses) to import it.
"""

from __future__ import annotations

import torch
from torch import nn

EMBED_DIM = 8


class TinyEncoder(nn.Module):
    """conv -> ReLU -> global average pool -> linear: float [B,1,12,12] in [0,1] -> [B,8]."""

    def __init__(self, in_channels: int = 1, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.head = nn.Linear(6, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x - 0.5))
        return self.head(h.mean(dim=(2, 3)))


class FeatureMapEncoder(nn.Module):
    """Forgets to pool: returns [B, C, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def tiny_encoder() -> nn.Module:
    """Random (seeded) weights; the real ones come from --weights."""
    torch.manual_seed(1234)
    return TinyEncoder()


def feature_map_encoder() -> nn.Module:
    torch.manual_seed(0)
    return FeatureMapEncoder()


def not_a_module() -> str:
    return "oops"
