"""lpla-diff: difficulty calibration removes per-image norm nuisance that hides membership."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm as normal
from sklearn.metrics import roc_auc_score

from lpla.attacks import AttackInput, applicable_attacks, compute_stats, create_attack
from lpla.errors import LplaError

K, D = 5, 16
VIEW_NOISE = 0.3
EFFECT = 0.15


def _embeddings(rng: np.random.Generator, log_norm: np.ndarray, scale: float) -> np.ndarray:
    n = len(log_norm)
    direction = rng.normal(size=(n, K, D))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    norms = scale * np.exp(log_norm[:, None] + VIEW_NOISE * rng.normal(size=(n, K)))
    return (direction * norms[..., None]).astype(np.float32)


def _side(
    rng: np.random.Generator, n: int, scale: float, effect: float = EFFECT
) -> tuple[AttackInput, np.ndarray]:
    """Own encoder (members boosted) and a baseline encoder that never saw the images."""
    difficulty = rng.normal(0.0, 0.5, size=n)  # per-image nuisance shared by both encoders
    member = (np.arange(n) < n // 2).astype(np.int8)
    ref_difficulty = rng.normal(0.0, 0.5, size=1000)

    def stats(e: np.ndarray):
        return compute_stats(e, p=(2.0,))

    own = stats(_embeddings(rng, difficulty + effect * member, scale))
    base = stats(_embeddings(rng, difficulty, 1.0))
    inp = AttackInput(
        own,
        member,
        reference=stats(_embeddings(rng, ref_difficulty, scale)),
        baseline=base,
        baseline_reference=stats(_embeddings(rng, ref_difficulty, 1.0)),
    )
    return inp, member


def test_difficulty_calibration_recovers_the_closed_form_auc() -> None:
    rng = np.random.default_rng(0)
    shadow, _ = _side(rng, 2000, scale=1.0)
    target, member = _side(rng, 2000, scale=3.0)  # another encoder: norms on another scale
    # log mean of K lognormal views ~ mean of the logs: noise sd VIEW_NOISE / sqrt(K) per encoder
    closed_form = normal.cdf(EFFECT / (np.sqrt(2) * np.sqrt(2) * VIEW_NOISE / np.sqrt(K)))
    diff = roc_auc_score(member, create_attack("lpla-diff").fit(shadow).score(target))
    plain = roc_auc_score(member, create_attack("lpla", statistic="mean").fit(shadow).score(target))
    assert abs(diff - closed_form) < 0.04, (diff, closed_form)
    assert diff > plain + 0.05  # the nuisance (sd 0.5) swamps the raw norm's signal


def test_no_signal_stays_at_chance() -> None:
    rng = np.random.default_rng(1)
    shadow, _ = _side(rng, 1500, scale=1.0, effect=0.0)
    target, member = _side(rng, 1500, scale=2.0, effect=0.0)
    auc = roc_auc_score(member, create_attack("lpla-diff").fit(shadow).score(target))
    assert abs(auc - 0.5) < 0.05


def test_needs_baseline_and_is_only_applicable_with_one() -> None:
    rng = np.random.default_rng(2)
    shadow, _ = _side(rng, 200, scale=1.0)
    no_baseline = AttackInput(shadow.stats, shadow.member, reference=shadow.reference)
    with pytest.raises(LplaError, match="baseline"):
        create_attack("lpla-diff").fit(no_baseline)
    assert "lpla-diff" not in applicable_attacks(5, 1, True)
    assert "lpla-diff" in applicable_attacks(5, 1, True, has_baseline=True)


def test_first_views_keeps_the_baseline() -> None:
    rng = np.random.default_rng(3)
    shadow, _ = _side(rng, 100, scale=1.0)
    cut = shadow.first_views(2)
    assert cut.baseline is not None and cut.baseline.n_views == 2
    assert cut.baseline_reference is not None and cut.baseline_reference.n_views == 2
