"""The estimator contract, checked on every registered attack (a new attack is tested at once)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from lpla.attacks import (
    ATTACKS,
    Attack,
    AttackInput,
    NotFittedError,
    applicable_attacks,
    best_threshold,
    compute_stats,
    create_attack,
    list_attacks,
)
from lpla.attacks.features import feature_stats
from lpla.errors import LplaError

N_CANDIDATES = 120
# Small but fast parameters where the defaults would spend seconds on a tiny contract check.
FAST = {
    "encodermi-v": {"max_iter": 30},
    "encodermi-s": {"max_iter": 30},
    "partcrop": {"hidden_layer_sizes": (16,), "max_iter": 30},
}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _encoder_input(seed: int, k: int, member: np.ndarray, name: str = "") -> AttackInput:
    """One encoder's statistics over the candidates (members slightly larger and tighter)."""
    rng = np.random.default_rng(seed)
    n, d = member.size, 12
    centre = rng.normal(size=(n, 1, d))
    noise = np.where(member == 1, 0.4, 0.7)[:, None, None]
    z = (centre + noise * rng.normal(size=(n, k, d))) * np.exp(0.3 * member)[:, None, None]
    ref = rng.normal(size=(60, 1, d)) + 0.7 * rng.normal(size=(60, k, d))
    kw: dict[str, Any] = {"p": (1, 2), "similarities": ("cosine",), "clean_view0": True}
    # the same candidates on an encoder that never trained on them (difficulty calibration)
    base = centre + 0.7 * rng.normal(size=(n, k, d))
    base_ref = rng.normal(size=(60, 1, d)) + 0.7 * rng.normal(size=(60, k, d))
    # PartCrop's membership features (an answer of its own): members' parts respond more
    partcrop = feature_stats(rng.normal(size=(n, 8)) + 0.8 * member[:, None])
    return AttackInput(
        compute_stats(z, **kw),
        member,
        np.arange(n) + 1000,
        compute_stats(ref, **kw),
        name=name,
        baseline=compute_stats(base, **kw),
        baseline_reference=compute_stats(base_ref, **kw),
        answers={"partcrop": partcrop},
    )


