"""Norm attacks: LpLA (class-level likelihood ratio), LpLA-ref (no shadow), norm threshold.

LpLA is our reconstruction of the attack named in arXiv 2506.05743 (only its abstract is public):
the Lp norms of K views of an image are summarised by the log of their mean and the spread of
their logs; a Gaussian per class (members IN, non-members OUT) is fitted on a shadow encoder and
the target is scored with ``Lambda = log p_IN - log p_OUT``. Encoders put norms on different
scales, so by default each encoder's features are standardised by its own features on a
reference population (images that are members of no encoder involved).

The two Gaussians share one pooled covariance by default (``density="auto"`` picks ``"shared"``
unless the shadow is large and cross-validation on it clearly prefers separate covariances):
``Lambda`` is then linear in the features, a score that transfers from the shadow to the target
as a direction. Separate covariances make ``Lambda`` quadratic; when members' norms vary less
than non-members' it *falls* again for the largest norms, and that turn, learnt on one encoder,
lands in the wrong place on another (on real encoders it cost LpLA 0.07 AUC against the plain
norm threshold).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solve_triangular
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from lpla.attacks.base import (
    ATTACKS,
    REL_STD_FLOOR,
    Attack,
    check_choice,
    resolve_p,
    standardise,
    tiny_log,
)
from lpla.attacks.features import AttackInput, PSpec, QueryStats, parse_p
from lpla.errors import LplaError

__all__ = [
    "CV_FOLDS",
    "DENSITIES",
    "SEPARATE_MIN_AUC_GAIN",
    "SEPARATE_MIN_PER_CLASS_PER_DIM",
    "LplaAttack",
    "LplaDiffAttack",
    "LplaRefAttack",
    "NormThresholdAttack",
    "norm_features",
    "norm_location",
]

STATISTICS = ("mean+std", "mean", "clean")
DENSITIES = ("auto", "shared", "separate")
#: ``density="auto"`` considers separate covariances only with at least this many shadow members
#: and as many non-members per feature dimension of a density (a 2-D density: 500 per class);
#: with fewer, the cross-validated gain below is too noisy (sd 0.011 AUC at 1000 per class)
SEPARATE_MIN_PER_CLASS_PER_DIM = 250
#: ... and only when they beat a shared covariance by this much held-out AUC on the shadow (and
#: in held-out log-likelihood). The quadratic's turn, learnt on the shadow, need not fall in the
#: right place on the target (on real encoders it cost 0.07 AUC against the norm threshold), so
#: it must win clearly: where members' log norms sit 0.5 sd higher with half the variance it
#: gains only 0.015 in-distribution; where only the variances differ, linear ratios are at chance
#: and it gains 0.2
SEPARATE_MIN_AUC_GAIN = 0.05
#: folds of the stratified cross-validation behind ``density="auto"``
CV_FOLDS = 5


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
    return standardise(feats, ref.mean(axis=0), ref.std(axis=0), feature_scales(ref, log_space))


def feature_scales(feats: np.ndarray, log_space: bool = True) -> np.ndarray:
    """The magnitude behind each column of :func:`norm_features`, for the constant-feature floor.

    A standard deviation of a log is already relative, so log columns have scale 1 (a log norm
    that varies by 1e-8 is a norm constant up to float32 rounding, even when the log is near 0);
    the spread of raw norms (``log_space=False``) is measured against the typical norm.
    """
    scales = np.ones(feats.shape[1])
    if feats.shape[1] > 1 and not log_space:
        scales[1] = float(np.exp(feats[:, 0].mean()))
    return scales


class _Gaussian:
    """A multivariate normal with a Cholesky factor, for log densities."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray) -> None:
        self.mean = mean
        self.cov = cov
        self.chol = np.linalg.cholesky(cov)

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        z = solve_triangular(self.chol, (x - self.mean).T, lower=True)
        d = x.shape[1]
        log_det = 2.0 * np.log(np.diag(self.chol)).sum()
        return np.asarray(-0.5 * ((z**2).sum(axis=0) + log_det + d * math.log(2 * math.pi)))


_Densities = list[tuple[_Gaussian, _Gaussian]]  # (IN, OUT) per group of feature columns


