"""Output-side defenses: transformations an encoder's owner can apply to the embeddings it serves.

Each defense maps embeddings ``[N, K, D]`` to embeddings of the same shape, so the same audit
measures leakage with and without it (and the utility cost, by applying it to probe features).
Training-side defenses (stronger augmentation, weight decay, early stopping) are training options
(`lpla train --augmentation/--weight-decay/--epochs`), studied with `lpla study`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lpla.errors import LplaError
from lpla.registry import Registry

Defense = Callable[[np.ndarray, np.random.Generator], np.ndarray]
DefenseFactory = Callable[[float | None], Defense]

DEFENSES: Registry[DefenseFactory] = Registry("defense")


@DEFENSES.register("none", "serve embeddings unchanged (the baseline)")
def _none(_: float | None = None) -> Defense:
    return lambda z, rng: z


@DEFENSES.register(
    "noise",
    "add isotropic Gaussian noise; level = sigma as a fraction of the mean L2 norm (default 0.1)",
)
def _noise(level: float | None = None) -> Defense:
    frac = 0.1 if level is None else float(level)
    if not frac >= 0:
        raise LplaError(f"noise level must be >= 0, got {frac}")

    def apply(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        scale = frac * float(np.linalg.norm(z, axis=-1).mean()) / np.sqrt(z.shape[-1])
        return z + rng.normal(0.0, scale, size=z.shape).astype(np.float32)

    return apply


@DEFENSES.register("l2-normalize", "serve unit-L2 embeddings (the L2 norm then carries no signal)")
def _l2(_: float | None = None) -> Defense:
    def apply(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)

    return apply


@DEFENSES.register(
    "quantize", "round every coordinate to a grid; level = number of bits per value (default 4)"
)
def _quantize(level: float | None = None) -> Defense:
    bits = 4 if level is None else int(level)
    if not 1 <= bits <= 16:
        raise LplaError(f"quantize bits must be in 1..16, got {bits}")

    def apply(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        lo, hi = float(z.min()), float(z.max())
        if hi <= lo:
            return z
        steps = 2**bits - 1
        return (np.round((z - lo) / (hi - lo) * steps) / steps * (hi - lo) + lo).astype(np.float32)

    return apply


def parse_defense(spec: str) -> tuple[str, float | None]:
    """``"noise:0.2"`` -> ``("noise", 0.2)``; ``"l2-normalize"`` -> ``("l2-normalize", None)``."""
    name, _, level = spec.partition(":")
    DEFENSES.get(name)
    if not level:
        return name, None
    try:
        return name, float(level)
    except ValueError:
        raise LplaError(f"defense level in {spec!r} must be a number, e.g. noise:0.1") from None


def create_defense(spec: str) -> Defense:
    name, level = parse_defense(spec)
    return DEFENSES.get(name)(level)
