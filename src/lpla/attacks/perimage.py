"""Per-image calibrated attacks over many reference encoders: the machinery they share.

LiRA (Carlini et al., S&P 2022) and RMIA (Zarifzadeh et al., ICML 2024) compare a target's answer
on an image with the answers of M reference ("shadow") encoders on *the same image*, each trained
on a random subset of one candidate pool, so that what makes an image's statistic large whatever
its membership is calibrated away. Everything here is independent of which statistic is used:

- :class:`PerImageStatistic` strategies turn one encoder's answers into a per-image statistic
  ``[N, P]`` (:class:`LogNormStatistic`: LpLA's log norms; :class:`MeanSimilarityStatistic`:
  EncoderMI-T's mean view-pair similarity), each calibrated per encoder by one of
  :data:`CALIBRATIONS` (``reference``, ``population``, ``none``), so both families are
  calibrated identically;
- :class:`PerImageAttack` matches candidates across encoders by ``index``, checks the inputs and
  chooses ``threshold_`` from leave-one-shadow-out scores;
- :class:`GaussianLiraAttack` is the LiRA core (per-candidate IN/OUT Gaussians) on any statistic.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpla.attacks.base import Attack, check_choice, standardise
from lpla.attacks.encodermi import mean_similarity
from lpla.attacks.features import AttackInput, QueryStats, p_label
from lpla.attacks.norm import norm_features
from lpla.errors import LplaError
from lpla.registry import Registry

__all__ = [
    "CALIBRATIONS",
    "SIMILARITY_TRANSFORMS",
    "CandidateSums",
    "GaussianLiraAttack",
    "LogNormStatistic",
    "MeanSimilarityStatistic",
    "PerImageAttack",
    "PerImageStatistic",
    "ShadowRows",
    "is_own_candidates",
]

_MIN_VAR = 1e-12


# --- statistics ----------------------------------------------------------------------------


class PerImageStatistic:
    """Strategy: one encoder's answers -> a per-image statistic ``[N, P]`` (before calibration).

    Subclasses implement :meth:`raw`; ``columns`` names the P columns, ``scale`` is what the
    constant-feature floor of :func:`lpla.attacks.base.standardise` measures against (1 for
    logs and Fisher z, ``None``: the values' own magnitude).
    """

    columns: tuple[str, ...] = ()
    scale: float | None = 1.0

    def raw(self, stats: QueryStats) -> np.ndarray:
        raise NotImplementedError

    def check_reference(self, stats: QueryStats, reference: QueryStats, who: str) -> None:
        """Refuse a reference on which the statistic does not mean the same (default: none)."""

    def values(self, item: AttackInput, calibration: str, attack: str, who: str) -> np.ndarray:
        """The statistic of ``item``'s candidates, calibrated per encoder (float64 ``[N, P]``)."""
        x = np.asarray(self.raw(item.stats), dtype=np.float64)
        return self._calibrated(x, item, calibration, attack, who)

    def reference_values(
        self, item: AttackInput, calibration: str, attack: str, who: str
    ) -> np.ndarray:
        """The statistic of ``item``'s reference images, on the scale of its candidates."""
        assert item.reference is not None
        z = np.asarray(self.raw(item.reference), dtype=np.float64)
        return self._calibrated(z, item, calibration, attack, who)

    def _calibrated(
        self, values: np.ndarray, item: AttackInput, calibration: str, attack: str, who: str
    ) -> np.ndarray:
        locate: _Calibration = CALIBRATIONS.get(calibration)
        place = locate(self, item, attack, who)
        if place is None:
            return values
        return standardise(values, place[0], place[1], self.scale)


class LogNormStatistic(PerImageStatistic):
    """LpLA's statistic: the log of the mean Lp norm over views (or of view 0's), per order p."""

    def __init__(self, p_values: Sequence[float], statistic: str) -> None:
        self.p_values = tuple(p_values)
        self.statistic = statistic
        self.columns = tuple(f"p={p_label(p)}" for p in self.p_values)
        self.scale = 1.0

    def raw(self, stats: QueryStats) -> np.ndarray:
        return np.stack(
            [norm_features(stats, p, self.statistic)[:, 0] for p in self.p_values], axis=1
        )


def _atanh(values: np.ndarray) -> np.ndarray:
    """Fisher's z of a similarity in [-1, 1]; +-1 (identical views) clipped to a finite value."""
    edge = 1.0 - 1e-7  # float32 embeddings: cosines closer to 1 than this are rounding
    return np.asarray(np.arctanh(np.clip(values, -edge, edge)))


#: transforms of a mean similarity before its Gaussians are fitted: name -> (function, the
#: similarities it is valid for or None for any, scale for the constant-feature floor)
SIMILARITY_TRANSFORMS: Registry[tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...] | None]]
SIMILARITY_TRANSFORMS = Registry("similarity transform")
SIMILARITY_TRANSFORMS.add(
    "atanh",
    (_atanh, ("cosine", "correlation")),
    "Fisher z, atanh(m): a bounded similarity near 1 becomes unbounded and near-Gaussian",
)
SIMILARITY_TRANSFORMS.add("none", (lambda v: v, None), "the mean similarity itself")
#: ``transform="auto"``: the transform for each similarity (others: ``none``)
AUTO_TRANSFORM = {"cosine": "atanh", "correlation": "atanh"}


