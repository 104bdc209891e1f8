"""EncoderMI with ``calibration="reference"`` (issue #10, equal calibration).

Synthetic pair similarities, written directly into :class:`QueryStats`: each image has a level
``c ~ N(0.4 + 0.15 * member, 0.1)`` and its K(K-1)/2 pair similarities are ``c + N(0, 0.1)``.
The shadow encoder reports them as they are; the target encoder reports an increasing map of
them (``0.5 + 0.5 s``: similarities squeezed towards 1, or ``s - 0.3``: shifted), as another
encoder with its own similarity scale would. Each encoder also answers on 1000 reference images
(non-member law) through the same map. The mean similarity's best AUC is then
``Phi(0.15 / sqrt(2 (0.1^2 + 0.1^2 / 15)))`` = .848 whatever the map, and its best balanced
accuracy ``Phi(0.15 / (2 sqrt(...)))`` = .766; a raw shadow threshold lands outside the target's
scores (balanced accuracy .5), a calibrated one lands where the target's best threshold is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from lpla.attacks import AttackInput, QueryStats, applicable_attacks, create_attack
from lpla.errors import LplaError
from lpla.metrics import auc, balanced_accuracy, balanced_accuracy_oracle

K = 6
N_PAIRS = K * (K - 1) // 2
EFFECT, LEVEL_SD, PAIR_SD = 0.15, 0.1, 0.1
MEAN_SD = math.sqrt(LEVEL_SD**2 + PAIR_SD**2 / N_PAIRS)
CLOSED_AUC = float(norm.cdf(EFFECT / (math.sqrt(2) * MEAN_SD)))  # 0.848
CLOSED_BALANCED = float(norm.cdf(EFFECT / (2 * MEAN_SD)))  # 0.766
FAST = {"max_iter": 100}  # MLP heads of -V/-S: enough on 15 features, half the time

Mapping = Callable[[np.ndarray], np.ndarray]
MAPS: dict[str, Mapping] = {
    "same": lambda s: s,
    "squeezed": lambda s: 0.5 + 0.5 * s,
    "shifted": lambda s: s - 0.3,
}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _stats(sims: np.ndarray, k: int = K) -> QueryStats:
    return QueryStats(np.ones((sims.shape[0], k, 1)), (2.0,), {"cosine": sims})


def _encoder(seed: int, mapping: Mapping, n: int = 2000, n_ref: int = 1000) -> AttackInput:
    """One encoder: n candidates (half members) and n_ref reference images, through ``mapping``.

    The same seed draws the same underlying similarities whatever the mapping, so two encoders
    that differ only by their map can be compared image by image.
    """
    rng = np.random.default_rng(seed)
    member = (np.arange(n) < n // 2).astype(np.int8)

    def draw(is_member: np.ndarray) -> np.ndarray:
        level = rng.normal(0.4 + EFFECT * is_member, LEVEL_SD)
        pairs = level[:, None] + PAIR_SD * rng.normal(size=(is_member.size, N_PAIRS))
        return np.clip(pairs, -1.0, 1.0)

    candidates = draw(member)
    reference = draw(np.zeros(n_ref, np.int8))
    return AttackInput(
        _stats(mapping(candidates)), member, reference=_stats(mapping(reference)), name="enc"
    )


@pytest.fixture(scope="module")
def shadow() -> AttackInput:
    return _encoder(1, MAPS["same"])


@pytest.fixture(scope="module")
def targets() -> dict[str, AttackInput]:
    return {name: _encoder(2, mapping) for name, mapping in MAPS.items()}


def _run(
    name: str, shadow: AttackInput, target: AttackInput, calibration: str
) -> tuple[np.ndarray, float, float, float]:
    """Scores, AUC, balanced accuracy at the shadow's threshold, and at the target's best."""
    params = {} if name == "encodermi-t" else FAST
    attack = create_attack(name, calibration=calibration, **params).fit(shadow)
    scores = attack.score(target)
    labels = target.member
    assert attack.threshold_ is not None
    return (
        scores,
        auc(scores, labels),
        balanced_accuracy(scores, labels, attack.threshold_),
        balanced_accuracy_oracle(scores, labels),
    )


@pytest.mark.parametrize("world", ["squeezed", "shifted"])
def test_encodermi_t_threshold_transfers_only_when_calibrated(shadow, targets, world) -> None:
    target = targets[world]
    _, auc_none, honest_none, oracle_none = _run("encodermi-t", shadow, target, "none")
    _, auc_ref, honest_ref, oracle_ref = _run("encodermi-t", shadow, target, "reference")
    # the ranking does not care about the scale (2000 + 2000 images: AUC SE about .008)...
    assert auc_none == pytest.approx(CLOSED_AUC, abs=0.03)
    assert auc_ref == pytest.approx(auc_none, abs=1e-12)  # an increasing affine map of it
    assert oracle_none == pytest.approx(CLOSED_BALANCED, abs=0.03)
    # ... but the raw shadow threshold lands outside the target's similarities: chance
    assert honest_none < 0.52, honest_none  # measured .500 squeezed, .511 shifted
    # calibrated, it lands on the target's best cut (measured .779 against .783)
    assert honest_ref > oracle_ref - 0.015, (honest_ref, oracle_ref)
    assert honest_ref == pytest.approx(CLOSED_BALANCED, abs=0.03)


def test_encodermi_t_without_calibration_is_fine_on_the_same_scale(shadow, targets) -> None:
    # the collapse above is the scale, not the attack: same scale, the raw threshold transfers
    _, _, honest, oracle = _run("encodermi-t", shadow, targets["same"], "none")
    assert honest > oracle - 0.015, (honest, oracle)  # measured .775 against .783


@pytest.mark.parametrize("name", ["encodermi-t", "encodermi-v", "encodermi-s"])
def test_reference_calibration_removes_the_encoders_scale(shadow, targets, name) -> None:
    same, _, honest_same, _ = _run(name, shadow, targets["same"], "reference")
    squeezed, _, honest_ref, oracle_ref = _run(name, shadow, targets["squeezed"], "reference")
    # the target's map is undone exactly: the same scores as on the shadow's scale
    np.testing.assert_allclose(squeezed, same, rtol=1e-9, atol=1e-9)
    assert honest_ref == pytest.approx(honest_same, abs=1e-12)
    # measured (honest / oracle): -T .779/.783, -V .758/.761, -S .726/.734
    assert honest_ref > oracle_ref - 0.015 and honest_ref > 0.7, (honest_ref, oracle_ref)
    # raw similarities: the shadow's rule misreads the target (measured -T .500, -V .503,
    # -S .505)
    _, _, honest_none, _ = _run(name, shadow, targets["squeezed"], "none")
    assert honest_none < 0.55 and honest_none < honest_ref - 0.15, (honest_none, honest_ref)


@pytest.mark.parametrize("name", ["encodermi-t", "encodermi-v", "encodermi-s"])
def test_default_is_the_original_encodermi(shadow, targets, name) -> None:
    target = targets["squeezed"]
    params = {} if name == "encodermi-t" else FAST
    default = create_attack(name, **params)
    explicit = create_attack(name, calibration="none", **params)
    assert default.get_params()["calibration"] == "none"
    assert default.get_params() == explicit.get_params()
    scores = default.fit(shadow).score(target)
    np.testing.assert_array_equal(explicit.fit(shadow).score(target), scores)
    assert explicit.threshold_ == default.threshold_
    # "none" never reads a reference: the same numbers without one
    bare_shadow = AttackInput(shadow.stats, shadow.member)
    bare_target = AttackInput(target.stats, target.member)
    bare = create_attack(name, **params).fit(bare_shadow)
    np.testing.assert_array_equal(bare.score(bare_target), scores)
    assert bare.threshold_ == default.threshold_
    if name == "encodermi-t":  # the raw mean pair similarity, as in Liu et al.
        np.testing.assert_array_equal(scores, target.stats.sims["cosine"].mean(axis=1))


@pytest.mark.parametrize("name", ["encodermi-t", "encodermi-v", "encodermi-s"])
def test_missing_reference_names_the_fix(shadow, targets, name) -> None:
    params = {} if name == "encodermi-t" else {"max_iter": 5}
    bare_shadow = AttackInput(shadow.stats, shadow.member, name="shadow-1")
    with pytest.raises(
        LplaError,
        match=r"calibration='reference' needs reference statistics for the shadow #0 "
        r"\(shadow-1\).*pass reference= or use calibration='none'",
    ):
        create_attack(name, calibration="reference", **params).fit(bare_shadow)
    attack = create_attack(name, calibration="reference", **params).fit(shadow)
    target = targets["same"]
    with pytest.raises(LplaError, match="needs reference statistics for the target"):
        attack.score(AttackInput(target.stats, target.member))
    with pytest.raises(LplaError, match=r"calibration='raw' is not one of 'none', 'reference'"):
        create_attack(name, calibration="raw")
    # the class attribute stays False: with default parameters no reference is needed
    assert name in applicable_attacks(k=K, n_shadows=1, has_reference=False)


def test_reference_views_must_suit_the_statistic(shadow, targets) -> None:
    target = targets["same"]
    assert target.reference is not None
    one_view = AttackInput(target.stats, target.member, reference=_stats(np.zeros((10, 0)), k=1))
    fitted_s = create_attack("encodermi-s", calibration="reference", **FAST).fit(shadow)
    with pytest.raises(LplaError, match=r"reference has K=1 view.*no view pairs"):
        fitted_s.score(one_view)
    # a mean over fewer pairs spreads more: -T needs the images' K on the reference
    fewer_ref = AttackInput(target.stats, target.member, reference=target.reference.first_views(4))
    fitted_t = create_attack("encodermi-t", calibration="reference").fit(shadow)
    with pytest.raises(LplaError, match="reference has K=4 views but its images have K=6"):
        fitted_t.score(fewer_ref)
    # the pooled calibration of -S does not care about K: fewer target views still score
    assert fitted_s.score(fewer_ref).shape == (target.stats.n_images,)
    assert auc(fitted_s.score(target.first_views(4)), target.member) > 0.7
