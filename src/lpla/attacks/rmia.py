"""LpLA-RMIA: RMIA's pairwise likelihood-ratio test on LpLA's norm statistic.

After RMIA (Zarifzadeh, Liu and Shokri, "Low-Cost High-Power Membership Inference Attacks",
ICML 2024; reference code: privacytrustlab/ml_privacy_meter). The target's answer on an image x is
compared with the reference encoders' answers on the same image, *and* with the same comparison on
population samples z::

    LR(x) = Pr(x | target) / Pr(x),        Pr(x) = mean over reference encoders of Pr(x | ref)
    score(x) = fraction of z with LR(x) / LR(z) >= gamma

Online, Pr(x) averages every reference (IN and OUT for x); offline only the OUT ones, with the
paper's interpolation ``Pr(x) = ((1 + a) * mean_out + (1 - a)) / 2`` (it assumes
``Pr_in = a * Pr_out + (1 - a)``). RMIA's ``Pr(x | model)`` is a probability; a norm is not, so
the signal is a bounded, probability-like transform of it (:data:`RMIA_SIGNALS`):
``sigmoid(direction * z)``, with ``z`` the encoder's calibrated log norm and the direction learnt
from the references (members -> 1, as a member's confidence goes to 1). With several norm
orders, the per-order ratios multiply (their logs add). For a fixed set of z the score is the
empirical CDF of ``LR(z)`` at ``LR(x) / gamma``, computed by sorting: O((N + Nz) log Nz).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from lpla.attacks.base import ATTACKS, check_choice, register_variant, resolve_p
from lpla.attacks.features import AttackInput, PSpec, parse_p
from lpla.attacks.perimage import (
    CALIBRATIONS,
    CandidateSums,
    LogNormStatistic,
    PerImageAttack,
    PerImageStatistic,
    ShadowRows,
    is_own_candidates,
)
from lpla.errors import LplaError
from lpla.registry import Registry

__all__ = ["OFFLINE_A_GRID", "RMIA_SIGNALS", "RmiaAttack"]

#: ``offline_a=None``: the values tried on the references (the grid of privacy_meter's
#: ``tune_offline_a``)
OFFLINE_A_GRID = tuple(round(0.1 * i, 1) for i in range(11))

#: calibrated statistic [n, P] x direction [P] -> probability-like Pr(x | encoder) in (0, 1)
RMIA_SIGNALS: Registry[Callable[[np.ndarray, np.ndarray], np.ndarray]] = Registry("rmia signal")
RMIA_SIGNALS.add(
    "sigmoid",
    lambda x, direction: np.asarray(expit(direction * x)),
    "sigmoid of the calibrated statistic, oriented so that members go to 1",
)

_TINY = np.finfo(np.float64).tiny


def _prior_online(sums: CandidateSums, a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pr(x) per candidate from every reference; also which candidates have one, and a fallback."""
    n = (sums.n_in + sums.n_out)[:, None]
    total = sums.s_in + sums.s_out
    fallback = total.sum(axis=0) / max(float(n.sum()), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n, n[:, 0] > 0, fallback


def _prior_offline(sums: CandidateSums, a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pr(x) from the OUT references only, by the paper's interpolation."""
    n = sums.n_out[:, None]
    fallback = sums.s_out.sum(axis=0) / max(float(n.sum()), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_out = sums.s_out / n
    return _interpolate(mean_out, a), n[:, 0] > 0, _interpolate(fallback, a)


def _interpolate(mean_out: np.ndarray, a: float) -> np.ndarray:
    return np.asarray(((1.0 + a) * mean_out + (1.0 - a)) / 2.0)


#: mode -> Pr(x) per candidate from the references' sums of Pr(x | ref)
_PRIORS = {"online": _prior_online, "offline": _prior_offline}
#: mode -> Pr(z) of population images (OUT of every reference) from the mean of Pr(z | ref)
_POPULATION_PRIORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "online": lambda mean, a: mean,
    "offline": _interpolate,
}


@ATTACKS.register("lpla-rmia", "LpLA-RMIA: RMIA's pairwise likelihood ratios on norm statistics")
class RmiaAttack(PerImageAttack):
    """RMIA on the log Lp-norm statistic, over M >= 2 reference (shadow) encoders.

    ``fit`` takes the shadows over one candidate pool (matched by ``index``, as ``lpla-lira``);
    scores are in [0, 1], the fraction of population samples z that x beats by ``gamma``.

    Args:
        mode: ``"online"`` (Pr(x) over every reference) or ``"offline"`` (OUT references only).
        gamma: the pairwise threshold of ``LR(x) / LR(z)``. Default 1 (privacy_meter's
            ``ratios > 1``). The paper's released configs use 2 on softmax probabilities that span
            orders of magnitude; a sigmoid of norms moves by far less between encoders, and
            ``gamma=2`` ties nearly every score at 0 (measured: docs/method.md).
        offline_a: ``a`` of the offline interpolation, in [0, 1]; ``None`` (default): tuned on
            the references, as the paper prescribes, by attacking each reference with the others
            for every a in :data:`OFFLINE_A_GRID` and keeping the best AUC (``offline_a_``; the
            paper's CIFAR-10 configs use 0.33, privacy_meter's default is 0.3).
        p, statistic: norm orders (``None``: all computed) and ``"mean"`` / ``"clean"``.
        calibration: as ``lpla-lira`` (``"auto"``, ``"reference"``, ``"population"``, ``"none"``).
        signal: how a calibrated statistic becomes Pr(x | encoder) (:data:`RMIA_SIGNALS`).
        population: where z comes from. ``"reference"``: the reference images (members of no
            encoder; every encoder must have answers on the same images, in the same order);
            ``"candidates"``: every candidate of the scored encoder (RMIA allows z from the
            population pool; no label is used); ``"auto"`` (default): the references when every
            shadow has one of one size, else the candidates (``population_``).
        direction: +1 members larger, -1 smaller, ``None`` learnt from the shadows.
    """

    name = "lpla-rmia"
    min_views = 1

    def __init__(
        self,
        mode: str = "online",
        gamma: float = 1.0,
        offline_a: float | None = None,
        p: PSpec | None = None,
        statistic: str = "mean",
        calibration: str = "auto",
        signal: str = "sigmoid",
        population: str = "auto",
        direction: int | None = None,
    ) -> None:
        check_choice(self.name, "mode", mode, tuple(_PRIORS))
        check_choice(self.name, "statistic", statistic, ("mean", "clean"))
        check_choice(self.name, "calibration", calibration, ("auto", *CALIBRATIONS.names()))
        check_choice(self.name, "signal", signal, RMIA_SIGNALS.names())
        check_choice(self.name, "population", population, ("auto", "reference", "candidates"))
        check_choice(self.name, "direction", direction, (None, 1, -1))
        if not _number(gamma) or not 0 < gamma < math.inf:
            raise LplaError(f"{self.name}: gamma must be a number > 0; got {gamma!r}")
        if offline_a is not None and (not _number(offline_a) or not 0 <= offline_a <= 1):
            raise LplaError(
                f"{self.name}: offline_a must be in [0, 1] (or None: tuned on the references); "
                f"got {offline_a!r}"
            )
        if p is not None:
            parse_p(p)
        self.mode = mode
        self.gamma = gamma
        self.offline_a = offline_a
        self.p = p
        self.statistic = statistic
        self.calibration = calibration
        self.signal = signal
        self.population = population
        self.direction = direction

    # --- fit -----------------------------------------------------------------------------

    def _make_statistic(self, shadows: list[AttackInput]) -> PerImageStatistic:
        self.p_ = resolve_p(self.p, shadows[0].stats)
        return LogNormStatistic(self.p_, self.statistic)

    def _learn(self, shadows: list[AttackInput], rows: list[ShadowRows]) -> None:
        stat_sums = CandidateSums.zeros(self.candidates_.size, rows[0].x.shape[1])
        for r in rows:
            stat_sums.add(r, +1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu_in = stat_sums.s_in / stat_sums.n_in[:, None]
            mu_out = stat_sums.s_out / stat_sums.n_out[:, None]
        self._learn_direction(mu_in, mu_out, (stat_sums.n_in > 0) & (stat_sums.n_out > 0))
        self.population_ = self._choose_population(shadows)
        sums = CandidateSums.zeros(self.candidates_.size, rows[0].x.shape[1])
        for r in rows:
            sums.add(self._as_signal(r), +1.0)
        self.sums_ = sums
        if self.population_ == "reference":
            z = [self._population_signal(s, f"shadow #{i}") for i, s in enumerate(shadows)]
            self.population_sum_ = np.sum(z, axis=0)
            self.n_population_ = int(self.population_sum_.shape[0])
        if self.mode == "online":
            self.offline_a_ = None
        elif self.offline_a is not None:
            self.offline_a_ = float(self.offline_a)
        else:
            self.offline_a_, self.offline_a_auc_ = self._tune_offline_a(shadows, rows)

    def _choose_population(self, shadows: list[AttackInput]) -> str:
        real = [s.reference is not None and not is_own_candidates(s) for s in shadows]
        sizes = {s.reference.n_images for s in shadows if s.reference is not None}
        usable = all(real) and len(sizes) == 1
        if self.population == "reference" and not usable:
            raise LplaError(
                f"{self.name}: population='reference' needs every shadow's answers on the same "
                f"reference images (members of no encoder); {sum(real)} of {len(shadows)} "
                f"shadows have a reference set, of sizes {sorted(sizes)}; pass reference= or use "
                "population='candidates'"
            )
        if self.population == "auto":
            return "reference" if usable else "candidates"
        return self.population

    def _tune_offline_a(
        self, shadows: list[AttackInput], rows: list[ShadowRows]
    ) -> tuple[float, float]:
        """The grid value of ``a`` whose leave-one-shadow-out scores have the best AUC."""
        labels = np.concatenate([r.is_in for r in rows])
        best_a, best_auc = OFFLINE_A_GRID[0], -1.0
        for a in OFFLINE_A_GRID:
            scores = [self._loo_scores(i, shadows, rows, a) for i in range(len(shadows))]
            auc = float(roc_auc_score(labels, np.concatenate(scores)))
            if auc > best_auc:
                best_a, best_auc = a, auc
        return best_a, best_auc

    # --- signals ---------------------------------------------------------------------------

    def _signal(self, x: np.ndarray) -> np.ndarray:
        return RMIA_SIGNALS.get(self.signal)(x, self.direction_)

    def _as_signal(self, rows: ShadowRows) -> ShadowRows:
        return ShadowRows(rows.pos, rows.is_in, self._signal(rows.x))

    def _population_signal(self, item: AttackInput, who: str) -> np.ndarray:
        """Pr(z | encoder) of the reference images, on the encoder's calibrated scale."""
        values = self.stat_.reference_values(item, self.calibration_, self.name, who)
        return self._signal(values)

    # --- scoring ---------------------------------------------------------------------------

    def _log_ratio(
        self, q: np.ndarray, pos: np.ndarray, sums: CandidateSums, a: float | None
    ) -> np.ndarray:
        """log LR = sum over columns of log Pr(x | encoder) - log Pr(x), for candidates at pos."""
        prior, known, fallback = _PRIORS[self.mode](sums, 0.0 if a is None else a)
        seen = pos >= 0
        safe = np.where(seen, pos, 0)
        pr = np.where((seen & known[safe])[:, None], prior[safe], fallback)
        return _summed_log_ratio(q, pr)

    def _population_log_ratio(
        self, q_z: np.ndarray, mean_z: np.ndarray, a: float | None
    ) -> np.ndarray:
        """log LR of population images (OUT of every reference) from their mean Pr(z | ref)."""
        pr = _POPULATION_PRIORS[self.mode](mean_z, 0.0 if a is None else a)
        return _summed_log_ratio(q_z, pr)

    def _pairwise(self, llr_x: np.ndarray, llr_z: np.ndarray) -> np.ndarray:
        """Fraction of z with LR(x) / LR(z) >= gamma: the ECDF of log LR(z) at
        log LR(x) - log gamma (one sort of the z, one binary search per x)."""
        ordered = np.sort(llr_z)
        count = np.searchsorted(ordered, llr_x - math.log(self.gamma), side="right")
        return count / max(ordered.size, 1)

    def _loo_scores(
        self, i: int, shadows: list[AttackInput], rows: list[ShadowRows], a: float | None
    ) -> np.ndarray:
        """Shadow ``i``'s labelled rows scored with the other shadows as references."""
        sums = self.sums_.copy()
        sums.add(self._as_signal(rows[i]), -1.0)
        llr_x = self._log_ratio(self._signal(rows[i].x), rows[i].pos, sums, a)
        shadow = shadows[i]
        if self.population_ == "reference":
            q_z = self._population_signal(shadow, f"shadow #{i}")
            mean_z = (self.population_sum_ - q_z) / (self.n_shadows_ - 1)
            llr_z = self._population_log_ratio(q_z, mean_z, a)
        else:
            q_all = self._signal(self._statistic(shadow, f"shadow #{i}"))
            llr_z = self._log_ratio(q_all, self._positions(shadow.index, warn=False), sums, a)
        return self._pairwise(llr_x, llr_z)

    def _score_shadow(
        self, i: int, shadows: list[AttackInput], rows: list[ShadowRows]
    ) -> np.ndarray:
        return self._loo_scores(i, shadows, rows, self.offline_a_)

    def _score(self, target: AttackInput) -> np.ndarray:
        resolve_p(self.p_, target.stats)
        q = self._signal(self._statistic(target, "target"))
        pos = self._positions(target.index)
        llr_x = self._log_ratio(q, pos, self.sums_, self.offline_a_)
        if self.population_ == "reference":
            if (
                target.reference is None
                or is_own_candidates(target)
                or (target.reference.n_images != self.n_population_)
            ):
                raise LplaError(
                    f"{self.name} drew its population z from the shadows' {self.n_population_} "
                    "reference images; the target needs its answers on the same reference "
                    "images (reference=), or fit with population='candidates'"
                )
            q_z = self._population_signal(target, "target")
            mean_z = self.population_sum_ / self.n_shadows_
            llr_z = self._population_log_ratio(q_z, mean_z, self.offline_a_)
        else:  # every candidate of the target, labels unused
            llr_z = llr_x
        return self._pairwise(llr_x, llr_z)


def _summed_log_ratio(q: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``sum_p log q - log prior``: per-column ratios multiply (independent norm orders)."""
    return np.asarray((np.log(np.maximum(q, _TINY)) - np.log(np.maximum(prior, _TINY))).sum(1))


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


register_variant(
    RmiaAttack,
    "lpla-rmia-offline",
    "LpLA-RMIA offline: Pr(x) from OUT references with the tuned interpolation a",
    mode="offline",
)
