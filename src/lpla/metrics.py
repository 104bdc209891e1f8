"""How well membership scores separate members from non-members.

ROC AUC, TPR at low FPR read from the ROC on the low side (as LiRA reports it), balanced
accuracy at a given threshold (the honest, shadow-chosen one) and at the best threshold (oracle),
membership advantage ``max(TPR - FPR)``, and stratified bootstrap confidence intervals of the
AUC and of each TPR at low FPR (the same resamples for both). :func:`evaluate_scores` bundles
them into the dict stored per attack in ``results.json``. Members are the positive class (label 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn import metrics as skm

from lpla.errors import LplaError

__all__ = [
    "TprAtFpr",
    "advantage",
    "auc",
    "auc_bootstrap_ci",
    "balanced_accuracy",
    "balanced_accuracy_oracle",
    "evaluate_scores",
    "roc_curve",
    "tpr_at_fpr",
    "tpr_at_fpr_bootstrap_ci",
]


class TprAtFpr(NamedTuple):
    """TPR at a target FPR, or ``None`` with the reason it cannot be resolved."""

    tpr: float | None
    reason: str | None


def _check(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y_raw = np.asarray(labels).reshape(-1)
    if s.shape != y_raw.shape:
        raise LplaError(f"scores and labels differ in length: {s.size} vs {y_raw.size}")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise LplaError(f"{bad} of {s.size} scores are NaN or infinite; fix the attack's inputs")
    if y_raw.size and not np.isin(y_raw, (0, 1)).all():
        raise LplaError("labels must be 1 (member) or 0 (non-member); drop unknown (-1) rows")
    y = y_raw.astype(np.int8)
    if not ((y == 1).any() and (y == 0).any()):
        raise LplaError(
            f"need members and non-members to evaluate scores; got "
            f"{int((y == 1).sum())} members and {int((y == 0).sum())} non-members"
        )
    return s, y


def _check_fpr(fpr: float) -> float:
    value = float(fpr)
    if not 0.0 < value < 1.0:
        raise LplaError(f"target FPR must be strictly between 0 and 1; got {fpr}")
    return value


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC ``(fpr, tpr, thresholds)``, members positive, every corner kept."""
    s, y = _check(scores, labels)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auc(scores: Any, labels: Any) -> float:
    """ROC AUC (ties count one half)."""
    s, y = _check(scores, labels)
    return float(skm.roc_auc_score(y, s))