class MeanSimilarityStatistic(PerImageStatistic):
    """EncoderMI-T's statistic: the mean of the K(K-1)/2 view-pair similarities, transformed."""

    def __init__(self, similarity: str, transform: str) -> None:
        fn, valid = SIMILARITY_TRANSFORMS.get(transform)
        if valid is not None and similarity not in valid:
            raise LplaError(
                f"transform={transform!r} needs a similarity in [-1, 1] ({', '.join(valid)}); "
                f"{similarity!r} is not; use transform='none'"
            )
        self.similarity = similarity
        self.transform = transform
        self._fn = fn
        self.columns = (similarity,)
        self.scale = 1.0 if transform == "atanh" else None

    def raw(self, stats: QueryStats) -> np.ndarray:
        mean = mean_similarity(AttackInput(stats), self.similarity, "none")
        return self._fn(mean)[:, None]

    def check_reference(self, stats: QueryStats, reference: QueryStats, who: str) -> None:
        if reference.n_views != stats.n_views:
            raise LplaError(
                f"the {who}'s reference has K={reference.n_views} views but its images have "
                f"K={stats.n_views}; the spread of a mean over view pairs depends on K "
                "(use .first_views(k) on both)"
            )


#: (statistic, encoder's input, attack name, who) -> (centre [P], spread [P]) of that encoder's
#: statistic, or ``None`` for no calibration
_Calibration = Callable[
    [PerImageStatistic, AttackInput, str, str], tuple[np.ndarray, np.ndarray] | None
]


def _by_reference(
    stat: PerImageStatistic, item: AttackInput, attack: str, who: str
) -> tuple[np.ndarray, np.ndarray]:
    if item.reference is None:
        raise LplaError(
            f"{attack} calibrates by reference but the {who} has none; "
            "pass reference= or use calibration='population'"
        )
    stat.check_reference(item.stats, item.reference, who)
    ref = np.asarray(stat.raw(item.reference), dtype=np.float64)
    return ref.mean(axis=0), ref.std(axis=0)


