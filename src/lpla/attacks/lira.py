"""LiRA on per-image statistics: LpLA's log norms (``lpla-lira``) and EncoderMI-T's mean view-pair
similarity (``encodermi-t-lira``), through one core.

After LiRA (Carlini et al., S&P 2022): M shadow encoders are trained on random halves of a
population that contains the candidate images, so each candidate is IN for some shadows and OUT
for the others. Per candidate, Gaussians of its (calibrated) statistic are fitted over the IN and
the OUT shadows; the target's value is scored online with
``log N(x; mu_in, s_in) - log N(x; mu_out, s_out)`` or offline, one-sided, with
``direction * (x - mu_out) / s_out``. The per-image means remove what makes an image's statistic
large regardless of membership, which class-level attacks cannot do. Both attacks here are
:class:`~lpla.attacks.perimage.GaussianLiraAttack` with another
:class:`~lpla.attacks.perimage.PerImageStatistic`, so they are calibrated and scored identically:
the comparison between norms and similarities is fair. ``lira-combined`` weighs the two by their
held-out scores on the references.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from lpla.attacks.base import ATTACKS, Attack, check_choice, register_variant, resolve_p
from lpla.attacks.features import SIMILARITIES, AttackInput, PSpec, parse_p
from lpla.attacks.perimage import (
    AUTO_TRANSFORM,
    SIMILARITY_TRANSFORMS,
    GaussianLiraAttack,
    LogNormStatistic,
    MeanSimilarityStatistic,
    PerImageStatistic,
)
from lpla.errors import LplaError

__all__ = ["CombinedLiraAttack", "EncoderMITLiraAttack", "LiraAttack"]


@ATTACKS.register("lpla-lira", "LpLA-LiRA: per-image IN/OUT Gaussians over many shadows")
class LiraAttack(GaussianLiraAttack):
    """Per-candidate likelihood ratio of the log Lp-norm statistic (LiRA on norms).

    ``fit`` takes a list of M >= 2 shadow inputs over the same candidates (matched by ``index``);
    each shadow's ``member`` says which candidates were IN its training set (-1 rows ignored).
    ``score`` looks each target image up by its index.

    Args:
        mode: ``"online"`` (IN and OUT Gaussians) or ``"offline"`` (OUT only, one-sided).
        p: norm orders (``None``: all computed); per-p log ratios are summed.
        statistic: ``"mean"`` (log mean norm over views) or ``"clean"`` (log norm of view 0).
        calibration: ``"auto"`` (each encoder by its own reference when every shadow has one,
            else by its own candidates' median and std), ``"reference"``, ``"population"`` or
            ``"none"``.
        fix_variance: one pooled variance per class instead of per-candidate variances;
            ``None`` = fixed when M < 64 (LiRA's advice for few shadows).
        direction: offline only: +1 members larger, -1 smaller, ``None`` learnt from the shadows.
    """

    name = "lpla-lira"
    min_views = 1

    def __init__(
        self,
        mode: str = "online",
        p: PSpec | None = None,
        statistic: str = "mean",
        calibration: str = "auto",
        fix_variance: bool | None = None,
        direction: int | None = None,
    ) -> None:
        self._check_lira_params(self.name, mode, calibration, fix_variance, direction)
        check_choice(self.name, "statistic", statistic, ("mean", "clean"))
        if p is not None:
            parse_p(p)
        self.mode = mode
        self.p = p
        self.statistic = statistic
        self.calibration = calibration
        self.fix_variance = fix_variance
        self.direction = direction

    def _make_statistic(self, shadows: list[AttackInput]) -> PerImageStatistic:
        self.p_ = resolve_p(self.p, shadows[0].stats)
        return LogNormStatistic(self.p_, self.statistic)

    def _score(self, target: AttackInput) -> np.ndarray:
        resolve_p(self.p_, target.stats)  # a clear error when the target lacks an order
        return super()._score(target)


@ATTACKS.register(
    "encodermi-t-lira", "EncoderMI-T's mean view similarity through the same per-image LiRA"
)
class EncoderMITLiraAttack(GaussianLiraAttack):
    """LiRA on EncoderMI-T's statistic: the mean of the K(K-1)/2 view-pair similarities.

    The fair per-image comparison for ``lpla-lira``: the same candidates, shadows, calibration,
    Gaussians, modes and leave-one-shadow-out threshold; only the statistic differs.

    Args:
        mode: ``"online"`` or ``"offline"`` (as ``lpla-lira``).
        similarity: a registered similarity (``"cosine"``, ...).
        transform: ``"auto"`` (default: Fisher z, ``atanh``, for similarities in [-1, 1] such as
            the cosine; ``"none"`` for others), ``"atanh"`` or ``"none"``. A mean cosine of
            views piles up just below 1, where per-image Gaussians fit badly; atanh spreads it.
        calibration, fix_variance, direction: as ``lpla-lira``. Calibration by reference
            standardises by the reference's mean similarity, which needs the images' K.
    """

    name = "encodermi-t-lira"
    min_views = 2

    def __init__(
        self,
        mode: str = "online",
        similarity: str = "cosine",
        transform: str = "auto",
        calibration: str = "auto",
        fix_variance: bool | None = None,
        direction: int | None = None,
    ) -> None:
        self._check_lira_params(self.name, mode, calibration, fix_variance, direction)
        SIMILARITIES.get(similarity)
        check_choice(self.name, "transform", transform, ("auto", *SIMILARITY_TRANSFORMS.names()))
        if transform != "auto":
            MeanSimilarityStatistic(similarity, transform)  # a transform the similarity allows
        self.mode = mode
        self.similarity = similarity
        self.transform = transform
        self.calibration = calibration
        self.fix_variance = fix_variance
        self.direction = direction

    def _make_statistic(self, shadows: list[AttackInput]) -> PerImageStatistic:
        self.transform_ = (
            AUTO_TRANSFORM.get(self.similarity, "none")
            if self.transform == "auto"
            else self.transform
        )
        return MeanSimilarityStatistic(self.similarity, self.transform_)


@ATTACKS.register(
    "lira-combined", "lpla-lira + encodermi-t-lira, weighted by a fit on their held-out scores"
)
class CombinedLiraAttack(Attack):
    """Norms and view similarity together: a weighted sum of the two per-image LiRA scores.

    Both parts are fitted on the shadows as usual; the weights come from a logistic regression
    on their *leave-one-shadow-out* scores (each shadow scored by Gaussians fitted without it),
    so no shadow judges the weights on its own values: the references alone decide how much
    each signal counts, and ``threshold_`` is read from the same held-out scores.

    Args:
        mode, p, statistic, calibration: as ``lpla-lira`` (``mode`` and ``calibration`` also for
            the similarity part).
        similarity, transform: as ``encodermi-t-lira``.
        C: inverse L2 strength of the logistic regression (sklearn's).
    """

    name = "lira-combined"
    min_views = 2
    needs_shadow = True
    needs_reference = False
    min_shadows = 2

    def __init__(
        self,
        mode: str = "online",
        p: PSpec | None = None,
        statistic: str = "mean",
        similarity: str = "cosine",
        transform: str = "auto",
        calibration: str = "auto",
        C: float = 1.0,
    ) -> None:
        self._parts(mode, p, statistic, similarity, transform, calibration)  # validates
        if not (isinstance(C, int | float) and not isinstance(C, bool) and C > 0):
            raise LplaError(f"{self.name}: C must be a number > 0; got {C!r}")
        self.mode = mode
        self.p = p
        self.statistic = statistic
        self.similarity = similarity
        self.transform = transform
        self.calibration = calibration
        self.C = C

    @staticmethod
    def _parts(
        mode: str, p: PSpec | None, statistic: str, similarity: str, transform: str, cal: str
    ) -> tuple[LiraAttack, EncoderMITLiraAttack]:
        return (
            LiraAttack(mode=mode, p=p, statistic=statistic, calibration=cal),
            EncoderMITLiraAttack(mode=mode, similarity=similarity, transform=transform,
                                 calibration=cal),
        )  # fmt: skip

    def _fit(self, shadows: list[AttackInput]) -> None:
        parts = self._parts(
            self.mode, self.p, self.statistic, self.similarity, self.transform, self.calibration
        )
        columns, labels = [], None
        for part in parts:
            part.fit(shadows)
            held_out = part._shadow_scores(shadows)
            assert held_out is not None
            columns.append(held_out[0])
            assert labels is None or np.array_equal(labels, held_out[1])
            labels = held_out[1]
        assert labels is not None
        x = np.column_stack(columns)
        self.parts_ = parts
        self.n_shadows_, self.n_candidates_ = parts[0].n_shadows_, parts[0].n_candidates_
        self.centre_, self.spread_ = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-12)
        model = LogisticRegression(C=self.C).fit((x - self.centre_) / self.spread_, labels)
        self.coef_ = model.coef_[0]
        self.weight_norm_, self.weight_similarity_ = (float(w) for w in self.coef_)
        self._held_out = (x, labels)

    def _combine(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(((x - self.centre_) / self.spread_) @ self.coef_)

    def _shadow_scores(self, shadows: list[AttackInput]) -> tuple[np.ndarray, np.ndarray] | None:
        x, labels = self._held_out
        del self._held_out
        return self._combine(x), labels

    def _score(self, target: AttackInput) -> np.ndarray:
        return self._combine(np.column_stack([part.score(target) for part in self.parts_]))


# The offline settings under names of their own, so one run reports online and offline side by
# side (RMIA's and LiRA's papers both recommend offline when few references exist).
register_variant(
    LiraAttack,
    "lpla-lira-offline",
    "LpLA-LiRA offline: OUT references only, one-sided",
    mode="offline",
)
register_variant(
    EncoderMITLiraAttack,
    "encodermi-t-lira-offline",
    "EncoderMI-T's statistic through offline LiRA (OUT references only)",
    mode="offline",
)
