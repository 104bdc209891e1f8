"""Per-image query statistics: the only thing attacks see of an encoder.

An attacker queries the encoder with K views of each image and gets K embeddings. Every attack in
lpla works on two summaries of them: the Lp norm of each view (LpLA) and the similarity of each
pair of views (EncoderMI). :func:`compute_stats` reduces embeddings ``[N, K, D]`` to those
summaries in chunks over N, so that a memory-mapped file of a million images streams through in
bounded memory. Numpy only: embeddings from any model can be audited.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpla.embeddings import release_rows
from lpla.errors import LplaError
from lpla.registry import Registry

__all__ = [
    "ANSWER_ROLES",
    "SIMILARITIES",
    "AnswerRole",
    "AttackInput",
    "PSpec",
    "QueryStats",
    "compute_stats",
    "feature_stats",
    "list_similarities",
    "p_label",
    "pair_indices",
    "parse_p",
]

SimilarityFn = Callable[[np.ndarray], np.ndarray]
#: norm orders as users write them: ``2``, ``"inf"``, ``[1, 2, "inf"]``
PSpec = float | str | Sequence[float | str]
SIMILARITIES: Registry[SimilarityFn] = Registry("similarity")


def list_similarities() -> list[str]:
    return SIMILARITIES.names()


def pair_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
    """View pairs ``(i, j)``, ``i < j``, in the order of the similarity columns (row-major)."""
    return np.triu_indices(k, 1)


def parse_p(p: PSpec) -> tuple[float, ...]:
    """Validate norm orders: any float in (0, inf]; ``"inf"`` accepted; duplicates removed."""
    items = [p] if isinstance(p, (int, float, str)) else list(p)
    if not items:
        raise LplaError("no norm order p given; pass e.g. p=(2.0,) or --p 1,2,inf")
    out: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise LplaError(
                f"norm order p={item!r} is not a number; use a float > 0 or inf"
            ) from None
        if math.isnan(value) or value <= 0:
            raise LplaError(f"norm order p={item!r} must be > 0 (p < 1 is a quasi-norm) or inf")
        if value not in out:
            out.append(value)
    return tuple(out)


def p_label(p: float) -> str:
    """A norm order as users write it and results.json records it: ``2``, ``inf``."""
    return "inf" if math.isinf(p) else f"{p:g}"


@dataclass
class QueryStats:
    """Norms and view-pair similarities of N images queried with K views each.

    Attributes:
        norms: float64 ``[N, K, P]``, the Lp norm of each view for each order in ``p``.
        p: the norm orders, in the order of the last axis of ``norms``.
        sims: similarity name -> float64 ``[N, K(K-1)/2]``, pairs in :func:`pair_indices` order
            (not sorted; attacks that want sorted values sort them).
        clean_view0: whether view 0 is the un-augmented image.
        features: float64 ``[N, F]``, the answer's own rows when an attack reads them as they
            are (a :class:`AnswerRole` with ``features=True``, e.g. PartCrop's membership
            features); None for view embeddings, which attacks see only through norms and sims.
    """

    norms: np.ndarray
    p: tuple[float, ...]
    sims: dict[str, np.ndarray] = field(default_factory=dict)
    clean_view0: bool = False
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.p = parse_p(self.p)
        self.norms = np.asarray(self.norms, dtype=np.float64)
        if self.norms.ndim != 3 or self.norms.shape[2] != len(self.p):
            raise LplaError(
                f"norms must be [N, K, P] with P = {len(self.p)} norm orders; "
                f"got shape {self.norms.shape}"
            )
        n, k = self.norms.shape[:2]
        if k < 1:
            raise LplaError("query statistics need at least one view per image")
        n_pairs = k * (k - 1) // 2
        sims = {}
        for name, values in self.sims.items():
            arr = np.asarray(values, dtype=np.float64)
            if arr.shape != (n, n_pairs):
                raise LplaError(
                    f"similarity {name!r} must be [N, K(K-1)/2] = [{n}, {n_pairs}]; got {arr.shape}"
                )
            sims[name] = arr
        self.sims = sims
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float64)
            if self.features.ndim != 2 or self.features.shape[0] != n:
                raise LplaError(
                    f"features must be [N, F] with N = {n} images; got {self.features.shape}"
                )

    @property
    def n_images(self) -> int:
        return int(self.norms.shape[0])

    @property
    def n_views(self) -> int:
        return int(self.norms.shape[1])

    def p_index(self, p: float) -> int:
        """Position of norm order ``p`` on the last axis of ``norms``."""
        for i, q in enumerate(self.p):
            if q == p:
                return i
        have = ", ".join(p_label(q) for q in self.p)
        raise LplaError(
            f"norm order p={p_label(p)} was not computed (have p = {have}); "
            f"recompute the statistics with it"
        )

    def norm(self, p: float) -> np.ndarray:
        """Norms ``[N, K]`` for one order."""
        return self.norms[:, :, self.p_index(p)]

    def similarity(self, name: str) -> np.ndarray:
        """Pair similarities ``[N, K(K-1)/2]`` for one similarity, with a clear error if absent."""
        if name not in self.sims:
            have = ", ".join(sorted(self.sims)) or "none"
            raise LplaError(
                f"similarity {name!r} was not computed (have: {have}); "
                f"recompute the statistics with similarities=({name!r},)"
            )
        return self.sims[name]

    def first_views(self, k: int) -> QueryStats:
        """The statistics as if only the first ``k`` views had been queried (AUC-vs-K studies)."""
        if not 1 <= k <= self.n_views:
            raise LplaError(f"first_views({k}): k must be between 1 and {self.n_views}")
        _, j = pair_indices(self.n_views)
        keep = j < k  # pairs among the first k views, still in row-major order
        return QueryStats(
            norms=self.norms[:, :k, :].copy(),
            p=self.p,
            sims={name: values[:, keep].copy() for name, values in self.sims.items()},
            clean_view0=self.clean_view0,
            features=self.features,  # not made of the K views: a smaller budget keeps them
        )

    def subset(self, rows: np.ndarray) -> QueryStats:
        """The statistics of some images (boolean mask or integer rows)."""
        return QueryStats(
            norms=self.norms[rows],
            p=self.p,
            sims={name: values[rows] for name, values in self.sims.items()},
            clean_view0=self.clean_view0,
            features=None if self.features is None else self.features[rows],
        )


@dataclass(frozen=True)
class AnswerRole:
    """One kind of answer an attack can receive beside the candidates' own statistics.

    ``aligned`` answers have one row per candidate, in the candidates' order (the same images on
    another encoder, crops of them...), so slicing the candidates slices them too; the others
    are a population (reference images) and are kept whole. ``features`` answers are read as
    they are (:attr:`QueryStats.features`, one row per image), not as views: output-side
    defenses, which serve view embeddings, do not apply to them.
    """

    name: str
    aligned: bool
    help: str
    features: bool = False


#: Every kind of answer, in one place: a new kind of query (crops, reference encoders) is one entry
#: here; :class:`AttackInput`, the query pipeline and the defenses treat all of them alike.
ANSWER_ROLES: Registry[AnswerRole] = Registry("answer role")
for _role in (
    AnswerRole("reference", False, "the same encoder on population images no encoder trained on"),
    AnswerRole("baseline", True, "the candidates on another encoder that never trained on them"),
    AnswerRole("baseline_reference", False, "that other encoder on the reference population"),
    AnswerRole(
        "partcrop",
        True,
        "PartCrop's membership features: crops of each candidate against its feature map",
        features=True,
    ),
):
    ANSWER_ROLES.add(_role.name, _role, _role.help)


class AttackInput:
    """What an attack is fitted on or scores: one encoder's statistics on some images.

    Attributes:
        stats: statistics of the candidate images.
        member: int8 ``[N]``: 1 member, 0 non-member, -1 unknown (ignored when fitting).
        index: int64 ``[N]`` dataset index of each image (matches candidates across shadows).
        name: a label for messages (e.g. ``"shadow-3"``).
        answers: the other answers, by :data:`ANSWER_ROLES` name. ``reference`` (the same
            encoder on population images that are members of no encoder involved, to calibrate
            scales across encoders), ``baseline`` (the same images on another encoder that never
            trained on them: difficulty calibration) and ``baseline_reference`` are also
            attributes, ``None`` when absent.
    """

    def __init__(
        self,
        stats: QueryStats,
        member: np.ndarray | None = None,
        index: np.ndarray | None = None,
        reference: QueryStats | None = None,
        name: str = "",
        baseline: QueryStats | None = None,
        baseline_reference: QueryStats | None = None,
        *,
        answers: dict[str, QueryStats] | None = None,
    ) -> None:
        self.stats = stats
        self.name = name
        self.answers: dict[str, QueryStats] = {}
        given = dict(answers or {})
        for role, value in (
            ("reference", reference),
            ("baseline", baseline),
            ("baseline_reference", baseline_reference),
        ):
            if value is not None:
                given[role] = value
        for role, value in given.items():
            ANSWER_ROLES.get(role)
            self.answers[role] = value
        n = stats.n_images
        label = f"{name}: " if name else ""
        member = np.full(n, -1, dtype=np.int8) if member is None else np.asarray(member)
        if member.shape != (n,):
            raise LplaError(
                f"{label}member must have one entry per image ({n}); got {member.shape}"
            )
        if member.size and not np.isin(member, (-1, 0, 1)).all():
            raise LplaError(
                f"{label}member values must be 1 (member), 0 (non-member) or -1 (unknown)"
            )
        self.member: np.ndarray = member.astype(np.int8)
        index = np.arange(n, dtype=np.int64) if index is None else np.asarray(index)
        if index.shape != (n,):
            raise LplaError(f"{label}index must have one entry per image ({n}); got {index.shape}")
        self.index: np.ndarray = index.astype(np.int64)
        for role, other in self.answers.items():
            if ANSWER_ROLES.get(role).aligned and other.n_images != n:
                raise LplaError(
                    f"{label}{role} statistics must have one row per candidate ({n}); "
                    f"got {other.n_images}"
                )
        if self.reference is not None and self.reference.p != stats.p:
            raise LplaError(
                f"{label}reference statistics have p = {self.reference.p} but the "
                f"images have p = {stats.p}; compute both with the same p"
            )

    @property
    def reference(self) -> QueryStats | None:
        return self.answers.get("reference")

    @property
    def baseline(self) -> QueryStats | None:
        return self.answers.get("baseline")

    @property
    def baseline_reference(self) -> QueryStats | None:
        return self.answers.get("baseline_reference")

    @property
    def labelled(self) -> np.ndarray:
        """Boolean mask of rows whose membership is known."""
        return self.member >= 0

    def _with(
        self, stats: QueryStats, rows: np.ndarray | None, answers: dict[str, QueryStats]
    ) -> AttackInput:
        member = self.member if rows is None else self.member[rows]
        index = self.index if rows is None else self.index[rows]
        return AttackInput(stats, member, index, name=self.name, answers=answers)

    def first_views(self, k: int) -> AttackInput:
        """Keep the first ``k`` views of the images and of every other answer."""
        answers = {
            role: stats.first_views(min(k, stats.n_views)) for role, stats in self.answers.items()
        }
        return self._with(self.stats.first_views(k), None, answers)

    def subset(self, rows: np.ndarray) -> AttackInput:
        """Some of the images (aligned answers follow them, populations are kept whole)."""
        answers = {
            role: stats.subset(rows) if ANSWER_ROLES.get(role).aligned else stats
            for role, stats in self.answers.items()
        }
        return self._with(self.stats.subset(rows), rows, answers)


# --- similarities: [n, K, D] float chunk -> [n, K(K-1)/2] -------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (similarity 0 by convention)."""
    scale = np.max(np.abs(x), axis=-1, keepdims=True)
    y = np.divide(x, scale, out=np.zeros_like(x), where=scale > 0)
    length = np.sqrt(np.einsum("nkd,nkd->nk", y, y))[..., None]
    return np.divide(y, length, out=np.zeros_like(y), where=length > 0)


