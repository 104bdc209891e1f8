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
        "tpr_at_fpr_ci95",
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
    for key in ("0.001", "0.01"):
        t_lo, t_hi = out["tpr_at_fpr_ci95"][key]
        assert 0.0 <= t_lo <= out["tpr_at_fpr"][key] <= t_hi <= 1.0
    # the same resamples (n_bootstrap, seed) as the standalone functions
    assert out["auc_ci95"] == list(metrics.auc_bootstrap_ci(scores, labels, n_bootstrap=200))
    tpr_ci = metrics.tpr_at_fpr_bootstrap_ci(scores, labels, 0.01, n_bootstrap=200)
    assert tpr_ci is not None and out["tpr_at_fpr_ci95"]["0.01"] == list(tpr_ci)
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
    # no interval where there is no TPR; perfectly separated scores: every resample has TPR 1
    assert out["tpr_at_fpr_ci95"] == {"0.001": None, "0.01": [1.0, 1.0]}
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
        ([0.1, 0.2], [0, 1], {"n_bootstrap": 0}, r"^--n-bootstrap must be >= 1 .*; got 0$"),
    ],
)
def test_bad_inputs_are_user_errors(scores, labels, kwargs, message) -> None:
    with pytest.raises(LplaError, match=message):
        metrics.evaluate_scores(scores, labels, **kwargs)


def test_tpr_at_fpr_rejects_bad_fpr() -> None:
    with pytest.raises(LplaError, match="strictly between"):
        metrics.tpr_at_fpr(TINY_SCORES, TINY_LABELS, 1.5)


# --- TPR at low FPR: bootstrap intervals -------------------------------------------------------


def _separated(n_members: int, n_nonmembers: int, flip: bool = False) -> tuple[list, list]:
    members = list(np.linspace(2.0, 3.0, n_members))
    others = list(np.linspace(0.0, 1.0, n_nonmembers))
    if flip:
        members, others = others, members
    return members + others, [1] * n_members + [0] * n_nonmembers


def test_tpr_ci_of_perfect_and_of_reversed_scores() -> None:
    scores, labels = _separated(50, 1000)
    for fpr in (0.001, 0.01):  # any resample still separates perfectly: TPR 1 every time
        assert metrics.tpr_at_fpr_bootstrap_ci(scores, labels, fpr, n_bootstrap=200) == (1.0, 1.0)
    scores, labels = _separated(50, 1000, flip=True)  # every non-member above every member
    assert metrics.tpr_at_fpr_bootstrap_ci(scores, labels, 0.01, n_bootstrap=200) == (0.0, 0.0)


def test_tpr_ci_with_one_high_nonmember() -> None:
    # 999 non-members at 0, one at 2, 100 members at 1. At FPR 0.1% one false positive is
    # allowed, so TPR = 1 unless a resample draws the high non-member twice or more: then
    # TPR = 0. That happens with probability 1 - P(0) - P(1) of Binomial(1000, 1/1000), 0.264.
    scores = [0.0] * 999 + [2.0] + [1.0] * 100
    labels = [0] * 1000 + [1] * 100
    assert metrics.tpr_at_fpr(scores, labels, 0.001).tpr == 1.0

    def ci(level: float, fpr: float = 0.001) -> tuple[float, float] | None:
        return metrics.tpr_at_fpr_bootstrap_ci(scores, labels, fpr, n_bootstrap=4000, level=level)

    assert ci(0.95) == (0.0, 1.0)
    # the 20th percentile is 0 and the 30th is 1: 20% < P(TPR = 0) < 30%
    assert ci(0.6) == (0.0, 1.0)
    assert ci(0.4) == (1.0, 1.0)
    # at FPR 1% ten false positives are allowed: drawing it 11 times is all but impossible
    assert ci(0.95, fpr=0.01) == (1.0, 1.0)


def test_tpr_ci_equals_explicit_resampling() -> None:
    # the vectorised intervals against tpr_at_fpr on each resample, drawn as the bootstrap does
    # (one batch: non-member positions among the sorted non-members, then member positions)
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(60), np.zeros(150)].astype(int)
    scores = np.round(rng.normal(size=210) + 0.7 * labels, 1)  # ties on purpose
    n_boot = 300
    ci = metrics.tpr_at_fpr_bootstrap_ci(scores, labels, 0.01, n_bootstrap=n_boot, seed=4)
    pos, neg = scores[labels == 1], np.sort(scores[labels == 0])
    g = np.random.default_rng(4)
    neg_idx = g.integers(0, neg.size, size=(n_boot, neg.size))
    pos_idx = g.integers(0, pos.size, size=(n_boot, pos.size))
    explicit = []
    for i in range(n_boot):
        s = np.r_[pos[pos_idx[i]], neg[neg_idx[i]]]
        tpr = metrics.tpr_at_fpr(s, np.r_[np.ones(60), np.zeros(150)], 0.01).tpr
        assert tpr is not None
        explicit.append(tpr)
    assert ci == pytest.approx(tuple(np.percentile(explicit, [2.5, 97.5])), abs=1e-12)


def test_tpr_ci_is_none_where_the_tpr_is() -> None:
    scores, labels = _separated(50, 999)  # 999 < 1000 non-members: FPR 0.1% not resolvable
    assert metrics.tpr_at_fpr(scores, labels, 0.001).tpr is None
    assert metrics.tpr_at_fpr_bootstrap_ci(scores, labels, 0.001) is None
    out = metrics.evaluate_scores(scores, labels, n_bootstrap=20)
    assert (
        {k for k, v in out["tpr_at_fpr_ci95"].items() if v is None}
        == {k for k, v in out["tpr_at_fpr"].items() if v is None}
        == {"0.001"}
    )


def test_n_bootstrap_below_one_is_one_readable_line() -> None:
    for call in (
        lambda: metrics.auc_bootstrap_ci(TINY_SCORES, TINY_LABELS, n_bootstrap=0),
        lambda: metrics.tpr_at_fpr_bootstrap_ci(TINY_SCORES, TINY_LABELS, 0.5, n_bootstrap=-3),
    ):
        with pytest.raises(LplaError, match="--n-bootstrap must be >= 1") as info:
            call()
        assert "\n" not in str(info.value)
