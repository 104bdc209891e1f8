"""Output-side defenses: transformations an encoder's owner applies to every answer it serves.

A defense is a function of ONE answer: its parameters are fixed once, from the encoder's own
answers on a reference set, and any randomness is drawn from ``(seed, image index, view)``. So
the same image gets the same defended answer in every file, whatever batch or neighbours it is
served with; a defense whose noise level or quantisation grid followed the batch being answered
would hand the attacker a different encoder in each file. The API::

    defense = create_defense("noise:0.1", seed=0)   # a Defense; also "quantize:4", ...
    defense.fit(reference_embeddings)               # float [N, K, D]; returns the defense
    defended = defense.apply(embeddings, index)     # float [N, K, D] + int64 [N] -> float32

``fit`` must come first (a :class:`DefenseNotFittedError` otherwise). ``index`` holds each row's
image index (the dataset index that names the image in every file, as ``EmbeddingsFile.index``
does); view ``k`` of image ``i`` always gets the same noise, so the first K views of a file with
more views match a file with K views. Each defense maps ``[N, K, D]`` to the same shape, so the
same audit measures leakage with and without it, and its utility cost on probe features
(:mod:`lpla.defenses.cost`).
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np

from lpla.defenses.base import DEFENSES, DefenseBase
from lpla.errors import LplaError

__all__ = [
    "Defense",
    "DefenseNotFittedError",
    "L2NormalizeDefense",
    "NoDefense",
    "NoiseDefense",
    "QuantizeDefense",
]


class DefenseNotFittedError(LplaError):
    """``apply`` was called before ``fit``."""


class Defense(DefenseBase):
    """Base class of output-side defenses: validation around ``_fit``/``_apply``, estimator-style.

    ``__init__`` stores ``level`` (the number after the colon of a spec; ``None`` = the default)
    and ``seed``; ``fit(reference)`` learns the parameters in attributes ending in ``_`` and
    returns ``self``; ``apply(embeddings, index)`` serves defended answers.
    """

    kind: ClassVar[str] = "output"

    n_dims_: int

    def fit(self, reference_embeddings: np.ndarray) -> Self:
        """Fix the parameters from the encoder's answers ``[N, K, D]`` on a reference set."""
        ref = _check_embeddings(reference_embeddings, f"{self.name}: the reference embeddings")
        if ref.shape[0] == 0:
            raise LplaError(f"{self.name}: the reference embeddings are empty; fit on >= 1 image")
        for attr in [a for a in vars(self) if a.endswith("_")]:
            delattr(self, attr)  # a refit starts from scratch
        self._fit(ref)
        self.n_dims_ = int(ref.shape[2])
        return self

    def apply(self, embeddings: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Defended answers (float32 ``[N, K, D]``) to the images ``index`` (int ``[N]``)."""
        if not hasattr(self, "n_dims_"):
            raise DefenseNotFittedError(
                f"defense {self.name!r} is not fitted; call .fit(reference_embeddings) once, on "
                "the encoder's answers to a reference set, before .apply(embeddings, index)"
            )
        z = _check_embeddings(embeddings, f"{self.name}: the embeddings")
        if z.shape[2] != self.n_dims_:
            raise LplaError(
                f"defense {self.name!r} was fitted on {self.n_dims_}-d embeddings; these are "
                f"{z.shape[2]}-d (another encoder or output?)"
            )
        idx = np.asarray(index)
        if idx.shape != (z.shape[0],) or not np.issubdtype(idx.dtype, np.integer):
            raise LplaError(
                f"defense {self.name!r} needs one integer image index per row: [{z.shape[0]}]; "
                f"got {idx.dtype} {list(idx.shape)}"
            )
        return np.asarray(self._apply(z, idx.astype(np.int64)), dtype=np.float32)

    def _fit(self, reference: np.ndarray) -> None:
        """Set the fitted parameters (nothing to set by default)."""

    def _apply(self, z: np.ndarray, index: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_embeddings(values: np.ndarray, who: str) -> np.ndarray:
    z = np.asarray(values, dtype=np.float32)
    if z.ndim != 3:
        raise LplaError(f"{who} must be [N, K, D] (images, views, dimensions); got {z.shape}")
    if not np.isfinite(z).all():
        raise LplaError(f"{who} contain NaN or infinite values")
    return z


@DEFENSES.register("none", "output-side: serve embeddings unchanged (the baseline)")
class NoDefense(Defense):
    name = "none"

    def _apply(self, z: np.ndarray, index: np.ndarray) -> np.ndarray:
        return z


@DEFENSES.register(
    "noise",
    "output-side: add isotropic Gaussian noise; level = sigma as a fraction of the mean L2 norm "
    "(default 0.1)",
)
class NoiseDefense(Defense):
    """Gaussian noise per coordinate, ``sigma_ = level * mean L2 norm / sqrt(D)``.

    The mean L2 norm is the reference's (over images and views), so the noise added to the
    whole vector has an L2 norm of about ``level`` times a typical answer's. The noise of view
    ``k`` of image ``i`` is row ``k`` of ``N(0, sigma_)`` draws from a generator seeded with
    ``SeedSequence([seed, i])``: asking again, in any file, gives the same answer.
    """

    name = "noise"
    sigma_: float

    def __init__(self, level: float | None = None, seed: int = 0) -> None:
        fraction = 0.1 if level is None else float(level)
        if not fraction >= 0:
            raise LplaError(f"noise level must be >= 0, got {fraction}")
        super().__init__(level, seed)

    @property
    def fraction(self) -> float:
        return 0.1 if self.level is None else float(self.level)

    def _fit(self, reference: np.ndarray) -> None:
        mean_norm = float(np.linalg.norm(reference.astype(np.float64), axis=-1).mean())
        self.sigma_ = self.fraction * mean_norm / float(np.sqrt(reference.shape[-1]))

    def _apply(self, z: np.ndarray, index: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        k, d = z.shape[1:]
        for row, image in enumerate(index):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(image)]))
            out[row] = z[row] + (self.sigma_ * rng.standard_normal((k, d))).astype(np.float32)
        return out


@DEFENSES.register(
    "l2-normalize", "output-side: serve unit-L2 embeddings (the L2 norm then carries no signal)"
)
class L2NormalizeDefense(Defense):
    name = "l2-normalize"

    def _apply(self, z: np.ndarray, index: np.ndarray) -> np.ndarray:
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


@DEFENSES.register(
    "quantize",
    "output-side: round every coordinate to a grid; level = number of bits per value (default 4)",
)
class QuantizeDefense(Defense):
    """Round every coordinate to one of ``2**bits`` values evenly spaced over ``[lo_, hi_]``,
    the range of the reference's coordinates; values outside it are clipped to its ends."""

    name = "quantize"
    lo_: float
    hi_: float

    def __init__(self, level: float | None = None, seed: int = 0) -> None:
        bits = 4 if level is None else int(level)
        if not 1 <= bits <= 16:
            raise LplaError(f"quantize bits must be in 1..16, got {bits}")
        super().__init__(level, seed)

    @property
    def bits(self) -> int:
        return 4 if self.level is None else int(self.level)

    def _fit(self, reference: np.ndarray) -> None:
        lo, hi = float(reference.min()), float(reference.max())
        if not hi > lo:
            raise LplaError(
                f"quantize: every reference coordinate equals {lo}; there is no range to "
                "quantize over (fit on the encoder's answers to real images)"
            )
        self.lo_, self.hi_ = lo, hi

    def _apply(self, z: np.ndarray, index: np.ndarray) -> np.ndarray:
        steps = 2**self.bits - 1
        width = self.hi_ - self.lo_
        unit = (np.clip(z.astype(np.float64), self.lo_, self.hi_) - self.lo_) / width
        return np.round(unit * steps) / steps * width + self.lo_