def _gram_pairs(unit: np.ndarray) -> np.ndarray:
    k = unit.shape[1]
    gram = np.matmul(unit, np.swapaxes(unit, 1, 2))
    i, j = pair_indices(k)
    return np.clip(gram[:, i, j], -1.0, 1.0)


@SIMILARITIES.register("cosine", "cosine of the angle between two views' embeddings")
def _cosine(x: np.ndarray) -> np.ndarray:
    return _gram_pairs(_unit(x))


@SIMILARITIES.register("correlation", "Pearson correlation of two views across dimensions")
def _correlation(x: np.ndarray) -> np.ndarray:
    return _gram_pairs(_unit(x - x.mean(axis=-1, keepdims=True)))


@SIMILARITIES.register("neg-euclidean", "minus the Euclidean distance between two views")
def _neg_euclidean(x: np.ndarray) -> np.ndarray:
    # Differences directly, not via the Gram matrix: near-identical views would lose all digits.
    k = x.shape[1]
    parts = [
        -np.sqrt(np.einsum("nkd,nkd->nk", d, d))
        for d in (x[:, i + 1 :, :] - x[:, i : i + 1, :] for i in range(k - 1))
    ]
    return np.concatenate(parts, axis=1) if parts else np.zeros((x.shape[0], 0), x.dtype)