def _tpr_low_side(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points whose FPR does not exceed ``target``."""
    ok = fpr <= target * (1 + 1e-9)
    return float(tpr[ok].max())


def _resolution_note(n_nonmembers: int, fpr: float) -> str | None:
    needed = math.ceil(1.0 / fpr - 1e-9)
    if n_nonmembers >= needed:
        return None
    return f"TPR at {fpr * 100:g}% FPR needs >= {needed} non-members; have {n_nonmembers}"


def tpr_at_fpr(scores: Any, labels: Any, fpr: float) -> TprAtFpr:
    """TPR at ``fpr``: the largest TPR whose FPR <= ``fpr`` on the ROC (LiRA's low side).

    ``tpr`` is ``None`` (with ``reason``) when there are fewer than ``1/fpr`` non-members, since
    then a single false positive already exceeds the target FPR.
    """
    target = _check_fpr(fpr)
    s, y = _check(scores, labels)
    note = _resolution_note(int((y == 0).sum()), target)
    if note is not None:
        return TprAtFpr(None, note)
    f, t, _ = skm.roc_curve(y, s, drop_intermediate=False)
    return TprAtFpr(_tpr_low_side(f, t, target), None)


def balanced_accuracy(scores: Any, labels: Any, threshold: float) -> float:
    """Mean of TPR and TNR when images with ``score >= threshold`` are called members."""
    s, y = _check(scores, labels)
    predicted = s >= float(threshold)
    tpr = predicted[y == 1].mean()
    tnr = (~predicted[y == 0]).mean()
    return float((tpr + tnr) / 2)


def advantage(scores: Any, labels: Any) -> float:
    """Membership advantage ``max over thresholds of TPR - FPR`` (Yeom et al.)."""
    f, t, _ = roc_curve(scores, labels)
    return float(np.max(t - f))


def balanced_accuracy_oracle(scores: Any, labels: Any) -> float:
    """Balanced accuracy at the best threshold chosen on the evaluated scores (an upper bound)."""
    return 0.5 + advantage(scores, labels) / 2


def _check_n_bootstrap(n_bootstrap: int) -> int:
    if int(n_bootstrap) < 1:
        raise LplaError(
            f"--n-bootstrap must be >= 1 (the AUC and TPR@FPR intervals need resamples); "
            f"got {n_bootstrap}"
        )
    return int(n_bootstrap)


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise LplaError(f"confidence level must be between 0 and 1; got {level}")
    return float(level)


def _allowed_false_positives(n_nonmembers: int, fpr: float) -> int:
    """Most false positives an ROC point may have and still count as FPR <= ``fpr`` (the
    tolerance of :func:`_tpr_low_side`)."""
    return math.floor(fpr * (1 + 1e-9) * n_nonmembers)


def _bootstrap(
    s: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int, fprs: Sequence[float] = ()
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """The AUC and the low-side TPR at each of ``fprs`` of ``n_bootstrap`` stratified resamples
    (members and non-members resampled separately, so each resample keeps both counts).

    Vectorised: with the non-member scores sorted once, the AUC of every resample is a weighted
    count of (member, non-member) orderings computed from cumulative resample counts, so 1000
    resamples of 10^4 scores take well under a second. The TPR at FPR ``f`` of a resample is the
    share of its members scoring above its ``(m + 1)``-th highest non-member, ``m`` the false
    positives ``f`` allows. Resamples are processed in batches that bound memory.
    """
    pos = s[y == 1]
    neg = np.sort(s[y == 0])
    n1, n0 = pos.size, neg.size
    # for each member: how many non-members lie strictly below / at or below its score
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    pos_order = np.argsort(pos, kind="stable")
    pos_sorted = pos[pos_order]
    allowed = {f: _allowed_false_positives(n0, f) for f in fprs}
    rng = np.random.default_rng(seed)
    batch = max(1, int(2e6 // (n0 + n1)))
    aucs = np.empty(n_bootstrap)
    tprs = {f: np.empty(n_bootstrap) for f in fprs}
    for start in range(0, n_bootstrap, batch):
        b = min(batch, n_bootstrap - start)
        w_neg = _resample_counts(rng, n0, b)
        w_pos = _resample_counts(rng, n1, b)
        cum = np.concatenate([np.zeros((b, 1)), np.cumsum(w_neg, axis=1)], axis=1)
        wins = cum[:, below] + 0.5 * (cum[:, at_or_below] - cum[:, below])
        aucs[start : start + b] = (w_pos * wins).sum(axis=1) / (n1 * n0)
        if not fprs:
            continue
        from_top = np.cumsum(w_neg[:, ::-1], axis=1)  # [:, j]: resampled count of the j+1 highest
        cum_pos = np.concatenate([np.zeros((b, 1)), np.cumsum(w_pos[:, pos_order], axis=1)], 1)
        rows = np.arange(b)
        for f, m in allowed.items():
            if m >= n0:  # every threshold is allowed
                tprs[f][start : start + b] = 1.0
                continue
            cutoff = neg[n0 - 1 - np.argmax(from_top >= m + 1, axis=1)]  # (m+1)-th highest
            at_most = cum_pos[rows, np.searchsorted(pos_sorted, cutoff, side="right")]
            tprs[f][start : start + b] = (n1 - at_most) / n1
    return aucs, tprs


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def auc_bootstrap_ci(
    scores: Any, labels: Any, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling members and non-members separately."""
    s, y = _check(scores, labels)
    n = _check_n_bootstrap(n_bootstrap)
    aucs, _ = _bootstrap(s, y, n, seed)
    return _percentile_ci(aucs, _check_level(level))


def tpr_at_fpr_bootstrap_ci(
    scores: Any,
    labels: Any,
    fpr: float,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of :func:`tpr_at_fpr` (stratified resamples, the same ones as
    :func:`auc_bootstrap_ci` with this seed); ``None`` exactly where the TPR itself is ``None``
    (fewer than ``1/fpr`` non-members)."""
    target = _check_fpr(fpr)
    s, y = _check(scores, labels)
    n = _check_n_bootstrap(n_bootstrap)
    if _resolution_note(int((y == 0).sum()), target) is not None:
        return None
    _, tprs = _bootstrap(s, y, n, seed, (target,))
    return _percentile_ci(tprs[target], _check_level(level))


def _resample_counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """``[b, n]`` multiplicities of ``b`` resamples with replacement of ``n`` items."""
    draws = rng.integers(0, n, size=(b, n)) + np.arange(b)[:, None] * n
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int) -> list[int]:
    """Indices of ROC points to keep: endpoints, log-spaced low-FPR points, then even spread."""
    n = fpr.size
    if n <= max_points:
        return list(range(n))
    keep = {0, n - 1}
    budget = max(max_points - 2, 0)
    positive = fpr[fpr > 0]
    if positive.size and budget:
        # the low-FPR end matters on log axes: one point per log-spaced FPR (its low-side step)
        grid = np.geomspace(positive.min(), 1.0, budget // 2 + 1)
        keep.update(int(i) for i in np.searchsorted(fpr, grid, side="right") - 1)
    remaining = max_points - len(keep)
    if remaining > 0:
        spread = np.linspace(0, n - 1, remaining + 2).round().astype(int)
        for i in spread:
            if len(keep) >= max_points:
                break
            keep.add(int(i))
    return sorted(i for i in keep if 0 <= i < n)[:max_points]


def evaluate_scores(
    scores: Any,
    labels: Any,
    threshold: float | None = None,
    fprs: Sequence[float] = (0.001, 0.01),
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_roc_points: int = 512,
) -> dict[str, Any]:
    """All metrics of one attack's scores, as stored in ``results.json``.

    Keys: ``auc``, ``auc_ci95`` ``[lo, hi]``, ``tpr_at_fpr`` ``{"0.001": x | None, ...}``,
    ``tpr_at_fpr_ci95`` ``{"0.001": [lo, hi] | None, ...}`` (``None`` exactly where the TPR is),
    ``balanced_accuracy`` (at ``threshold``; ``None`` without one), ``threshold``,
    ``balanced_accuracy_oracle``, ``advantage``, ``roc`` ``{"fpr": [...], "tpr": [...]}``
    (at most ``max_roc_points``), ``n_members``, ``n_nonmembers`` and ``notes`` (caveats). Both
    intervals come from the same ``n_bootstrap`` stratified resamples drawn with ``seed``.
    """
    n_resamples = _check_n_bootstrap(n_bootstrap)
    s, y = _check(scores, labels)
    targets = [_check_fpr(f) for f in fprs]
    if int(max_roc_points) < 2:
        raise LplaError(f"max_roc_points must be >= 2; got {max_roc_points}")
    n_members, n_nonmembers = int((y == 1).sum()), int((y == 0).sum())
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    notes: list[str] = []
    resolved: list[float] = []
    for target in targets:
        note = _resolution_note(n_nonmembers, target)
        if note is not None:
            notes.append(note)
        else:
            resolved.append(target)
    aucs, tpr_samples = _bootstrap(s, y, n_resamples, seed, resolved)
    rates: dict[str, float | None] = {}
    rate_cis: dict[str, list[float] | None] = {}
    for target in targets:
        if target in tpr_samples:
            rates[str(target)] = _tpr_low_side(fpr, tpr, target)
            rate_cis[str(target)] = list(_percentile_ci(tpr_samples[target], 0.95))
        else:
            rates[str(target)] = rate_cis[str(target)] = None
    lo, hi = _percentile_ci(aucs, 0.95)
    adv = float(np.max(tpr - fpr))
    keep = _downsample_roc(fpr, tpr, int(max_roc_points))
    if threshold is None:
        notes.append("no shadow threshold: balanced_accuracy is None (oracle given)")
    return {
        "auc": float(skm.roc_auc_score(y, s)),
        "auc_ci95": [lo, hi],
        "tpr_at_fpr": rates,
        "tpr_at_fpr_ci95": rate_cis,
        "balanced_accuracy": None if threshold is None else balanced_accuracy(s, y, threshold),
        "threshold": None if threshold is None else float(threshold),
        "balanced_accuracy_oracle": 0.5 + adv / 2,
        "advantage": adv,
        "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()},
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "notes": notes,
    }
