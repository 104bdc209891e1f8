"""Output-side defenses: each keeps the shape and does what its name says."""

from __future__ import annotations

import numpy as np
import pytest

from lpla.defenses import DEFENSES, create_defense, parse_defense
from lpla.errors import LplaError


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_keeps_shape_and_is_finite(name: str) -> None:
    z = np.random.default_rng(0).normal(size=(7, 3, 5)).astype(np.float32)
    out = create_defense(name)(z, np.random.default_rng(1))
    assert out.shape == z.shape and np.isfinite(out).all()


def test_l2_normalize_removes_the_l2_norm_but_not_other_norms() -> None:
    z = np.random.default_rng(0).normal(size=(50, 4, 8)) * np.arange(1, 51)[:, None, None]
    out = create_defense("l2-normalize")(z, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(out).sum(-1).std() > 0.01  # the L1 norm still varies (p != 2 keeps a signal)


def test_noise_scale_is_relative_to_the_mean_norm() -> None:
    z = np.zeros((2000, 1, 64), dtype=np.float32)
    z[..., 0] = 10.0  # mean L2 norm 10
    out = create_defense("noise:0.5")(z, np.random.default_rng(0))
    sigma = (out - z)[..., 1:].std()
    assert sigma == pytest.approx(0.5 * 10 / np.sqrt(64), rel=0.05)


def test_quantize_uses_the_grid() -> None:
    z = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 1, 10)
    out = create_defense("quantize:1")(z, np.random.default_rng(0))
    assert set(np.unique(out).round(6)) <= {0.0, 1.0}


def test_bad_specs_are_user_errors() -> None:
    with pytest.raises(LplaError, match="unknown defense"):
        parse_defense("blur")
    with pytest.raises(LplaError, match="must be a number"):
        parse_defense("noise:lots")
    with pytest.raises(LplaError, match=r">= 0"):
        create_defense("noise:-1")
    with pytest.raises(LplaError, match=r"1\.\.16"):
        create_defense("quantize:0")