def _halves(seed: int) -> np.ndarray:
    member = np.zeros(N_CANDIDATES, dtype=np.int8)
    member[np.random.default_rng(seed).permutation(N_CANDIDATES)[: N_CANDIDATES // 2]] = 1
    return member


def _inputs(k: int) -> tuple[list[AttackInput], AttackInput]:
    shadows = [_encoder_input(10 + i, k, _halves(i), f"shadow-{i}") for i in range(3)]
    return shadows, _encoder_input(99, k, _halves(99), "target")


def _fit(attack: Attack, shadows: list[AttackInput]) -> Attack:
    return attack.fit(shadows if attack.min_shadows > 1 else shadows[0])


def test_attacks_and_metrics_do_not_import_torch() -> None:
    code = "import sys, lpla.attacks, lpla.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_is_complete() -> None:
    expected = {
        "lpla",
        "lpla-lira",
        "lpla-lira-offline",
        "lpla-rmia",
        "lpla-rmia-offline",
        "lira-combined",
        "lpla-ref",
        "lpla-diff",
        "norm-threshold",
        "encodermi-t",
        "encodermi-t-lira",
        "encodermi-t-lira-offline",
        "encodermi-v",
        "encodermi-s",
        "partcrop",
    }
    assert set(list_attacks()) == expected
    assert list_attacks("encodermi-?") == ["encodermi-s", "encodermi-t", "encodermi-v"]
    for name in list_attacks():
        assert ATTACKS.summary(name)
        assert ATTACKS.get(name).name == name


@pytest.mark.parametrize("name", list_attacks())
def test_contract(name: str) -> None:
    shadows, target = _inputs(k=4)
    attack = create_attack(name, **FAST.get(name, {}))
    assert not attack.is_fitted
    with pytest.raises(NotFittedError, match="not fitted"):
        attack.score(target)
    params = attack.get_params()
    assert repr(attack).startswith(f"{type(attack).__name__}(")
    assert all(f"{k}=" in repr(attack) for k in params)

    assert _fit(attack, shadows) is attack
    scores = attack.score(target)
    assert scores.shape == (N_CANDIDATES,) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert isinstance(attack.threshold_, float) and math.isfinite(attack.threshold_)
    # learned state lives in attributes ending in "_"; params are untouched
    assert any(k.endswith("_") for k in vars(attack))
    assert attack.get_params() == create_attack(name, **FAST.get(name, {})).get_params()
    # what the fit chose travels to results.json: JSON scalars (or flat dicts of them) only
    fitted = attack.fitted_params()
    assert fitted["threshold_"] == attack.threshold_
    assert all(k.endswith("_") for k in fitted)
    assert json.loads(json.dumps(fitted)) == fitted

    # deterministic: a fresh fit on the same data gives the same scores; refit is clean
    again = _fit(create_attack(name, **FAST.get(name, {})), shadows).score(target)
    np.testing.assert_array_equal(scores, again)
    np.testing.assert_array_equal(_fit(attack, shadows).score(target), scores)

    # the (deliberately easy) signal is found: members score higher
    labels = target.member
    assert labels is not None
    assert scores[labels == 1].mean() > scores[labels == 0].mean()


def test_fitted_params_need_a_fit_and_name_the_density() -> None:
    shadows, _ = _inputs(k=4)
    attack = create_attack("lpla")
    with pytest.raises(NotFittedError, match="not fitted"):
        attack.fitted_params()
    fitted = _fit(attack, shadows).fitted_params()
    assert fitted["density_"] == "shared"  # 60 + 60 shadow images: too few for separate
    assert "groups_" not in fitted  # arrays stay out of results.json


@pytest.mark.parametrize("name", list_attacks())
def test_one_view(name: str) -> None:
    shadows, target = _inputs(k=1)
    attack = create_attack(name, **FAST.get(name, {}))
    if attack.min_views > 1:
        with pytest.raises(LplaError, match=f"needs at least {attack.min_views} views"):
            _fit(attack, shadows)
        return
    for s in shadows:  # the clean statistic needs the clean view, which K=1 still has
        assert s.stats.clean_view0
    scores = _fit(attack, shadows).score(target)
    assert scores.shape == (N_CANDIDATES,) and np.isfinite(scores).all()


@pytest.mark.parametrize("name", [n for n in list_attacks() if ATTACKS.get(n).min_views > 1])
def test_too_few_target_views_is_refused(name: str) -> None:
    shadows, target = _inputs(k=4)
    attack = _fit(create_attack(name, **FAST.get(name, {})), shadows)
    with pytest.raises(LplaError, match="K=1; query more views"):
        attack.score(target.first_views(1))


def test_shadow_requirements() -> None:
    shadows, target = _inputs(k=3)
    with pytest.raises(LplaError, match="needs 2 shadows"):
        create_attack("lpla-lira").fit(shadows[0])
    with pytest.raises(LplaError, match="needs a shadow input"):
        create_attack("lpla").fit(None)
    only_members = AttackInput(shadows[0].stats, np.ones(N_CANDIDATES, np.int8))
    with pytest.raises(LplaError, match=r"needs members \(1\) and non-members \(0\)"):
        create_attack("encodermi-t").fit(only_members)
    with pytest.raises(LplaError, match="must be an AttackInput"):
        create_attack("lpla").fit(shadows[0]).score(target.stats)  # type: ignore[arg-type]


def test_unknown_rows_are_ignored_when_fitting() -> None:
    shadows, target = _inputs(k=3)
    shadow = shadows[0]
    assert shadow.member is not None
    scrambled = shadow.member.copy()
    scrambled[:30] = -1
    masked = AttackInput(shadow.stats, scrambled, shadow.index, shadow.reference)
    dropped = shadow.subset(np.arange(30, N_CANDIDATES))
    a = create_attack("lpla").fit(masked)
    b = create_attack("lpla").fit(dropped)
    np.testing.assert_allclose(a.score(target), b.score(target))
    assert a.threshold_ == b.threshold_


def test_reference_requirements() -> None:
    shadows, target = _inputs(k=3)
    bare = AttackInput(shadows[0].stats, shadows[0].member)
    with pytest.raises(LplaError, match="calibration='reference' needs reference"):
        create_attack("lpla").fit(bare)
    create_attack("lpla", calibration="none").fit(bare).score(target)
    ref_attack = create_attack("lpla-ref").fit(None)
    assert ref_attack.threshold_ is None
    with pytest.raises(LplaError, match="target's reference"):
        ref_attack.score(AttackInput(target.stats))


def test_params_are_validated_at_construction() -> None:
    with pytest.raises(LplaError, match="unknown attack 'lpla-x'"):
        create_attack("lpla-x")
    with pytest.raises(LplaError, match="has no parameter bogus"):
        create_attack("lpla", bogus=1)
    with pytest.raises(LplaError, match="statistic='median' is not one of"):
        create_attack("lpla", statistic="median")
    with pytest.raises(LplaError, match="p=0"):
        create_attack("lpla", p=[0, 2])
    with pytest.raises(LplaError, match="unknown similarity"):
        create_attack("encodermi-t", similarity="dot")
    with pytest.raises(LplaError, match="mode='both'"):
        create_attack("lpla-lira", mode="both")
    with pytest.raises(LplaError, match="direction=2"):
        create_attack("lpla-ref", direction=2)


def test_requested_p_must_have_been_computed() -> None:
    shadows, _ = _inputs(k=2)
    with pytest.raises(LplaError, match="p=inf was not computed"):
        create_attack("lpla", p="inf").fit(shadows[0])


def test_class_requirements_are_consistent() -> None:
    for name in list_attacks():
        cls = ATTACKS.get(name)
        # an orchestrator may read either: min_shadows == 0 exactly when no shadow is needed
        assert (cls.min_shadows >= 1) == cls.needs_shadow
    assert ATTACKS.get("lpla-ref").min_shadows == 0


def test_applicable_attacks() -> None:
    assert applicable_attacks(k=1, n_shadows=0, has_reference=False) == []
    assert applicable_attacks(k=1, n_shadows=0, has_reference=True) == ["lpla-ref"]
    assert applicable_attacks(k=1, n_shadows=1, has_reference=False) == ["norm-threshold"]
    assert applicable_attacks(k=1, n_shadows=1, has_reference=True) == [
        "lpla",
        "lpla-ref",
        "norm-threshold",
    ]
    assert applicable_attacks(k=10, n_shadows=1, has_reference=True) == [
        "encodermi-s",
        "encodermi-t",
        "encodermi-v",
        "lpla",
        "lpla-ref",
        "norm-threshold",
    ]
    assert applicable_attacks(k=10, n_shadows=8, has_reference=True) == sorted(
        set(list_attacks()) - {"lpla-diff", "partcrop"}
    )
    assert applicable_attacks(
        k=10, n_shadows=8, has_reference=True, has_baseline=True, answers={"partcrop"}
    ) == sorted(list_attacks())


def test_best_threshold_hand_case() -> None:
    # predict member when score >= t: t in (0.4, 0.8] gives TPR .5, FPR 0 (the first best)
    tiny = best_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert tiny == pytest.approx(0.6)
    # perfectly separated: half-way between the groups
    assert best_threshold(np.array([1.0, 2.0, 5.0, 7.0]), np.array([0, 0, 1, 1])) == 3.5
    # anti-correlated: nobody is called a member
    t = best_threshold(np.array([5.0, 7.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    assert t > 7.0