def _fit_densities(
    x: np.ndarray, y: np.ndarray, groups: list[np.ndarray], ridge: float, density: str
) -> _Densities:
    """IN and OUT Gaussians per column group; ``"shared"`` gives both the pooled within-class
    covariance (a linear log ratio), ``"separate"`` each its own (a quadratic one)."""
    out = []
    for cols in groups:
        xg = x[:, cols]
        # the ridge is relative to each column's variance (> 0: constant columns were dropped),
        # with a 1e-9 floor so that ridge=0 still gives a proper density on a tiny shadow
        ridge_cov = np.diag((ridge + 1e-9) * xg.var(axis=0))
        members, others = xg[y == 1], xg[y == 0]
        cov_in = np.atleast_2d(np.cov(members, rowvar=False, bias=True))
        cov_out = np.atleast_2d(np.cov(others, rowvar=False, bias=True))
        if density == "shared":
            n_in, n_out = len(members), len(others)
            cov_in = cov_out = (n_in * cov_in + n_out * cov_out) / (n_in + n_out)
        out.append(
            (
                _Gaussian(members.mean(axis=0), cov_in + ridge_cov),
                _Gaussian(others.mean(axis=0), cov_out + ridge_cov),
            )
        )
    return out


def _log_ratio(densities: _Densities, groups: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    total = np.zeros(x.shape[0])
    for cols, (d_in, d_out) in zip(groups, densities, strict=True):
        total += d_in.logpdf(x[:, cols]) - d_out.logpdf(x[:, cols])
    return total


def _log_likelihood(
    densities: _Densities, groups: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """``log p(x | its own class)`` per row (groups independent, as in the summed ratio)."""
    total = np.zeros(x.shape[0])
    for cols, (d_in, d_out) in zip(groups, densities, strict=True):
        xg = x[:, cols]
        total += np.where(y == 1, d_in.logpdf(xg), d_out.logpdf(xg))
    return total


def _cross_validate(
    x: np.ndarray, y: np.ndarray, groups: list[np.ndarray], ridge: float, seed: int
) -> dict[str, float]:
    """Mean held-out AUC and log-likelihood per image of shared and separate covariances over
    :data:`CV_FOLDS` stratified folds of the shadow."""
    sums = dict.fromkeys(("auc_shared", "auc_separate", "loglik_shared", "loglik_separate"), 0.0)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for train, test in folds.split(x, y):
        for density in ("shared", "separate"):
            fitted = _fit_densities(x[train], y[train], groups, ridge, density)
            llr = _log_ratio(fitted, groups, x[test])
            sums[f"auc_{density}"] += float(roc_auc_score(y[test], llr)) / CV_FOLDS
            loglik = _log_likelihood(fitted, groups, x[test], y[test]).mean()
            sums[f"loglik_{density}"] += float(loglik) / CV_FOLDS
    return sums


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
        statistic: ``"auto"`` (default: ``"clean"`` when view 0 is the clean image, else
            ``"mean"``), ``"mean+std"``, ``"mean"`` or ``"clean"`` (see :func:`norm_features`).
            The spread over views (``mean+std``) fits the shadow but did not transfer to the
            target in our runs (docs/results.md §1), and the clean image's norm is the strongest
            single norm statistic when the attacker sends it; the choice is ``statistic_``.
        log_space: spread over views = std of the log norms (default) or of the norms.
        calibration: ``"reference"`` (default, standardise each encoder by its own reference)
            or ``"none"``.
        combine: several p: ``"sum"`` of per-p log ratios (independent) or ``"joint"`` Gaussian.
        ridge: added to each covariance's diagonal, as a fraction of the feature's variance on
            the shadow, so that tiny shadows still give proper densities.
        density: ``"shared"`` (one pooled covariance: a linear log ratio, which transfers),
            ``"separate"`` (a covariance per class: quadratic) or ``"auto"`` (default:
            separate only with at least :data:`SEPARATE_MIN_PER_CLASS_PER_DIM` shadow images
            per class per feature dimension *and* a held-out gain of at least
            :data:`SEPARATE_MIN_AUC_GAIN` AUC and of log-likelihood in :data:`CV_FOLDS`-fold
            cross-validation on the shadow; otherwise shared).
        random_state: seed of the cross-validation folds of ``density="auto"``.

    Fitted attributes: ``density_`` (the density used), ``density_reason_`` (why, in words),
    ``density_cv_`` (held-out ``auc_*``/``loglik_*`` of both densities; ``None`` when no
    cross-validation ran), ``groups_`` (feature columns per density; features constant on the
    shadow are left out), ``threshold_``.

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
        statistic: str = "auto",
        log_space: bool = True,
        calibration: str = "reference",
        combine: str = "sum",
        ridge: float = 1e-3,
        density: str = "auto",
        random_state: int = 0,
    ) -> None:
        check_choice(self.name, "statistic", statistic, ("auto", *STATISTICS))
        check_choice(self.name, "calibration", calibration, ("reference", "none"))
        check_choice(self.name, "combine", combine, ("sum", "joint"))
        check_choice(self.name, "density", density, DENSITIES)
        if p is not None:
            parse_p(p)
        if not ridge >= 0:
            raise LplaError(f"{self.name}: ridge must be >= 0; got {ridge}")
        self.p = p
        self.statistic = statistic
        self.log_space = log_space
        self.calibration = calibration
        self.combine = combine
        self.ridge = ridge
        self.density = density
        self.random_state = random_state

    def _features(self, item: AttackInput, p_values: tuple[float, ...], who: str) -> np.ndarray:
        calibrate = self.calibration == "reference"
        return np.concatenate(
            [
                _calibrated(item, p, self.statistic_, self.log_space, calibrate, who)
                for p in p_values
            ],
            axis=1,
        )

    def _fit(self, shadows: list[AttackInput]) -> None:
        self.p_ = resolve_p(self.p, shadows[0].stats)
        self.statistic_ = self.statistic
        if self.statistic == "auto":
            clean = all(s.stats.clean_view0 for s in shadows)
            self.statistic_ = "clean" if clean else "mean"
        feats, labels = [], []
        for i, s in enumerate(shadows):
            assert s.member is not None
            keep = s.labelled
            feats.append(self._features(s, self.p_, f"shadow #{i}")[keep])
            labels.append(s.member[keep])
        x, y = np.concatenate(feats), np.concatenate(labels)
        if min((y == 1).sum(), (y == 0).sum()) < 2:
            raise LplaError(f"{self.name} needs at least 2 shadow members and 2 shadow non-members")
        self.n_features_ = x.shape[1]
        self.n_views_ = shadows[0].stats.n_views
        per_p = self.n_features_ // len(self.p_)
        blocks = [np.arange(i * per_p, (i + 1) * per_p) for i in range(len(self.p_))]
        groups = [np.arange(self.n_features_)] if self.combine == "joint" else blocks
        # a feature constant on the shadow (zeroed by calibration, or rounding noise) says nothing
        if self.calibration == "reference":
            scale = np.ones(self.n_features_)
        else:
            scale = np.concatenate([feature_scales(x[:, b], self.log_space) for b in blocks])
        informative = x.std(axis=0) > REL_STD_FLOOR * scale
        self.groups_ = [g[informative[g]] for g in groups if informative[g].any()]
        self.density_, self.density_reason_, self.density_cv_ = self._choose_density(x, y)
        self.densities_ = _fit_densities(x, y, self.groups_, self.ridge, self.density_)

    def _choose_density(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[str, str, dict[str, float] | None]:
        """The density to fit, why, and the cross-validation behind an ``auto`` choice."""
        if self.density != "auto":
            return self.density, "requested", None
        if not self.groups_:
            return "shared", "auto: no feature varies on the shadow", None
        n_min = int(min((y == 1).sum(), (y == 0).sum()))
        need = SEPARATE_MIN_PER_CLASS_PER_DIM * max(g.size for g in self.groups_)
        if n_min < need:
            return (
                "shared",
                f"auto: {n_min} shadow images in the smaller class, separate covariances "
                f"need >= {need}",
                None,
            )
        cv = _cross_validate(x, y, self.groups_, self.ridge, self.random_state)
        gain = cv["auc_separate"] - cv["auc_shared"]
        better_fit = cv["loglik_separate"] > cv["loglik_shared"]
        chosen = "separate" if gain >= SEPARATE_MIN_AUC_GAIN and better_fit else "shared"
        return (
            chosen,
            f"auto: {CV_FOLDS}-fold held-out AUC separate {cv['auc_separate']:.3f} vs shared "
            f"{cv['auc_shared']:.3f} (separate needs +{SEPARATE_MIN_AUC_GAIN})",
            cv,
        )

    def _score(self, target: AttackInput) -> np.ndarray:
        resolve_p(self.p_, target.stats)
        x = self._features(target, self.p_, "target")
        _check_features(self.n_features_, x, "target", self.n_views_, target.stats.n_views)
        return _log_ratio(self.densities_, self.groups_, x)


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
        density: str = "auto",
        random_state: int = 0,
    ) -> None:
        super().__init__(
            p, statistic, log_space, "reference", combine, ridge, density, random_state
        )

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
        z = standardise(loc, ref.mean(axis=0), ref.std(axis=0), scale=1.0)  # logs
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