# --- norms ---------------------------------------------------------------------------------


def _norms(x: np.ndarray, p_values: tuple[float, ...]) -> np.ndarray:
    """``[n, K, P]`` float64 Lp norms, scaled by max|z| first so no power overflows."""
    a = np.abs(x)
    top = a.max(axis=-1)
    y = np.divide(a, top[..., None], out=np.zeros_like(a), where=top[..., None] > 0)
    del a  # one chunk-sized temporary fewer at the peak
    out = np.empty((*x.shape[:2], len(p_values)), dtype=np.float64)
    top64 = top.astype(np.float64)
    for c, p in enumerate(p_values):
        if math.isinf(p):
            out[..., c] = top64
            continue
        if p == 2.0:
            total = np.einsum("nkd,nkd->nk", y, y, dtype=np.float64)
        elif p == 1.0:
            total = y.sum(axis=-1, dtype=np.float64)
        else:
            total = np.power(y, p).sum(axis=-1, dtype=np.float64)
        # log-space so that tiny p (a huge 1/p) does not overflow before the final product
        with np.errstate(divide="ignore"):
            log_norm = np.log(top64) + np.log(total) / p
        out[..., c] = np.where(top64 > 0, np.exp(log_norm), 0.0)
    return out


def compute_stats(
    embeddings: Any,
    p: PSpec = (2.0,),
    similarities: Sequence[str] = ("cosine",),
    clean_view0: bool = False,
    chunk_size: int = 512,
) -> QueryStats:
    """Reduce embeddings ``[N, K, D]`` (array or ``np.memmap``) to :class:`QueryStats`.

    Works chunk by chunk over N (``chunk_size`` images at a time, computed in float32, or float64
    for float64 input), so memory is bounded whatever N is.

    Example:
        >>> z = np.random.default_rng(0).normal(size=(4, 3, 8))
        >>> compute_stats(z, p=(1, 2, "inf")).norms.shape
        (4, 3, 3)
    """
    p_values = parse_p(p)
    sim_names = tuple(dict.fromkeys(similarities))
    for name in sim_names:
        SIMILARITIES.get(name)
    if int(chunk_size) < 1:
        raise LplaError(f"chunk_size must be >= 1; got {chunk_size}")
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) != 3:
        raise LplaError(
            f"embeddings must be [N images, K views, D dims]; got shape {shape} "
            "(one view per image: add an axis, e.g. z[:, None, :])"
        )
    n, k, d = (int(s) for s in shape)
    if n < 1 or k < 1 or d < 1:
        raise LplaError(f"embeddings must have N, K, D >= 1; got shape {tuple(shape)}")
    dtype = np.dtype(getattr(embeddings, "dtype", np.float64))
    if dtype.kind not in "fiu":
        raise LplaError(f"embeddings must be numbers; got dtype {dtype}")
    work = np.float64 if dtype == np.float64 else np.float32
    if "correlation" in sim_names and d < 2:
        raise LplaError("correlation similarity needs embeddings with at least 2 dimensions")

    norms = np.empty((n, k, len(p_values)), dtype=np.float64)
    sims = {name: np.empty((n, k * (k - 1) // 2), dtype=np.float64) for name in sim_names}
    bad_rows: list[np.ndarray] = []
    step = int(chunk_size)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n, step):
            stop = min(n, start + step)
            x = np.asarray(embeddings[start:stop], dtype=work)
            bad = ~np.isfinite(x).all(axis=(1, 2))
            if bad.any():
                bad_rows.append(np.flatnonzero(bad) + start)
            else:
                norms[start:stop] = _norms(x, p_values)
                for name in sim_names:
                    sims[name][start:stop] = SIMILARITIES.get(name)(x)
            del x
            release_rows(embeddings, start, stop)  # read pages leave the RSS: it stays flat
    if bad_rows:
        rows = np.concatenate(bad_rows)
        first = ", ".join(str(int(r)) for r in rows[:5])
        raise LplaError(
            f"embeddings contain NaN or inf in {rows.size} of {n} images (rows {first}"
            f"{', ...' if rows.size > 5 else ''}); fix or drop them before attacking"
        )
    if not np.isfinite(norms).all():
        small = min(p_values)
        raise LplaError(f"norms overflow float64 (p={p_label(small)} is too small); use p >= 0.1")
    return QueryStats(norms=norms, p=p_values, sims=sims, clean_view0=bool(clean_view0))


def feature_stats(features: Any, chunk_size: int = 512) -> QueryStats:
    """An answer read as it is: rows ``[N, F]`` (or ``[N, 1, F]`` as stored) -> ``QueryStats``
    whose :attr:`~QueryStats.features` are those rows (and whose norms, of the one "view", keep
    the checks every answer goes through)."""
    arr = np.asarray(features)
    if arr.ndim == 3 and arr.shape[1] == 1:
        arr = arr[:, 0, :]
    if arr.ndim != 2:
        raise LplaError(f"features must be [N, F] (or [N, 1, F]); got shape {arr.shape}")
    stats = compute_stats(arr[:, None, :], p=(2.0,), similarities=(), chunk_size=chunk_size)
    stats.features = np.asarray(arr, dtype=np.float64)
    return stats
