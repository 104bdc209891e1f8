"""The TrainConfig of each encoder an audit trains, and the cache key of its training stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lpla.audit.config import AuditConfig, EncoderSpec
from lpla.ssl.config import TrainConfig

__all__ = ["train_config", "train_settings"]


def train_config(
    cfg: AuditConfig,
    spec: EncoderSpec,
    role: str,
    split_file: Path,
    out: Path,
    device: str,
    *,
    offset: int,
) -> TrainConfig:
    """The TrainConfig of one of the audit's encoders; ``offset`` tells its seed apart.

    Replicates (``--seeds``) differ in training randomness only: same split, same queries.
    """
    dataset = spec.dataset or cfg.dataset
    return TrainConfig(
        dataset=dataset,
        data_root=cfg.data_root if dataset == cfg.dataset else None,
        members=cfg.members,
        seed=cfg.seed + 1000 * cfg.replicate + offset,
        out=str(out),
        role=role,
        split=str(split_file),
        device=device,
        utility=cfg.utility and role == "target",
        utility_train_limit=cfg.utility_train_limit,
        progress=True,
        **spec.train_fields(),
    )


def train_settings(tcfg: TrainConfig) -> dict[str, Any]:
    """A training run's cache key: its config without paths, so that a moved or copied run
    directory stays cached."""
    return {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in ("out", "split")}
