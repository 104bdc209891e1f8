"""LpLA-LiRA on a per-image signal that class-level attacks cannot see.

Each candidate image has its own base log norm ``b_i ~ N(0, 1)``; an encoder trained on it adds
``delta = 0.3``; every encoder adds noise ``N(0, sigma = 0.1)`` and has its own norm scale. A
class-level attack sees ``b + delta`` against ``b``: AUC ``Phi(delta / sqrt(2 (1 + sigma^2)))``
= 0.58. Knowing ``b_i`` from the shadows' OUT values (about M/2 of them) leaves noise of variance
``sigma^2 (1 + 2/M)``, so offline LiRA reaches ``Phi(delta / (sigma sqrt(2 (1 + 2/M))))`` = 0.97
for M = 8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from lpla.attacks import AttackInput, QueryStats, create_attack
from lpla.attacks.lira import LiraAttack
from lpla.errors import LplaError
from lpla.metrics import auc, balanced_accuracy

CANDIDATES, K, DELTA, SIGMA, M = 2000, 4, 0.3, 0.1, 8
INDEX = np.arange(CANDIDATES) * 7 + 100  # dataset indices, not row numbers
LIRA_AUC = float(norm.cdf(DELTA / (SIGMA * math.sqrt(2 * (1 + 2 / M)))))
CLASS_AUC = float(norm.cdf(DELTA / math.sqrt(2 * (1 + SIGMA**2))))


class _World:
    """Candidates with per-image base norms; encoders trained on random halves of them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.base = self.rng.normal(0.0, 1.0, CANDIDATES)

    def half(self) -> np.ndarray:
        member = np.zeros(CANDIDATES, dtype=np.int8)
        member[self.rng.permutation(CANDIDATES)[: CANDIDATES // 2]] = 1
        return member

    def encoder(self, member: np.ndarray, name: str, with_reference: bool = False) -> AttackInput:
        scale = math.exp(self.rng.normal(0.0, 1.0))
        log_norm = self.base + DELTA * member + SIGMA * self.rng.normal(size=CANDIDATES)
        views = log_norm[:, None] + 0.02 * self.rng.normal(size=(CANDIDATES, K))
        stats = QueryStats((scale * np.exp(views))[..., None], (2.0,))
        reference = None
        if with_reference:
            # a large reference: its mean and std set the calibration of the whole encoder, and
            # with 500 images their errors (~3%) already cost .04 of AUC at sigma = 0.1
            ref_views = self.rng.normal(0.0, 1.0, (5000, 1)) + 0.02 * self.rng.normal(
                size=(5000, K)
            )
            reference = QueryStats((scale * np.exp(ref_views))[..., None], (2.0,))
        return AttackInput(stats, member, INDEX, reference, name)


def _lira(**params: object) -> LiraAttack:
    attack = create_attack("lpla-lira", **params)
    assert isinstance(attack, LiraAttack)
    return attack


@pytest.fixture(scope="module")
def world() -> tuple[list[AttackInput], AttackInput]:
    w = _World(0)
    shadows = [w.encoder(w.half(), f"shadow-{m}") for m in range(M)]
    return shadows, w.encoder(w.half(), "target")


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_lira_uses_per_image_baselines(world, mode: str) -> None:
    shadows, target = world
    attack = _lira(mode=mode).fit(shadows)
    assert attack.fix_variance_ and attack.calibration_ == "population"
    scores = attack.score(target)
    labels = target.member
    measured = auc(scores, labels)
    assert measured == pytest.approx(LIRA_AUC, abs=0.03), (mode, measured, LIRA_AUC)
    # the leave-one-shadow-out threshold transfers: honest balanced accuracy near the best
    assert attack.threshold_ is not None
    assert balanced_accuracy(scores, labels, attack.threshold_) > 0.85

    class_level = create_attack("lpla", calibration="none", statistic="mean").fit(shadows[0])
    class_auc = auc(class_level.score(target), labels)
    assert class_auc == pytest.approx(CLASS_AUC, abs=0.04)
    assert measured > class_auc + 0.3


def test_offline_direction_is_learnt(world) -> None:
    shadows, target = world
    flipped = [
        AttackInput(s.stats, 1 - s.member, s.index, name=s.name)  # type: ignore[operator]
        for s in shadows
    ]
    attack = _lira(mode="offline").fit(flipped)
    assert attack.direction_.tolist() == [-1.0]
    assert auc(attack.score(target), 1 - target.member) > 0.9  # type: ignore[operator]


def test_scores_follow_the_index_not_the_row(world) -> None:
    shadows, target = world
    attack = _lira().fit(shadows)
    scores = attack.score(target)
    order = np.random.default_rng(1).permutation(CANDIDATES)
    np.testing.assert_allclose(attack.score(target.subset(order)), scores[order])


def test_reference_calibration_and_per_image_variance() -> None:
    w = _World(1)
    shadows = [w.encoder(w.half(), f"s{m}", with_reference=True) for m in range(M)]
    target = w.encoder(w.half(), "target", with_reference=True)
    attack = _lira().fit(shadows)
    assert attack.calibration_ == "reference"
    assert auc(attack.score(target), target.member) == pytest.approx(LIRA_AUC, abs=0.03)
    # per-image variances from about 4 values each are noisy: weaker, but still far above chance
    loose = _lira(fix_variance=False).fit(shadows)
    assert 0.8 < auc(loose.score(target), target.member) < auc(attack.score(target), target.member)
    with pytest.raises(LplaError, match="target has none"):
        attack.score(AttackInput(target.stats, target.member, target.index))


def test_unseen_candidates_fall_back_with_a_warning(world) -> None:
    shadows, target = world
    attack = _lira().fit(shadows)
    half = np.arange(CANDIDATES) < CANDIDATES // 2
    moved = AttackInput(target.stats, target.member, target.index + half, name="moved")
    with pytest.warns(UserWarning, match=f"{CANDIDATES // 2} of {CANDIDATES} target images"):
        scores = attack.score(moved)
    assert np.isfinite(scores).all()
    # the candidates still known keep their per-image scores
    np.testing.assert_allclose(scores[~half], attack.score(target)[~half])
    with pytest.raises(LplaError, match="none of the target's 2000 images is a candidate"):
        attack.score(AttackInput(target.stats, target.member, target.index + 1))


def test_lira_input_errors(world) -> None:
    shadows, _ = world
    s = shadows[0]
    assert s.index is not None
    twice = AttackInput(s.stats, s.member, np.where(s.index == s.index[1], s.index[0], s.index))
    with pytest.raises(LplaError, match="index twice"):
        _lira().fit([twice, shadows[1]])
    with pytest.raises(LplaError, match="needs 2 shadows"):
        _lira().fit([s])
