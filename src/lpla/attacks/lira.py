"""LpLA-LiRA: per-image likelihood ratio of the norm statistic over many shadow encoders.

After LiRA (Carlini et al., S&P 2022): M shadow encoders are trained on random halves of a
population that contains the candidate images, so each candidate is IN for some shadows and OUT
for the others. Per candidate, Gaussians of its (calibrated) log-norm statistic are fitted over
the IN and the OUT shadows; the target's value is scored online with
``log N(x; mu_in, s_in) - log N(x; mu_out, s_out)`` or offline, one-sided, with
``direction * (x - mu_out) / s_out``. The per-image means remove what makes an image's norm large
regardless of membership, which class-level LpLA cannot do.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from lpla.attacks.base import ATTACKS, Attack, check_choice, resolve_p, standardise
from lpla.attacks.features import AttackInput, PSpec, parse_p
from lpla.attacks.norm import norm_features
from lpla.errors import LplaError

__all__ = ["LiraAttack"]

_MIN_VAR = 1e-12


@dataclass
class _Sums:
    """Per-candidate sufficient statistics: counts [C], sums and sums of squares [C, P]."""

    n_in: np.ndarray
    s_in: np.ndarray
    q_in: np.ndarray
    n_out: np.ndarray
    s_out: np.ndarray
    q_out: np.ndarray


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


def _table(sums: _Sums, fix_variance: bool) -> _Table:
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


@ATTACKS.register("lpla-lira", "LpLA-LiRA: per-image IN/OUT Gaussians over many shadows")
class LiraAttack(Attack):
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
    needs_shadow = True
    needs_reference = False
    min_shadows = 2

    def __init__(
        self,
        mode: str = "online",
        p: PSpec | None = None,
        statistic: str = "mean",
        calibration: str = "auto",
        fix_variance: bool | None = None,
        direction: int | None = None,
    ) -> None:
        check_choice(self.name, "mode", mode, ("online", "offline"))
        check_choice(self.name, "statistic", statistic, ("mean", "clean"))
        check_choice(
            self.name, "calibration", calibration, ("auto", "reference", "population", "none")
        )
        check_choice(self.name, "fix_variance", fix_variance, (None, True, False))
        check_choice(self.name, "direction", direction, (None, 1, -1))
        if p is not None:
            parse_p(p)
        self.mode = mode
        self.p = p
        self.statistic = statistic
        self.calibration = calibration
        self.fix_variance = fix_variance
        self.direction = direction

    # --- statistic ---------------------------------------------------------------------

    def _statistic(self, item: AttackInput, who: str) -> np.ndarray:
        """Calibrated log-norm statistic ``[N, P]``."""
        x = np.stack([norm_features(item.stats, p, self.statistic)[:, 0] for p in self.p_], 1)
        if self.calibration_ == "none":
            return x
        if self.calibration_ == "reference":
            if item.reference is None:
                raise LplaError(
                    f"lpla-lira calibrates by reference but the {who} has none; "
                    "pass reference= or use calibration='population'"
                )
            ref = np.stack(
                [norm_features(item.reference, p, self.statistic)[:, 0] for p in self.p_], 1
            )
            return standardise(x, ref.mean(axis=0), ref.std(axis=0), scale=1.0)  # logs
        return standardise(x, np.median(x, axis=0), x.std(axis=0), scale=1.0)

    # --- fit ---------------------------------------------------------------------------

    def _fit(self, shadows: list[AttackInput]) -> None:
        self.p_ = resolve_p(self.p, shadows[0].stats)
        if self.calibration == "auto":
            with_ref = all(s.reference is not None for s in shadows)
            self.calibration_ = "reference" if with_ref else "population"
        else:
            self.calibration_ = self.calibration
        self.n_shadows_ = len(shadows)
        self.fix_variance_ = (
            (self.n_shadows_ < 64) if self.fix_variance is None else self.fix_variance
        )

        for i, s in enumerate(shadows):
            assert s.index is not None
            if np.unique(s.index).size != s.index.size:
                raise LplaError(
                    f"shadow #{i} lists a candidate index twice; each candidate "
                    "appears once per shadow"
                )
        self.candidates_ = np.unique(
            np.concatenate([s.index[s.labelled] for s in shadows if s.index is not None])
        )
        n_c, n_p = self.candidates_.size, len(self.p_)
        sums = _Sums(
            np.zeros(n_c),
            np.zeros((n_c, n_p)),
            np.zeros((n_c, n_p)),
            np.zeros(n_c),
            np.zeros((n_c, n_p)),
            np.zeros((n_c, n_p)),
        )
        for pos, is_in, x in self._shadow_rows(shadows):
            _accumulate(sums, pos, is_in, x, +1.0)
        self.sums_ = sums
        self.table_ = _table(sums, self.fix_variance_)
        if self.direction is not None:
            self.direction_ = np.full(n_p, float(self.direction))
        else:
            both = (sums.n_in > 0) & (sums.n_out > 0)
            gap = (
                (self.table_.mu_in[both] - self.table_.mu_out[both]).mean(axis=0)
                if both.any()
                else np.ones(n_p)
            )
            self.direction_ = np.where(gap >= 0, 1.0, -1.0)

    def _shadow_scores(self, shadows: list[AttackInput]) -> tuple[np.ndarray, np.ndarray] | None:
        """Leave-one-shadow-out scores: each shadow scored by Gaussians fitted without it."""
        scores, labels = [], []
        for pos, is_in, x in self._shadow_rows(shadows):
            sums = _Sums(*(a.copy() for a in vars(self.sums_).values()))
            _accumulate(sums, pos, is_in, x, -1.0)
            table = _table(sums, self.fix_variance_)
            scores.append(self._llr(table, x, pos))
            labels.append(is_in.astype(np.int8))
        return np.concatenate(scores), np.concatenate(labels)

    def _shadow_rows(
        self, shadows: list[AttackInput]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per shadow: candidate positions, IN mask and statistic of its labelled rows."""
        rows = []
        for i, s in enumerate(shadows):
            assert s.member is not None and s.index is not None
            keep = s.labelled
            x = self._statistic(s, f"shadow #{i}")[keep]
            rows.append((np.searchsorted(self.candidates_, s.index[keep]), s.member[keep] == 1, x))
        return rows

    # --- score -------------------------------------------------------------------------

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
            per_p = _log_normal(x, mu_in, sd_in) - _log_normal(x, mu_out, sd_out)
        else:
            per_p = self.direction_ * (x - mu_out) / sd_out
        return np.asarray(per_p.sum(axis=1))

    def _score(self, target: AttackInput) -> np.ndarray:
        resolve_p(self.p_, target.stats)
        assert target.index is not None
        x = self._statistic(target, "target")
        pos = np.searchsorted(self.candidates_, target.index)
        pos = np.minimum(pos, self.candidates_.size - 1)
        pos = np.where(self.candidates_[pos] == target.index, pos, -1)
        unseen = int((pos < 0).sum())
        if unseen:
            warnings.warn(
                f"lpla-lira: {unseen} of {pos.size} target images are not candidates of any "
                "shadow; they are scored with the global IN/OUT Gaussians",
                stacklevel=3,
            )
        return self._llr(self.table_, x, pos)


def _accumulate(
    sums: _Sums, pos: np.ndarray, is_in: np.ndarray, x: np.ndarray, sign: float
) -> None:
    """Add (sign=+1) or remove (sign=-1) one shadow's values from the sums."""
    for mask, n, s, q in (
        (is_in, sums.n_in, sums.s_in, sums.q_in),
        (~is_in, sums.n_out, sums.s_out, sums.q_out),
    ):
        np.add.at(n, pos[mask], sign)
        np.add.at(s, pos[mask], sign * x[mask])
        np.add.at(q, pos[mask], sign * x[mask] ** 2)
