"""Metrics against hand-computed cases, scikit-learn, and a naive bootstrap."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from lpla import metrics
from lpla.errors import LplaError

TINY_SCORES = [0.1, 0.4, 0.35, 0.8]
TINY_LABELS = [0, 0, 1, 1]


def test_tiny_hand_case() -> None:
    # member pairs (0.35, 0.8) vs non-members (0.1, 0.4): 3 of 4 orderings right
    assert metrics.auc(TINY_SCORES, TINY_LABELS) == 0.75
    # threshold 0.5: members {0.8} -> TPR .5, TNR 1 -> .75
    assert metrics.balanced_accuracy(TINY_SCORES, TINY_LABELS, 0.5) == 0.75
    # threshold 0.3: all but 0.1 called members -> TPR 1, TNR .5 -> .75; 0.05: everyone -> .5
    assert metrics.balanced_accuracy(TINY_SCORES, TINY_LABELS, 0.3) == 0.75
    assert metrics.balanced_accuracy(TINY_SCORES, TINY_LABELS, 0.05) == 0.5
    assert metrics.advantage(TINY_SCORES, TINY_LABELS) == 0.5
    assert metrics.balanced_accuracy_oracle(TINY_SCORES, TINY_LABELS) == 0.75


def test_ties_count_one_half() -> None:
    assert metrics.auc([1.0, 1.0], [0, 1]) == 0.5
    assert metrics.auc([0.0, 1.0, 1.0, 2.0], [0, 0, 1, 1]) == pytest.approx(0.875)


def test_auc_and_roc_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + 0.7 * labels, 1)  # with ties
    assert metrics.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert metrics.advantage(scores, labels) == pytest.approx(np.max(ref_tpr - ref_fpr))


def test_tpr_at_fpr_hand_cases() -> None:
    # 10 non-members at 0.0..0.9; members 0.95, 0.85, 0.5. Descending: .95 (P) .9 (N) .85 (P):
    # at FPR 0.1 the ROC reaches TPR 2/3 (the low side includes FPR exactly 0.1)
    scores = [*np.arange(10) / 10, 0.95, 0.85, 0.5]
    labels = [0] * 10 + [1, 1, 1]
    result = metrics.tpr_at_fpr(scores, labels, 0.1)
    assert result.tpr == pytest.approx(2 / 3) and result.reason is None
    assert metrics.tpr_at_fpr(scores, labels, 0.2).tpr == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(scores, labels, 0.5).tpr == pytest.approx(1.0)
    # four non-members, members all above the third: TPR 1 at FPR 25%
    assert (
        metrics.tpr_at_fpr([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.95], [0, 0, 0, 0, 1, 1, 1], 0.25).tpr
        == 1.0
    )


def test_tpr_at_fpr_is_lira_low_side() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(3000), np.zeros(3000)].astype(int)
    scores = rng.normal(size=6000) + labels
    fpr, tpr, _ = roc_curve(labels, scores)
    for target in (0.001, 0.01, 0.1):
        expected = tpr[np.where(fpr <= target)[0][-1]]
        assert metrics.tpr_at_fpr(scores, labels, target).tpr == pytest.approx(expected)


def test_tpr_at_fpr_needs_enough_nonmembers() -> None:
    labels = [0] * 128 + [1] * 128
    scores = np.arange(256.0)
    result = metrics.tpr_at_fpr(scores, labels, 0.001)
    assert result.tpr is None
    assert result.reason == "TPR at 0.1% FPR needs >= 1000 non-members; have 128"
    assert metrics.tpr_at_fpr(scores, labels, 0.01).tpr == 1.0  # 128 >= 100
    assert metrics.tpr_at_fpr(TINY_SCORES, TINY_LABELS, 0.4).tpr is None  # needs 3, has 2


def test_bootstrap_ci_contains_auc_narrows_and_is_seeded() -> None:
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.r_[np.ones(n), np.zeros(n)].astype(int)
        return rng.normal(size=2 * n) + 0.8 * labels, labels

    small, big = sample(100), sample(3000)
    lo_s, hi_s = metrics.auc_bootstrap_ci(*small)
    lo_b, hi_b = metrics.auc_bootstrap_ci(*big)
    assert lo_s < metrics.auc(*small) < hi_s
    assert lo_b < metrics.auc(*big) < hi_b
    # width shrinks like 1/sqrt(n): 30x the data -> about 5.5x narrower
    assert (hi_s - lo_s) / (hi_b - lo_b) == pytest.approx(np.sqrt(30), rel=0.3)
    assert metrics.auc_bootstrap_ci(*small, seed=0) == (lo_s, hi_s)
    assert metrics.auc_bootstrap_ci(*small, seed=1) != (lo_s, hi_s)


def test_bootstrap_matches_naive_resampling() -> None:
    rng = np.random.default_rng(5)
    labels = np.r_[np.ones(60), np.zeros(90)].astype(int)
    scores = np.round(rng.normal(size=150) + 0.5 * labels, 1)  # ties exercise the 1/2 rule
    lo, hi = metrics.auc_bootstrap_ci(scores, labels, n_bootstrap=4000, seed=0)
    pos, neg = scores[labels == 1], scores[labels == 0]
    naive = []
    g = np.random.default_rng(1)
    for _ in range(2000):
        p = g.choice(pos, pos.size)
        n = g.choice(neg, neg.size)
        diff = p[:, None] - n[None, :]  # the AUC by its definition, pair by pair
        naive.append(float(np.mean((diff > 0) + 0.5 * (diff == 0))))
    ref_lo, ref_hi = np.percentile(naive, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.015) and hi == pytest.approx(ref_hi, abs=0.015)


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(5000), np.zeros(5000)].astype(int)
    scores = rng.normal(size=10_000) + 0.5 * labels
    best = np.inf
    for _ in range(2):  # best of two: the machine is shared
        start = time.perf_counter()
        metrics.auc_bootstrap_ci(scores, labels, n_bootstrap=1000)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"1000 resamples of 10^4 scores took {best:.2f} s"


def test_evaluate_scores_keys_and_values() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(1500), np.zeros(1500)].astype(int)
    scores = rng.normal(size=3000) + labels
    out = metrics.evaluate_scores(scores, labels, threshold=0.5, n_bootstrap=200)
    assert set(out) >= {
        "auc",
        "auc_ci95",
        "tpr_at_fpr",
        "balanced_accuracy",
        "balanced_accuracy_oracle",
        "advantage",
        "roc",
        "n_members",
        "n_nonmembers",
        "notes",
    }
    assert out["auc"] == pytest.approx(roc_auc_score(labels, scores))
    lo, hi = out["auc_ci95"]
    assert lo < out["auc"] < hi
    assert set(out["tpr_at_fpr"]) == {"0.001", "0.01"}
    assert out["tpr_at_fpr"]["0.01"] == metrics.tpr_at_fpr(scores, labels, 0.01).tpr
    assert out["balanced_accuracy"] == metrics.balanced_accuracy(scores, labels, 0.5)
    assert out["balanced_accuracy_oracle"] == pytest.approx(0.5 + out["advantage"] / 2)
    assert out["balanced_accuracy"] <= out["balanced_accuracy_oracle"]
    assert (out["n_members"], out["n_nonmembers"]) == (1500, 1500)
    assert out["notes"] == []
    json.dumps(out)  # plain JSON types only

    roc = out["roc"]
    assert len(roc["fpr"]) <= 512 and len(roc["fpr"]) == len(roc["tpr"])
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    full_fpr, _, _ = metrics.roc_curve(scores, labels)
    assert len(full_fpr) > 512
    # the low-FPR end survives downsampling: the first non-zero FPR (1/1500) is kept
    assert min(f for f in roc["fpr"] if f > 0) == pytest.approx(1 / 1500)


def test_evaluate_scores_notes_and_missing_threshold() -> None:
    labels = [0] * 128 + [1] * 128
    out = metrics.evaluate_scores(np.arange(256.0), labels, n_bootstrap=50)
    assert out["tpr_at_fpr"] == {"0.001": None, "0.01": 1.0}
    assert "TPR at 0.1% FPR needs >= 1000 non-members; have 128" in out["notes"]
    assert out["balanced_accuracy"] is None and out["auc"] == 1.0
    assert out["roc"]["fpr"][0] == 0.0


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "message"),
    [
        ([0.1, 0.2], [1, 1], {}, "need members and non-members"),
        ([0.1, 0.2], [0, 0], {}, "need members and non-members"),
        ([0.1, float("nan")], [0, 1], {}, "NaN or infinite"),
        ([0.1, 0.2, 0.3], [0, 1], {}, "differ in length"),
        ([0.1, 0.2], [0, -1], {}, "drop unknown"),
        ([0.1, 0.2], [0, 1], {"fprs": (0.0,)}, "strictly between 0 and 1"),
        ([0.1, 0.2], [0, 1], {"fprs": (1.0,)}, "strictly between 0 and 1"),
        ([0.1, 0.2], [0, 1], {"n_bootstrap": 0}, "n_bootstrap"),
    ],
)
def test_bad_inputs_are_user_errors(scores, labels, kwargs, message) -> None:
    with pytest.raises(LplaError, match=message):
        metrics.evaluate_scores(scores, labels, **kwargs)


def test_tpr_at_fpr_rejects_bad_fpr() -> None:
    with pytest.raises(LplaError, match="strictly between"):
        metrics.tpr_at_fpr(TINY_SCORES, TINY_LABELS, 1.5)
