"""Every default of querying and attacking, set once.

``lpla attack``, ``lpla audit`` (trained, given encoders or given embeddings) and ``lpla study``
all build their settings here; a CLI option left unset means "this default", never a default of
its own. How the views of an embeddings file were made (K, a clean view 0, the augmentation) is
*not* a setting of the attacks: it is read from the file's metadata (:mod:`lpla.embeddings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lpla.errors import LplaError

__all__ = ["AttackSettings", "QuerySettings", "settings_from"]


@dataclass(frozen=True)
class QuerySettings:
    """How encoders are queried: K views per image, view 0 clean, which augmentation and layer.

    ``clean_view0`` defaults to True: the clean image is one of the K queries an attacker would
    make anyway, and the K = 1 norm attacks need it (results.md §2 chose the default on it).
    """

    views: int = 10
    clean_view0: bool = True
    augmentation: str | None = None  # None: each encoder's own training augmentation
    layer: str = "backbone"
    seed: int = 0
    batch_size: int = 256
    dtype: str = "float32"
    device: str = "auto"

    def validate(self) -> None:
        if self.views < 1:
            raise LplaError(f"--views must be at least 1, got {self.views}")
        if self.batch_size < 1:
            raise LplaError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.augmentation is not None:
            from lpla.ssl.augment import AUGMENTATIONS

            AUGMENTATIONS.get(self.augmentation)

    def cache_key(self) -> dict[str, Any]:
        """What changes the embeddings (views are a function of seed and batch size)."""
        return {
            "views": self.views,
            "batch_size": self.batch_size,
            "aug": self.augmentation,
            "clean": self.clean_view0,
            "layer": self.layer,
            "seed": self.seed,
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class AttackSettings:
    """Which attacks run and how their metrics are computed."""

    attacks: tuple[str, ...] | None = None  # None: every attack the inputs allow
    p: tuple[float, ...] = (1.0, 2.0, float("inf"))
    similarities: tuple[str, ...] = ("cosine",)
    views_grid: tuple[int, ...] = (1, 2, 5, 10)  # query budgets K of the AUC-vs-K table
    n_bootstrap: int = 1000
    seed: int = 0
    fprs: tuple[float, ...] = (0.001, 0.01)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        """Out-of-range settings are mistakes, not something to drop silently."""
        if any(int(v) < 1 for v in self.views_grid):
            raise LplaError(
                f"every query budget in --views-grid must be >= 1, got {list(self.views_grid)}"
            )
        if self.n_bootstrap < 1:
            raise LplaError(
                f"--n-bootstrap must be >= 1 (the AUC and TPR intervals need resamples), "
                f"got {self.n_bootstrap}"
            )
        for p in self.p:
            if not p > 0:
                raise LplaError(f"every p must be > 0 (inf allowed), got {p}")
        from lpla.attacks import ATTACKS, create_attack

        for name in self.attacks or ():
            ATTACKS.get(name)
        for name, params in self.attack_params.items():
            try:
                create_attack(name, **params)
            except TypeError as exc:
                raise LplaError(f"parameters for attack {name}: {exc}") from None


def settings_from(cls: type[Any], **options: Any) -> Any:
    """``cls`` with the options that were given (``None`` = not given: the default above).

    Sequences become tuples, so settings stay hashable and compare equal however they were made.
    """
    given = {
        k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
        for k, v in options.items()
        if v is not None
    }
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(given) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting(s) {sorted(unknown)}")
    return cls(**given)
