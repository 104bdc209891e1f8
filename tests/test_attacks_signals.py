"""Attacks on synthetic encoders with known signals: AUCs against closed forms.

Embeddings are random directions times a norm. Each image has a log base norm
``a ~ N(mu_member or mu_nonmember, s)`` and its K views have log norms ``a + tau * e_k``; the
log mean norm is then ``a`` plus a term of variance about ``tau^2 / K`` that does not depend on
membership, so the best AUC of any norm statistic is ``Phi(dmu / sqrt(2 (s^2 + tau^2 / K)))``.
View directions scatter around a per-image centre with a noise level that may differ between
members and non-members (the EncoderMI signal). Shadow and target follow the same law; the
target encoder has norms 3x larger, as a different encoder would.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from lpla.attacks import AttackInput, QueryStats, compute_stats, create_attack
from lpla.errors import LplaError
from lpla.metrics import auc, balanced_accuracy, balanced_accuracy_oracle

N, K, D, TAU = 4000, 10, 16, 0.1
P = (1.0, 2.0, math.inf)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _embeddings(
    rng: np.random.Generator,
    member: np.ndarray,
    mu: tuple[float, float],
    s: float,
    noise: tuple[float, float],
    scale: float,
) -> np.ndarray:
    n = member.size
    base = rng.normal(np.where(member == 1, mu[1], mu[0]), s)
    log_norms = base[:, None] + TAU * rng.normal(size=(n, K))
    spread = np.where(member == 1, noise[1], noise[0])[:, None, None]
    views = rng.normal(size=(n, 1, D)) + spread * rng.normal(size=(n, K, D))
    views /= np.linalg.norm(views, axis=2, keepdims=True)
    return views * (scale * np.exp(log_norms))[..., None]


def _encoder(
    seed: int,
    mu: tuple[float, float] = (0.0, 0.4),
    s: float = 0.5,
    noise: tuple[float, float] = (0.5, 0.5),
    scale: float = 1.0,
    n: int = N,
) -> AttackInput:
    """One encoder: n images (half members) plus 1000 reference images (non-member law)."""
    rng = np.random.default_rng(seed)
    member = (np.arange(n) < n // 2).astype(np.int8)
    kw: dict[str, Any] = {"p": P, "similarities": ("cosine",), "clean_view0": True}
    z = _embeddings(rng, member, mu, s, noise, scale)
    ref = _embeddings(rng, np.zeros(1000, np.int8), mu, s, noise, scale)
    return AttackInput(compute_stats(z, **kw), member, reference=compute_stats(ref, **kw))


def _closed_form(dmu: float, s: float, tau2: float) -> float:
    return float(norm.cdf(dmu / math.sqrt(2 * (s**2 + tau2))))


def _run(
    name: str, shadow: AttackInput | None, target: AttackInput, **params: object
) -> tuple[float, float | None, float]:
    attack = create_attack(name, **params).fit(shadow)
    scores = attack.score(target)
    labels = target.member
    assert labels is not None
    honest = (
        None if attack.threshold_ is None else balanced_accuracy(scores, labels, attack.threshold_)
    )
    return auc(scores, labels), honest, balanced_accuracy_oracle(scores, labels)


@pytest.fixture(scope="module")
def norm_signal() -> tuple[AttackInput, AttackInput]:
    return _encoder(1), _encoder(2, scale=3.0)


MEAN_AUC = _closed_form(0.4, 0.5, TAU**2 / K)  # 0.713
CLEAN_AUC = _closed_form(0.4, 0.5, TAU**2)  # 0.711


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("lpla", {}, MEAN_AUC),
        ("lpla", {"p": 2.0, "statistic": "mean"}, MEAN_AUC),
        ("lpla", {"combine": "joint"}, MEAN_AUC),
        ("lpla", {"log_space": False}, MEAN_AUC),
        ("lpla", {"p": 1.0, "statistic": "clean"}, CLEAN_AUC),
        ("norm-threshold", {"p": 2.0}, MEAN_AUC),
        ("norm-threshold", {"p": math.inf}, MEAN_AUC),
        ("lpla-ref", {}, MEAN_AUC),
        ("lpla-ref", {"statistic": "clean"}, CLEAN_AUC),
    ],
)
def test_norm_attacks_reach_the_closed_form_auc(norm_signal, name, params, expected) -> None:
    shadow, target = norm_signal
    measured, _, _ = _run(name, shadow, target, **params)
    # 2000 + 2000 target images: the AUC's standard error is about 0.008
    assert measured == pytest.approx(expected, abs=0.03), (name, params, measured, expected)


def test_reference_calibration_transfers_the_threshold(norm_signal) -> None:
    shadow, target = norm_signal  # the target's norms are 3x the shadow's
    auc_ref, honest_ref, oracle_ref = _run("lpla", shadow, target)
    assert honest_ref is not None and honest_ref > oracle_ref - 0.03
    assert honest_ref > 0.6

    # without calibration the shadow's threshold sits below every target score: chance level
    auc_none, honest_none, _ = _run("lpla", shadow, target, calibration="none")
    assert honest_none is not None and honest_none < 0.56
    # ... even though the ranking (AUC) survives the shift
    assert auc_none == pytest.approx(auc_ref, abs=0.03)
    _, honest_raw, _ = _run("norm-threshold", shadow, target)
    assert honest_raw is not None and honest_raw < 0.56

    # and on a target with the shadow's own scale, no calibration is needed
    same_scale = _encoder(3)
    _, honest_same, oracle_same = _run("lpla", shadow, same_scale, calibration="none")
    assert honest_same is not None and honest_same > oracle_same - 0.03


def test_no_signal_gives_chance() -> None:
    shadow, target = _encoder(4, mu=(0.0, 0.0), n=2000), _encoder(5, mu=(0.0, 0.0), n=2000)
    for name in ("lpla", "lpla-ref", "norm-threshold", "encodermi-t"):
        measured, _, _ = _run(name, shadow, target)
        assert abs(measured - 0.5) < 0.06, (name, measured)


def test_members_smaller_norms_direction_is_learnt(norm_signal) -> None:
    shadow, target = _encoder(6, mu=(0.4, 0.0), n=2000), _encoder(7, mu=(0.4, 0.0), n=2000)
    expected = _closed_form(0.4, 0.5, TAU**2 / K)
    learnt, _, _ = _run("lpla-ref", shadow, target)
    assert learnt == pytest.approx(expected, abs=0.04)
    assumed, _, _ = _run("lpla-ref", None, target)  # default direction: members larger
    assert assumed == pytest.approx(1 - expected, abs=0.04)
    likelihood, _, _ = _run("lpla", shadow, target)  # the likelihood ratio needs no direction
    assert likelihood == pytest.approx(expected, abs=0.04)


@pytest.fixture(scope="module")
def view_signal() -> tuple[AttackInput, AttackInput]:
    """Members' views scatter less (noise .3 vs .5); norms carry no membership signal."""
    kw = {"mu": (0.0, 0.0), "noise": (0.5, 0.3), "n": 1200}
    return _encoder(8, **kw), _encoder(9, scale=3.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["encodermi-t", "encodermi-v", "encodermi-s"])