def _by_population(
    stat: PerImageStatistic, item: AttackInput, attack: str, who: str
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(stat.raw(item.stats), dtype=np.float64)
    return np.median(x, axis=0), x.std(axis=0)


def _uncalibrated(stat: PerImageStatistic, item: AttackInput, attack: str, who: str) -> None:
    return None


#: how each encoder's statistic is put on a common scale before per-image comparison
CALIBRATIONS: Registry[_Calibration] = Registry("calibration")
CALIBRATIONS.add(
    "reference", _by_reference, "standardised by the same encoder's answers on its reference set"
)
CALIBRATIONS.add(
    "population", _by_population, "standardised by the median and sd over its own candidates"
)
CALIBRATIONS.add("none", _uncalibrated, "raw (encoders that share one scale)")


def is_own_candidates(item: AttackInput) -> bool:
    """Whether ``item.reference`` is its candidates again (the pipeline's stand-in when no
    reference answers were given: the candidates calibrate themselves), not a population."""
    ref = item.reference
    if ref is None:
        return False
    if ref is item.stats:
        return True
    return ref.norms.shape == item.stats.norms.shape and bool(
        np.array_equal(ref.norms, item.stats.norms)
    )


# --- the per-image attack base -------------------------------------------------------------


@dataclass
class ShadowRows:
    """One shadow's labelled candidates: positions in ``candidates_``, IN mask, statistic."""

    pos: np.ndarray
    is_in: np.ndarray
    x: np.ndarray


class PerImageAttack(Attack):
    """Base of the attacks that compare each candidate with itself across M >= 2 shadows.

    ``fit`` takes the shadows over one candidate pool (matched by ``index``; each shadow's
    ``member`` says which candidates were IN its training set; -1 rows are ignored). Subclasses
    give the statistic (:meth:`_make_statistic`), learn from the shadows' rows (:meth:`_learn`)
    and score rows with or without one shadow (:meth:`_score_shadow`, for the honest
    leave-one-shadow-out ``threshold_``).
    """

    needs_shadow = True
    needs_reference = False
    min_shadows = 2

    calibration: str

    # --- for subclasses --------------------------------------------------------------------

    def _make_statistic(self, shadows: list[AttackInput]) -> PerImageStatistic:
        raise NotImplementedError

    def _learn(self, shadows: list[AttackInput], rows: list[ShadowRows]) -> None:
        raise NotImplementedError

    def _score_shadow(
        self, i: int, shadows: list[AttackInput], rows: list[ShadowRows]
    ) -> np.ndarray:
        """Scores of shadow ``i``'s labelled rows by what was learnt from the other shadows."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------

    def _fit(self, shadows: list[AttackInput]) -> None:
        self.stat_ = self._make_statistic(shadows)
        if self.calibration == "auto":
            with_ref = all(s.reference is not None for s in shadows)
            self.calibration_ = "reference" if with_ref else "population"
        else:
            self.calibration_ = self.calibration
        self.n_shadows_ = len(shadows)
        for i, s in enumerate(shadows):
            if np.unique(s.index).size != s.index.size:
                raise LplaError(
                    f"{_who(i, s)} lists a candidate index twice; each candidate appears once "
                    "per shadow"
                )
        labelled = [s.index[s.labelled] for s in shadows]
        self.candidates_ = np.unique(np.concatenate(labelled))
        seen = np.zeros(self.candidates_.size, dtype=np.int64)
        for idx in labelled:
            seen[np.searchsorted(self.candidates_, idx)] += 1
        if not (seen >= 2).any():
            raise LplaError(
                f"{self.name}: the shadows share no candidate image (no index is labelled in two "
                "of them); per-image attacks need every shadow queried on the same candidate "
                "pool, matched by index"
            )
        self.n_candidates_ = int(self.candidates_.size)
        self._learn(shadows, self._shadow_rows(shadows))

    def _statistic(self, item: AttackInput, who: str) -> np.ndarray:
        return self.stat_.values(item, self.calibration_, self.name, who)

    def _shadow_rows(self, shadows: list[AttackInput]) -> list[ShadowRows]:
        rows = []
        for i, s in enumerate(shadows):
            keep = s.labelled
            x = self._statistic(s, _who(i, s))[keep]
            pos = np.searchsorted(self.candidates_, s.index[keep])
            rows.append(ShadowRows(pos, s.member[keep] == 1, x))
        return rows

    def _shadow_scores(self, shadows: list[AttackInput]) -> tuple[np.ndarray, np.ndarray] | None:
        """Leave-one-shadow-out scores: each shadow scored by what the others taught."""
        rows = self._shadow_rows(shadows)
        scores = [self._score_shadow(i, shadows, rows) for i in range(len(shadows))]
        labels = [r.is_in.astype(np.int8) for r in rows]
        return np.concatenate(scores), np.concatenate(labels)

    def _positions(self, index: np.ndarray, warn: bool = True) -> np.ndarray:
        """Position of each index in ``candidates_``; -1 where no shadow has it."""
        pos = np.minimum(np.searchsorted(self.candidates_, index), self.candidates_.size - 1)
        pos = np.where(self.candidates_[pos] == index, pos, -1)
        unseen = int((pos < 0).sum())
        if unseen == pos.size and pos.size:
            raise LplaError(
                f"{self.name}: none of the target's {pos.size} images is a candidate of the "
                "shadows (no shared index); query the target and the shadows on the same "
                "candidate pool"
            )
        if unseen and warn:
            warnings.warn(
                f"{self.name}: {unseen} of {pos.size} target images are not candidates of any "
                "shadow; they are scored without a per-image calibration (fallbacks pooled over "
                "all candidates)",
                stacklevel=4,
            )
        return pos

    def _learn_direction(self, mu_in: np.ndarray, mu_out: np.ndarray, both: np.ndarray) -> None:
        """``direction_`` [P]: +1 where members' statistic is larger (mean per-candidate gap)."""
        given = getattr(self, "direction", None)
        if given is not None:
            gap = np.full(mu_in.shape[1], float(given))
        elif both.any():
            gap = (mu_in[both] - mu_out[both]).mean(axis=0)
        else:
            gap = np.ones(mu_in.shape[1])
        self.direction_ = np.where(gap >= 0, 1.0, -1.0)
        # results.json: which way each column moves for members (+1: larger)
        self.direction_by_column_ = {
            c: float(d) for c, d in zip(self.stat_.columns, self.direction_, strict=True)
        }


def _who(i: int, shadow: AttackInput) -> str:
    return f"shadow #{i} ({shadow.name})" if shadow.name else f"shadow #{i}"


# --- the Gaussian LiRA core ----------------------------------------------------------------


@dataclass
class CandidateSums:
    """Per-candidate sufficient statistics: counts [C], sums and sums of squares [C, P]."""

    n_in: np.ndarray
    s_in: np.ndarray
    q_in: np.ndarray
    n_out: np.ndarray
    s_out: np.ndarray
    q_out: np.ndarray

    @classmethod
    def zeros(cls, n_candidates: int, n_columns: int) -> CandidateSums:
        c, p = n_candidates, n_columns
        return cls(
            np.zeros(c), np.zeros((c, p)), np.zeros((c, p)),
            np.zeros(c), np.zeros((c, p)), np.zeros((c, p)),
        )  # fmt: skip

    def copy(self) -> CandidateSums:
        return CandidateSums(*(a.copy() for a in vars(self).values()))

    def add(self, rows: ShadowRows, sign: float) -> None:
        """Add (sign=+1) or remove (sign=-1) one shadow's values."""
        for mask, n, s, q in (
            (rows.is_in, self.n_in, self.s_in, self.q_in),
            (~rows.is_in, self.n_out, self.s_out, self.q_out),
        ):
            np.add.at(n, rows.pos[mask], sign)
            np.add.at(s, rows.pos[mask], sign * rows.x[mask])
            np.add.at(q, rows.pos[mask], sign * rows.x[mask] ** 2)


@dataclass
class _Table:
    mu_in: np.ndarray
    sd_in: np.ndarray
    mu_out: np.ndarray
    sd_out: np.ndarray
    global_row: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pooled_var(n: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray | None:
    """Within-candidate variance pooled over candidates with >= 2 values; ``None`` if none."""
    ok = n >= 2
    dof = float((n[ok] - 1).sum())
    if dof <= 0:
        return None
    within = q[ok] - s[ok] ** 2 / n[ok, None]
    return np.asarray(np.maximum(within.sum(axis=0) / dof, _MIN_VAR))


def _table(sums: CandidateSums, fix_variance: bool) -> _Table:
    """Per-candidate means and standard deviations, with fallbacks for missing IN/OUT values.

    A candidate with no IN value gets ``mu_out + delta`` (delta = mean IN-OUT gap over candidates
    that have both), and the converse; a candidate with neither gets the global class means.
    """
    n_in, n_out = sums.n_in[:, None], sums.n_out[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_in = sums.s_in / n_in
        mu_out = sums.s_out / n_out
    has_in, has_out = sums.n_in > 0, sums.n_out > 0
    both = has_in & has_out
    all_in = sums.s_in.sum(axis=0) / max(sums.n_in.sum(), 1)
    all_out = sums.s_out.sum(axis=0) / max(sums.n_out.sum(), 1)
    if both.any():
        delta = (mu_in[both] - mu_out[both]).mean(axis=0)
    elif has_in.any() and has_out.any():
        delta = all_in - all_out
    else:
        delta = np.zeros(sums.s_in.shape[1])
    g_in = all_in if has_in.any() else all_out + delta
    g_out = all_out if has_out.any() else all_in - delta
    mu_in = np.where(has_in[:, None], mu_in, np.where(has_out[:, None], mu_out + delta, g_in))
    mu_out = np.where(has_out[:, None], mu_out, np.where(has_in[:, None], mu_in - delta, g_out))

    var_in = _pooled_var(sums.n_in, sums.s_in, sums.q_in)
    var_out = _pooled_var(sums.n_out, sums.s_out, sums.q_out)
    if var_in is None and var_out is None:  # one value per candidate: use the spread over them
        spread = np.concatenate([mu_in[has_in] - g_in, mu_out[has_out] - g_out])
        var_in = var_out = np.maximum(spread.var(axis=0), _MIN_VAR)
    var_in = var_out if var_in is None else var_in
    var_out = var_in if var_out is None else var_out
    assert var_in is not None and var_out is not None
    sd_in = np.broadcast_to(np.sqrt(var_in), mu_in.shape).copy()
    sd_out = np.broadcast_to(np.sqrt(var_out), mu_out.shape).copy()
    if not fix_variance:
        with np.errstate(invalid="ignore", divide="ignore"):
            own_in = (sums.q_in - sums.s_in**2 / n_in) / (n_in - 1)
            own_out = (sums.q_out - sums.s_out**2 / n_out) / (n_out - 1)
        sd_in = np.where(n_in >= 2, np.sqrt(np.maximum(own_in, _MIN_VAR)), sd_in)
        sd_out = np.where(n_out >= 2, np.sqrt(np.maximum(own_out, _MIN_VAR)), sd_out)
    global_row = (g_in, np.sqrt(var_in), g_out, np.sqrt(var_out))
    return _Table(mu_in, sd_in, mu_out, sd_out, global_row)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return np.asarray(-0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi))


class GaussianLiraAttack(PerImageAttack):
    """LiRA on any per-image statistic: per-candidate IN/OUT Gaussians over the shadows.

    Online: ``sum_p log N(x; mu_in, s_in) - log N(x; mu_out, s_out)``; offline (OUT only,
    one-sided): ``sum_p direction * (x - mu_out) / s_out``. Subclasses set the statistic and
    keep the parameters ``mode``, ``calibration``, ``fix_variance`` and ``direction``.
    """

    mode: str
    fix_variance: bool | None
    direction: int | None

    @staticmethod
    def _check_lira_params(
        name: str, mode: str, calibration: str, fix_variance: Any, direction: Any
    ) -> None:
        check_choice(name, "mode", mode, ("online", "offline"))
        check_choice(name, "calibration", calibration, ("auto", *CALIBRATIONS.names()))
        check_choice(name, "fix_variance", fix_variance, (None, True, False))
        check_choice(name, "direction", direction, (None, 1, -1))

    def _learn(self, shadows: list[AttackInput], rows: list[ShadowRows]) -> None:
        self.fix_variance_ = (
            (self.n_shadows_ < 64) if self.fix_variance is None else self.fix_variance
        )
        sums = CandidateSums.zeros(self.candidates_.size, rows[0].x.shape[1])
        for r in rows:
            sums.add(r, +1.0)
        self.sums_ = sums
        self.table_ = _table(sums, self.fix_variance_)
        both = (sums.n_in > 0) & (sums.n_out > 0)
        self._learn_direction(self.table_.mu_in, self.table_.mu_out, both)

    def _score_shadow(
        self, i: int, shadows: list[AttackInput], rows: list[ShadowRows]
    ) -> np.ndarray:
        sums = self.sums_.copy()
        sums.add(rows[i], -1.0)
        return self._llr(_table(sums, self.fix_variance_), rows[i].x, rows[i].pos)

    def _llr(self, table: _Table, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Score rows ``x`` [n, P] of candidates at ``pos`` (-1 = unseen: global Gaussians)."""
        seen = pos >= 0
        safe = np.where(seen, pos, 0)
        cols = []
        for arr, fallback in zip(
            (table.mu_in, table.sd_in, table.mu_out, table.sd_out), table.global_row, strict=True
        ):
            cols.append(np.where(seen[:, None], arr[safe], fallback))
        mu_in, sd_in, mu_out, sd_out = cols
        if self.mode == "online":
            per_column = _log_normal(x, mu_in, sd_in) - _log_normal(x, mu_out, sd_out)
        else:
            per_column = self.direction_ * (x - mu_out) / sd_out
        return np.asarray(per_column.sum(axis=1))

    def _score(self, target: AttackInput) -> np.ndarray:
        x = self._statistic(target, "target")
        return self._llr(self.table_, x, self._positions(target.index))
