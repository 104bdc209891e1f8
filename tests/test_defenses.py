"""Output-side defenses: each keeps the shape and does what its name says."""

from __future__ import annotations

import numpy as np
import pytest

from lpla.defenses import (
    DEFENSES,
    Defense,
    NoiseDefense,
    create_defense,
    list_defenses,
    parse_defense,
)
from lpla.errors import LplaError


def _defended(spec: str, z: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``z`` served through ``spec``, fitted on ``reference`` (default: ``z`` itself)."""
    defense = create_defense(spec).fit(z if reference is None else reference)
    return defense.apply(z, np.arange(z.shape[0]))


def test_the_registry_lists_every_defense_with_its_kind() -> None:
    assert list_defenses() == DEFENSES.names()
    assert list_defenses(kind="output") == ["l2-normalize", "noise", "none", "quantize"]
    assert list_defenses(kind="training") == ["early-stop", "strong-aug", "weight-decay"]
    for name in list_defenses(kind="output"):
        assert DEFENSES.summary(name).startswith("output-side: ")
        assert isinstance(create_defense(name), Defense)
    for name in list_defenses(kind="training"):
        assert DEFENSES.summary(name).startswith("training-side: ")
    with pytest.raises(LplaError, match="unknown defense kind"):
        list_defenses(kind="input")


@pytest.mark.parametrize("name", list_defenses(kind="output"))
def test_every_defense_keeps_shape_and_is_finite(name: str) -> None:
    z = np.random.default_rng(0).normal(size=(7, 3, 5)).astype(np.float32)
    out = _defended(name, z)
    assert out.shape == z.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_none_serves_the_answers_unchanged() -> None:
    z = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_defended("none", z), z)


def test_l2_normalize_removes_the_l2_norm_but_not_other_norms() -> None:
    z = np.random.default_rng(0).normal(size=(50, 4, 8)) * np.arange(1, 51)[:, None, None]
    out = _defended("l2-normalize", z)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(out).sum(-1).std() > 0.01  # the L1 norm still varies (p != 2 keeps a signal)


def test_noise_scale_is_relative_to_the_reference_mean_norm() -> None:
    z = np.zeros((2000, 1, 64), dtype=np.float32)
    z[..., 0] = 10.0  # mean L2 norm 10
    defense = create_defense("noise:0.5").fit(z)
    assert isinstance(defense, NoiseDefense)
    assert defense.sigma_ == pytest.approx(0.5 * 10 / 8)
    out = defense.apply(z, np.arange(2000))
    sigma = (out - z)[..., 1:].std()
    assert sigma == pytest.approx(0.5 * 10 / np.sqrt(64), rel=0.05)


def test_quantize_uses_the_grid() -> None:
    z = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 1, 10)
    out = _defended("quantize:1", z)
    assert set(np.unique(out).round(6)) <= {0.0, 1.0}
    out = _defended("quantize:2", z)  # 4 levels over [0, 1]
    np.testing.assert_allclose(np.unique(out), [0, 1 / 3, 2 / 3, 1], atol=1e-6)


def test_bad_specs_are_user_errors() -> None:
    with pytest.raises(LplaError, match="unknown defense"):
        parse_defense("blur")
    with pytest.raises(LplaError, match="must be a number"):
        parse_defense("noise:lots")
    with pytest.raises(LplaError, match=r">= 0"):
        create_defense("noise:-1")
    with pytest.raises(LplaError, match=r"1\.\.16"):
        create_defense("quantize:0")
    assert parse_defense("noise:0.2") == ("noise", 0.2)
    assert parse_defense("l2-normalize") == ("l2-normalize", None)
