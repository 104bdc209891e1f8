"""Query statistics: norms and similarities against hand computation, streaming, validation."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from lpla.attacks import AttackInput, QueryStats, compute_stats, pair_indices
from lpla.errors import LplaError

P_VALUES = (0.5, 1.0, 2.0, 3.0, math.inf)


def _hand_norm(z: np.ndarray, p: float) -> np.ndarray:
    a = np.abs(z.astype(np.float64))
    if math.isinf(p):
        return a.max(axis=-1)
    return (a**p).sum(axis=-1) ** (1.0 / p)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_norms_match_hand_computation(dtype: type) -> None:
    z: np.ndarray = np.random.default_rng(0).normal(scale=3.0, size=(7, 3, 40)).astype(dtype)
    stats = compute_stats(z, p=P_VALUES, similarities=())
    assert stats.p == P_VALUES
    assert stats.norms.shape == (7, 3, 5) and stats.norms.dtype == np.float64
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for c, p in enumerate(P_VALUES):
        np.testing.assert_allclose(stats.norms[..., c], _hand_norm(z, p), rtol=rtol)
        np.testing.assert_allclose(stats.norm(p), _hand_norm(z, p), rtol=rtol)
    # p = 2 agrees with numpy's own norm; p = inf is max |z|
    np.testing.assert_allclose(
        stats.norm(2.0), np.linalg.norm(z.astype(np.float64), axis=-1), rtol=rtol
    )


def test_norms_of_known_vector_and_zero_vector() -> None:
    z = np.zeros((2, 1, 2))
    z[0, 0] = [3.0, -4.0]
    stats = compute_stats(z, p=(0.5, 1, 2, "inf"), similarities=())
    sqrt3, sqrt4 = math.sqrt(3), 2.0
    np.testing.assert_allclose(stats.norms[0, 0], [(sqrt3 + sqrt4) ** 2, 7.0, 5.0, 4.0])
    np.testing.assert_array_equal(stats.norms[1, 0], [0.0, 0.0, 0.0, 0.0])


def test_large_values_do_not_overflow() -> None:
    z = np.full((1, 1, 4), 1e30, dtype=np.float32)
    stats = compute_stats(z, p=(2, 3), similarities=())
    np.testing.assert_allclose(stats.norms[0, 0], [2e30, 1e30 * 4 ** (1 / 3)], rtol=1e-5)


def test_similarities_match_hand_computation() -> None:
    z = np.random.default_rng(1).normal(size=(5, 4, 6))
    stats = compute_stats(z, similarities=("cosine", "neg-euclidean", "correlation"))
    i, j = pair_indices(4)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    for n in range(5):
        for c, (a, b) in enumerate(zip(i, j, strict=True)):
            u, v = z[n, a], z[n, b]
            cos = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
            assert stats.sims["cosine"][n, c] == pytest.approx(cos, abs=1e-12)
            assert stats.sims["neg-euclidean"][n, c] == pytest.approx(-np.linalg.norm(u - v))
            assert stats.sims["correlation"][n, c] == pytest.approx(np.corrcoef(u, v)[0, 1])


def test_one_view_gives_empty_similarities() -> None:
    stats = compute_stats(np.ones((3, 1, 4)), similarities=("cosine", "neg-euclidean"))
    assert stats.sims["cosine"].shape == (3, 0)
    assert stats.sims["neg-euclidean"].shape == (3, 0)
    assert stats.n_views == 1


def test_zero_view_has_cosine_zero() -> None:
    z = np.array([[[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]]])
    assert compute_stats(z).sims["cosine"].tolist() == [[0.0, 1.0, 0.0]]


def test_nan_and_inf_rows_are_counted() -> None:
    z = np.random.default_rng(0).normal(size=(10, 2, 3))
    z[2, 0, 1] = np.nan
    z[5, 1, 0] = np.inf
    z[9, 1, 2] = -np.inf
    with pytest.raises(LplaError, match=r"3 of 10 images \(rows 2, 5, 9\)"):
        compute_stats(z, chunk_size=4)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "abc", ()])
def test_bad_p_is_a_user_error(bad: object) -> None:
    with pytest.raises(LplaError, match="p"):
        compute_stats(np.ones((2, 2, 2)), p=bad)  # type: ignore[arg-type]


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(LplaError, match=r"\[N images, K views, D dims\]"):
        compute_stats(np.ones((4, 8)))
    with pytest.raises(LplaError, match="unknown similarity 'dot'"):
        compute_stats(np.ones((2, 2, 2)), similarities=("dot",))
    with pytest.raises(LplaError, match="chunk_size"):
        compute_stats(np.ones((2, 2, 2)), chunk_size=0)
    with pytest.raises(LplaError, match="numbers"):
        compute_stats(np.array([[["a"]]]))


def test_memmap_streams_with_bounded_memory(tmp_path) -> None:
    n, k, d = 20000, 10, 64
    mm = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float16, shape=(n, k, d))
    rng = np.random.default_rng(0)
    for start in range(0, n, 5000):
        mm[start : start + 5000] = rng.normal(size=(5000, k, d)).astype(np.float16)
    mm.flush()
    del mm
    z = np.load(tmp_path / "z.npy", mmap_mode="r")
    assert isinstance(z, np.memmap)

    tracemalloc.start()
    streamed = compute_stats(z, p=(1, 2, "inf"), similarities=("cosine",), chunk_size=1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # outputs are ~12 MB; one float32 copy of the whole input alone would be 51 MB
    assert peak < 30e6, f"peak {peak / 1e6:.1f} MB"

    in_memory = compute_stats(
        np.asarray(z), p=(1, 2, "inf"), similarities=("cosine",), chunk_size=n
    )
    np.testing.assert_allclose(streamed.norms, in_memory.norms, rtol=1e-6)
    np.testing.assert_allclose(streamed.sims["cosine"], in_memory.sims["cosine"], atol=1e-6)
    np.testing.assert_allclose(
        streamed.norm(2.0)[:50], np.linalg.norm(np.asarray(z[:50], np.float64), axis=-1), rtol=1e-5
    )


def test_first_views_equals_querying_fewer_views() -> None:
    z = np.random.default_rng(2).normal(size=(6, 5, 8))
    full = compute_stats(z, p=(1, 2), similarities=("cosine", "neg-euclidean"), clean_view0=True)
    for k in (1, 2, 4, 5):
        sub = full.first_views(k)
        direct = compute_stats(z[:, :k], p=(1, 2), similarities=("cosine", "neg-euclidean"))
        np.testing.assert_allclose(sub.norms, direct.norms)
        for name in ("cosine", "neg-euclidean"):
            np.testing.assert_allclose(sub.sims[name], direct.sims[name], atol=1e-12)
        assert sub.clean_view0
    with pytest.raises(LplaError, match="between 1 and 5"):
        full.first_views(6)


def test_query_stats_lookups_and_validation() -> None:
    stats = compute_stats(np.ones((2, 3, 4)), p=(1, 2))
    assert stats.p_index(2.0) == 1
    with pytest.raises(LplaError, match="p=3 was not computed"):
        stats.norm(3.0)
    with pytest.raises(LplaError, match="similarity 'correlation' was not computed"):
        stats.similarity("correlation")
    with pytest.raises(LplaError, match=r"\[N, K, P\]"):
        QueryStats(np.ones((2, 3)), (2.0,))
    with pytest.raises(LplaError, match=r"K\(K-1\)/2"):
        QueryStats(np.ones((2, 3, 1)), (2.0,), sims={"cosine": np.ones((2, 2))})


def test_attack_input_validation_and_defaults() -> None:
    stats = compute_stats(np.ones((4, 2, 3)), p=(2,))
    item = AttackInput(stats, np.array([1, 0, -1, 1]))
    assert item.member is not None and item.member.dtype == np.int8
    assert item.index is not None and item.index.tolist() == [0, 1, 2, 3]
    assert item.labelled.tolist() == [True, True, False, True]
    with pytest.raises(LplaError, match="member values"):
        AttackInput(stats, np.array([1, 0, 2, 1]))
    with pytest.raises(LplaError, match="one entry per image"):
        AttackInput(stats, np.array([1, 0]))
    with pytest.raises(LplaError, match="same p"):
        AttackInput(stats, reference=compute_stats(np.ones((4, 2, 3)), p=(1,)))
    sub = AttackInput(stats, np.array([1, 0, -1, 1]), np.arange(4) + 10).subset(np.array([3, 0]))
    assert sub.index is not None and sub.index.tolist() == [13, 10]