def test_encodermi_finds_more_similar_views(view_signal, name) -> None:
    shadow, target = view_signal
    measured, honest, _ = _run(name, shadow, target)
    assert measured > 0.9, measured
    assert honest is not None and honest > 0.8


@pytest.mark.parametrize("name", ["lpla", "lpla-ref", "norm-threshold"])
def test_l2_norm_attacks_ignore_view_similarity(view_signal, name) -> None:
    shadow, target = view_signal
    measured, _, _ = _run(name, shadow, target, p=2.0)
    assert abs(measured - 0.5) < 0.06, measured


def test_spread_of_linf_norms_sees_view_similarity(view_signal) -> None:
    # With a fixed L2 norm, the Linf norm depends on the direction; views that agree in direction
    # agree in Linf norm, so the spread feature of p != 2 carries part of the EncoderMI signal
    # (measured: AUC .63 for p = inf, .55 for p = 1, .52 for p = 2).
    shadow, target = view_signal
    spread, _, _ = _run("lpla", shadow, target, p=math.inf, statistic="mean+std")
    location_only, _, _ = _run("lpla", shadow, target, p=math.inf, statistic="mean")
    assert spread > 0.58 and abs(location_only - 0.5) < 0.06, (spread, location_only)


def test_encodermi_s_is_permutation_invariant_and_accepts_any_k(view_signal) -> None:
    shadow, target = view_signal
    attack = create_attack("encodermi-s").fit(shadow)
    scores = attack.score(target)
    rng = np.random.default_rng(0)
    sims = target.stats.sims["cosine"]
    shuffled = np.take_along_axis(
        sims, rng.permuted(np.tile(np.arange(sims.shape[1]), (sims.shape[0], 1)), axis=1), 1
    )
    assert not np.array_equal(shuffled, sims)
    stats = QueryStats(target.stats.norms, target.stats.p, {"cosine": shuffled})
    np.testing.assert_array_equal(attack.score(AttackInput(stats, target.member)), scores)

    fewer = target.first_views(5)
    assert auc(attack.score(fewer), target.member) > 0.85
    with pytest.raises(LplaError, match="fitted on K=10 views; the target has K=5"):
        create_attack("encodermi-v").fit(shadow).score(fewer)


def test_encodermi_t_closed_threshold(view_signal) -> None:
    shadow, _ = view_signal
    attack = create_attack("encodermi-t").fit(shadow)
    assert attack.threshold_ is not None
    mean_sim = shadow.stats.sims["cosine"].mean(axis=1)
    labels = shadow.member
    assert labels is not None
    # the threshold is the best cut on the shadow's own mean similarities
    best = max(balanced_accuracy(mean_sim, labels, t) for t in np.unique(mean_sim))
    assert balanced_accuracy(mean_sim, labels, attack.threshold_) == pytest.approx(best)


def test_several_shadows_pool_their_images() -> None:
    shadows = [_encoder(10 + i, n=600, scale=float(i + 1)) for i in range(3)]
    target = _encoder(20, scale=2.0)
    attack = create_attack("lpla").fit(shadows)
    assert auc(attack.score(target), target.member) == pytest.approx(MEAN_AUC, abs=0.03)


def test_tiny_shadow_still_fits() -> None:
    shadow = _encoder(30, n=6)
    target = _encoder(31, n=400)
    scores = create_attack("lpla").fit(shadow).score(target)
    assert np.isfinite(scores).all()
    with pytest.raises(LplaError, match="at least 2 shadow members"):
        create_attack("lpla").fit(_encoder(32, n=2))
