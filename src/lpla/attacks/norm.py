"""Norm attacks: LpLA (class-level likelihood ratio), LpLA-ref (no shadow), norm threshold.

LpLA is our reconstruction of the attack named in arXiv 2506.05743 (only its abstract is public):
the Lp norms of K views of an image are summarised by the log of their mean and the spread of
their logs; a Gaussian per class (members IN, non-members OUT) is fitted on a shadow encoder and
the target is scored with ``Lambda = log p_IN - log p_OUT``. Encoders put norms on different
scales, so by default each encoder's features are standardised by its own features on a
reference population (images that are members of no encoder involved).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solve_triangular

from lpla.attacks.base import (
    ATTACKS,
    Attack,
    check_choice,
    resolve_p,
    standardise,
    tiny_log,
)
from lpla.attacks.features import AttackInput, PSpec, QueryStats, parse_p
from lpla.errors import LplaError

__all__ = [
    "LplaAttack",
    "LplaDiffAttack",
    "LplaRefAttack",
    "NormThresholdAttack",
    "norm_features",
    "norm_location",
]

STATISTICS = ("mean+std", "mean", "clean")


def norm_location(stats: QueryStats, p: float, statistic: str) -> np.ndarray:
    """Per-image norm ``[N]``: the mean over views, or view 0 (the clean image) for ``clean``."""
    norms = stats.norm(p)
    if statistic == "clean":
        if not stats.clean_view0:
            raise LplaError(
                "statistic='clean' needs view 0 to be the clean image; query with "
                "clean_view0=True or use statistic='mean'"
            )
        return norms[:, 0]
    return norms.mean(axis=1)


def norm_features(
    stats: QueryStats, p: float, statistic: str, log_space: bool = True
) -> np.ndarray:
    """Per-image features ``[N, F]`` from the K norms of order ``p``.

    Column 0 is the log of :func:`norm_location` (log mean norm, or log clean norm). With
    ``mean+std`` and K > 1 a second column holds the spread over views: the standard deviation
    of the log norms (``log_space``, scale-free) or of the norms themselves.
    """
    columns = [tiny_log(norm_location(stats, p, statistic))]
    if statistic == "mean+std" and stats.n_views > 1:
        norms = stats.norm(p)
        columns.append(tiny_log(norms).std(axis=1) if log_space else norms.std(axis=1))
    return np.stack(columns, axis=1)


def _calibrated(
    item: AttackInput, p: float, statistic: str, log_space: bool, calibrate: bool, who: str
) -> np.ndarray:
    """Features of ``item``, standardised by its own reference population when asked."""
    feats = norm_features(item.stats, p, statistic, log_space)
    if not calibrate:
        return feats
    if item.reference is None:
        raise LplaError(
            f"calibration='reference' needs reference statistics for the {who} (the same "
            "encoder on population images that are members of no encoder); pass reference= "
            "or use calibration='none'"
        )
    if feats.shape[1] > 1 and item.reference.n_views != item.stats.n_views:
        raise LplaError(
            f"the {who}'s reference has K={item.reference.n_views} views but its images have "
            f"K={item.stats.n_views}; the spread over views needs the same K "
            "(use .first_views(k) on both)"
        )
    ref = norm_features(item.reference, p, statistic, log_space)
    return standardise(feats, ref.mean(axis=0), ref.std(axis=0))


class _Gaussian:
    """A multivariate normal with a Cholesky factor, for log densities."""

    def __init__(self, data: np.ndarray, ridge_var: np.ndarray) -> None:
        self.mean = data.mean(axis=0)
        cov = np.atleast_2d(np.cov(data, rowvar=False, bias=True))
        self.cov = cov + np.diag(ridge_var)
        self.chol = np.linalg.cholesky(self.cov)

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        z = solve_triangular(self.chol, (x - self.mean).T, lower=True)
        d = x.shape[1]
        log_det = 2.0 * np.log(np.diag(self.chol)).sum()
        return np.asarray(-0.5 * ((z**2).sum(axis=0) + log_det + d * math.log(2 * math.pi)))


def _check_features(expected: int, got: np.ndarray, who: str, k_fit: int, k_now: int) -> None:
    if got.shape[1] != expected:
        raise LplaError(
            f"the {who} gives {got.shape[1]} norm feature(s) but the attack was fitted on "
            f"{expected} (K={k_fit} views at fit, K={k_now} now); query the same K or use "
            "statistic='mean'"
        )


@ATTACKS.register("lpla", "LpLA: Gaussian likelihood ratio of log mean Lp norm (+ spread)")
class LplaAttack(Attack):
    """Embedding Lp-norm likelihood attack (class-level densities, transferred to the target).

    Args:
        p: norm orders to use (``None``: every order in the statistics).
        statistic: ``"mean+std"`` (default), ``"mean"`` or ``"clean"`` (see :func:`norm_features`).
        log_space: spread over views = std of the log norms (default) or of the norms.
        calibration: ``"reference"`` (default, standardise each encoder by its own reference)
            or ``"none"``.
        combine: several p: ``"sum"`` of per-p log ratios (independent) or ``"joint"`` Gaussian.
        ridge: added to each covariance's diagonal, as a fraction of the pooled variance, so that
            tiny shadows and near-constant features still give proper densities.

    Example:
        >>> attack = create_attack("lpla", p=[1, 2, "inf"]).fit(shadow)  # doctest: +SKIP
        >>> scores = attack.score(target)  # doctest: +SKIP
    """

    name = "lpla"
    min_views = 1
    needs_shadow = True
    needs_reference = True

    def __init__(
        self,
        p: PSpec | None = None,
        statistic: str = "mean+std",
        log_space: bool = True,
        calibration: str = "reference",
        combine: str = "sum",
        ridge: float = 1e-3,
    ) -> None:
        check_choice(self.name, "statistic", statistic, STATISTICS)
        check_choice(self.name, "calibration", calibration, ("reference", "none"))
        check_choice(self.name, "combine", combine, ("sum", "joint"))
        if p is not None:
            parse_p(p)
        if not ridge >= 0:
            raise LplaError(f"lpla: ridge must be >= 0; got {ridge}")
        self.p = p
        self.statistic = statistic
        self.log_space = log_space
        self.calibration = calibration
        self.combine = combine
        self.ridge = ridge

    def _features(self, item: AttackInput, p_values: tuple[float, ...], who: str) -> np.ndarray:
        calibrate = self.calibration == "reference"
        return np.concatenate(
            [
                _calibrated(item, p, self.statistic, self.log_space, calibrate, who)
                for p in p_values
            ],
            axis=1,
        )

    def _fit(self, shadows: list[AttackInput]) -> None:
        self.p_ = resolve_p(self.p, shadows[0].stats)
        feats, labels = [], []
        for i, s in enumerate(shadows):
            assert s.member is not None
            keep = s.labelled
            feats.append(self._features(s, self.p_, f"shadow #{i}")[keep])
            labels.append(s.member[keep])
        x, y = np.concatenate(feats), np.concatenate(labels)
        if min((y == 1).sum(), (y == 0).sum()) < 2:
            raise LplaError("lpla needs at least 2 shadow members and 2 shadow non-members")
        self.n_features_ = x.shape[1]
        self.n_views_ = shadows[0].stats.n_views
        per_p = self.n_features_ // len(self.p_)
        if self.combine == "joint":
            self.groups_ = [np.arange(self.n_features_)]
        else:
            self.groups_ = [np.arange(i * per_p, (i + 1) * per_p) for i in range(len(self.p_))]
        self.in_density_, self.out_density_ = [], []
        for cols in self.groups_:
            xg = x[:, cols]
            ridge_var = self.ridge * xg.var(axis=0) + 1e-12
            self.in_density_.append(_Gaussian(xg[y == 1], ridge_var))
            self.out_density_.append(_Gaussian(xg[y == 0], ridge_var))

    def _score(self, target: AttackInput) -> np.ndarray:
        resolve_p(self.p_, target.stats)
        x = self._features(target, self.p_, "target")
        _check_features(self.n_features_, x, "target", self.n_views_, target.stats.n_views)
        total = np.zeros(x.shape[0])
        for cols, d_in, d_out in zip(
            self.groups_, self.in_density_, self.out_density_, strict=True
        ):
            total += d_in.logpdf(x[:, cols]) - d_out.logpdf(x[:, cols])
        return total


@ATTACKS.register(
    "lpla-diff", "LpLA with per-image difficulty calibration against an encoder that never saw it"
)
class LplaDiffAttack(LplaAttack):
    """LpLA on *difficulty-calibrated* norms: an image's norm relative to its norm elsewhere.

    Norms differ far more between images (class, contrast, size of the object) than between
    members and non-members, so a class-level density of raw norms is dominated by that nuisance.
    Following difficulty calibration (Watson et al., ICLR 2022) and LiRA's offline test, each
    image's feature is its standardised log norm under the encoder minus its standardised log
    norm under another encoder that never trained on it. With one shadow this costs two extra
    query sets and no extra training: the shadow is the baseline for the target's candidates and
    the target is the baseline for the shadow's candidates (neither trained on the other's).
    Each side is standardised by its own reference population, as in :class:`LplaAttack`.

    Args: as :class:`LplaAttack` (``calibration`` is always by reference); the default
    ``statistic`` is ``"mean"`` because the spread over views carries little signal here.
    """

    name = "lpla-diff"
    needs_baseline = True

    def __init__(
        self,
        p: PSpec | None = None,
        statistic: str = "mean",
        log_space: bool = True,
        combine: str = "sum",
        ridge: float = 1e-3,
    ) -> None:
        super().__init__(p, statistic, log_space, "reference", combine, ridge)

    def _features(self, item: AttackInput, p_values: tuple[float, ...], who: str) -> np.ndarray:
        own = super()._features(item, p_values, who)
        if item.baseline is None:
            raise LplaError(
                f"lpla-diff needs baseline statistics for the {who}: the same images queried on "
                "an encoder that did not train on them (audit computes them; or use lpla)"
            )
        if item.baseline_reference is None:
            raise LplaError(
                f"lpla-diff needs the baseline encoder's reference statistics for the {who}"
            )
        base = AttackInput(item.baseline, reference=item.baseline_reference, name=f"{who} baseline")
        return own - super()._features(base, p_values, f"{who}'s baseline")


@ATTACKS.register("lpla-ref", "LpLA-ref: z-score of the log Lp norm against a reference set")
class LplaRefAttack(Attack):
    """No-shadow LpLA: how far above its own reference population an image's norm lies.

    ``score = direction * (f - mean_ref) / std_ref`` with ``f`` the log mean (or clean) norm,
    averaged over the norm orders. The direction is ``+1`` (members have larger norms, as
    measured) unless given, or learnt from a shadow when :meth:`fit` gets one; ``fit(None)`` is
    allowed and leaves ``threshold_`` as ``None``.
    """

    name = "lpla-ref"
    min_views = 1
    needs_shadow = False
    needs_reference = True
    min_shadows = 0

    def __init__(
        self,
        p: PSpec | None = None,
        statistic: str = "mean",
        direction: int | None = None,
    ) -> None:
        check_choice(self.name, "statistic", statistic, ("mean", "clean"))
        check_choice(self.name, "direction", direction, (None, 1, -1))
        if p is not None:
            parse_p(p)
        self.p = p
        self.statistic = statistic
        self.direction = direction

    def _location(self, item: AttackInput, p_values: tuple[float, ...]) -> np.ndarray:
        return np.stack([norm_features(item.stats, p, self.statistic)[:, 0] for p in p_values], 1)

    def _fit(self, shadows: list[AttackInput]) -> None:
        self.p_ = resolve_p(self.p, shadows[0].stats) if shadows else self.p
        if self.direction is not None or not shadows:
            self.direction_ = np.array([float(self.direction or 1)])
            return
        # the sign of (members - non-members) is unchanged by each encoder's affine calibration
        gaps = []
        for s in shadows:
            assert s.member is not None
            loc = self._location(s, self.p_)  # type: ignore[arg-type]
            gaps.append(loc[s.member == 1].mean(axis=0) - loc[s.member == 0].mean(axis=0))
        self.direction_ = np.where(np.mean(gaps, axis=0) >= 0, 1.0, -1.0)

    def _shadow_scores(self, shadows: list[AttackInput]) -> tuple[np.ndarray, np.ndarray] | None:
        if any(s.reference is None for s in shadows):
            return None  # no reference on a shadow: no honest threshold, only AUC-type metrics
        return super()._shadow_scores(shadows)

    def _score(self, target: AttackInput) -> np.ndarray:
        p_values = resolve_p(self.p_, target.stats)
        if target.reference is None:
            raise LplaError(
                "lpla-ref scores against the target's reference population; pass "
                "reference= (the encoder's statistics on known non-member images)"
            )
        loc = self._location(target, p_values)
        ref = self._location(AttackInput(target.reference), p_values)
        z = standardise(loc, ref.mean(axis=0), ref.std(axis=0))
        direction = np.broadcast_to(self.direction_, (len(p_values),))
        return np.asarray((z * direction).mean(axis=1))


@ATTACKS.register("norm-threshold", "raw mean Lp norm as the score (likelihood-free ablation)")
class NormThresholdAttack(Attack):
    """The mean (or clean-view) Lp norm itself; the shadow only picks ``threshold_``.

    Args:
        p: one norm order (``None``: the first computed).
        statistic: ``"mean"`` or ``"clean"``.
    """

    name = "norm-threshold"
    min_views = 1
    needs_shadow = True
    needs_reference = False

    def __init__(self, p: float | str | None = None, statistic: str = "mean") -> None:
        check_choice(self.name, "statistic", statistic, ("mean", "clean"))
        if p is not None and len(parse_p(p)) != 1:
            raise LplaError("norm-threshold uses one norm order; pass a single p")
        self.p = p
        self.statistic = statistic

    def _fit(self, shadows: list[AttackInput]) -> None:
        stats = shadows[0].stats
        self.p_ = stats.p[0] if self.p is None else parse_p(self.p)[0]
        stats.p_index(self.p_)

    def _score(self, target: AttackInput) -> np.ndarray:
        return norm_location(target.stats, self.p_, self.statistic)
