"""Per-image calibrated attacks (lpla-lira, encodermi-t-lira, lpla-rmia) on a per-image signal.

Every candidate image has its own base log norm ``b_i ~ N(0, 1)`` and its own base view
similarity (Fisher z) ``c_i ~ N(1.5, 1)``; an encoder trained on it adds ``DELTA`` to both; every
encoder adds noise ``N(0, SIGMA)`` per image and a scale (norms) or offset (similarities) of its
own. A population attack sees ``b + DELTA`` against ``b``: AUC
``Phi(DELTA / sqrt(2 (1 + SIGMA^2)))`` = .58. The oracle that knows ``b_i`` and the target's
scale sees ``Phi(DELTA / (SIGMA sqrt 2))`` = .983; LiRA, estimating ``b_i`` from about M/2 OUT
shadows, ``Phi(DELTA / (SIGMA sqrt(2 (1 + 2/M))))`` = .977 for M = 16.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from lpla.attacks import (
    AttackInput,
    QueryStats,
    applicable_attacks,
    best_threshold,
    create_attack,
    pair_indices,
)
from lpla.attacks.rmia import OFFLINE_A_GRID
from lpla.errors import LplaError
from lpla.metrics import auc, balanced_accuracy

N, K, DELTA, SIGMA, M = 2000, 4, 0.3, 0.1, 16
INDEX = np.arange(N) * 5 + 11  # dataset indices, not row numbers
ORACLE_AUC = float(norm.cdf(DELTA / (SIGMA * math.sqrt(2))))
LIRA_AUC = float(norm.cdf(DELTA / (SIGMA * math.sqrt(2 * (1 + 2 / M)))))
POPULATION_AUC = float(norm.cdf(DELTA / math.sqrt(2 * (1 + SIGMA**2))))
PER_IMAGE = ("lpla-lira", "encodermi-t-lira", "lpla-rmia")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Two BLAS threads on a busy 2-core machine thrash (4x slower matrix products)."""
    with threadpool_limits(1):
        yield


class _World:
    """Candidates with per-image norm and similarity levels; encoders on random halves."""

    def __init__(self, seed: int, n: int = N) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.index = np.arange(n) * 5 + 11
        self.norm_level = self.rng.normal(0.0, 1.0, n)
        self.sim_level = self.rng.normal(1.5, 1.0, n)
        self.ref_norm_level = self.rng.normal(0.0, 1.0, 1000)  # population: no encoder's member
        self.ref_sim_level = self.rng.normal(1.5, 1.0, 1000)

    def half(self) -> np.ndarray:
        member = np.zeros(self.n, dtype=np.int8)
        member[self.rng.permutation(self.n)[: self.n // 2]] = 1
        return member

    def _stats(self, norm_level: np.ndarray, sim_level: np.ndarray, scale: float) -> QueryStats:
        n = norm_level.size
        views = norm_level[:, None] + 0.02 * self.rng.normal(size=(n, K))
        pairs = len(pair_indices(K)[0])
        sims = np.tanh(sim_level[:, None] + 0.02 * self.rng.normal(size=(n, pairs)))
        return QueryStats((scale * np.exp(views))[..., None], (2.0,), {"cosine": sims})

    def encoder(self, member: np.ndarray, name: str, reference: bool = False) -> AttackInput:
        scale, offset = math.exp(self.rng.normal()), 0.2 * self.rng.normal()
        noise = SIGMA * self.rng.normal(size=(2, self.n))
        stats = self._stats(
            self.norm_level + DELTA * member + noise[0],
            self.sim_level + offset + DELTA * member + noise[1],
            scale,
        )
        ref = None
        if reference:
            ref_noise = SIGMA * self.rng.normal(size=(2, 1000))
            ref = self._stats(
                self.ref_norm_level + ref_noise[0],
                self.ref_sim_level + offset + ref_noise[1],
                scale,
            )
        self.last_scale = scale
        return AttackInput(stats, member, self.index, ref, name)


@pytest.fixture(scope="module")
def world() -> tuple[_World, list[AttackInput], AttackInput, float]:
    w = _World(0)
    shadows = [w.encoder(w.half(), f"shadow-{m}") for m in range(M)]
    target = w.encoder(w.half(), "target")
    return w, shadows, target, w.last_scale


def test_per_image_attacks_beat_population_attacks_near_the_oracle(world) -> None:
    w, shadows, target, scale = world
    labels = target.member
    # the oracle knows each image's base log norm and the target's scale
    oracle = np.log(target.stats.norm(2.0).mean(axis=1) / scale) - w.norm_level
    oracle_auc = auc(oracle, labels)
    assert oracle_auc == pytest.approx(ORACLE_AUC, abs=0.01)

    population = {
        "lpla": create_attack("lpla", calibration="none", statistic="mean").fit(shadows[0]),
        "encodermi-t": create_attack("encodermi-t").fit(shadows[0]),
    }
    population_auc = {n: auc(a.score(target), labels) for n, a in population.items()}
    for value in population_auc.values():
        assert value == pytest.approx(POPULATION_AUC, abs=0.04)

    measured = {}
    for name in PER_IMAGE:
        for mode in ("online", "offline"):
            attack = create_attack(name, mode=mode).fit(shadows)
            scores = attack.score(target)
            measured[name, mode] = auc(scores, labels)
            assert measured[name, mode] > max(population_auc.values()) + 0.3, (name, mode)
            # the leave-one-shadow-out threshold transfers: near the best balanced accuracy
            assert attack.threshold_ is not None
            assert balanced_accuracy(scores, labels, attack.threshold_) > 0.84, (name, mode)
    # LiRA on either statistic reaches its closed form; RMIA's bounded signal costs a little
    for name in ("lpla-lira", "encodermi-t-lira"):
        assert measured[name, "online"] == pytest.approx(LIRA_AUC, abs=0.015)
        assert measured[name, "offline"] == pytest.approx(LIRA_AUC, abs=0.02)
    assert oracle_auc - 0.04 < measured["lpla-rmia", "online"] < oracle_auc
    assert oracle_auc - 0.06 < measured["lpla-rmia", "offline"] < oracle_auc


def test_combination_learns_its_weights_on_held_out_reference_scores(world) -> None:
    """Norm and similarity noise are independent here: together they carry sqrt(2) times the
    signal, AUC Phi(2 sqrt 2) = .998 (with M = 16), far above either part alone."""
    _, shadows, target, _ = world
    combined = create_attack("lira-combined").fit(shadows)
    parts = [create_attack(name).fit(shadows) for name in ("lpla-lira", "encodermi-t-lira")]
    expected = float(norm.cdf(math.sqrt(2) * DELTA / (SIGMA * math.sqrt(2 * (1 + 2 / M)))))
    measured = auc(combined.score(target), target.member)
    assert measured == pytest.approx(expected, abs=0.005)
    assert measured > max(auc(a.score(target), target.member) for a in parts) + 0.01
    fitted = combined.fitted_params()
    assert fitted["weight_norm_"] > 0 and fitted["weight_similarity_"] > 0
    assert fitted["weight_norm_"] == pytest.approx(fitted["weight_similarity_"], rel=0.2)
    assert balanced_accuracy(combined.score(target), target.member, combined.threshold_) > 0.96
    with pytest.raises(LplaError, match="C must be a number > 0"):
        create_attack("lira-combined", C=0)


def test_same_core_same_scores() -> None:
    """encodermi-t-lira and lpla-lira differ only in the statistic: fed the same one (the
    Fisher z of the mean cosine equal to the log mean norm), they score identically."""
    rng = np.random.default_rng(3)
    n, k, level = 500, 3, rng.normal(0.0, 0.4, 500)

    def encoder(member: np.ndarray) -> AttackInput:
        x = level + 0.2 * member + 0.05 * rng.normal(size=n)
        pairs = np.repeat(np.tanh(x)[:, None], k * (k - 1) // 2, axis=1)
        norms = np.repeat(np.exp(x)[:, None, None], k, axis=1)
        return AttackInput(QueryStats(norms, (2.0,), {"cosine": pairs}), member, np.arange(n))

    halves = [(rng.permutation(n) < n // 2).astype(np.int8) for _ in range(7)]
    shadows, target = [encoder(h) for h in halves[:6]], encoder(halves[6])
    for params in ({}, {"mode": "offline"}, {"calibration": "none", "fix_variance": False}):
        by_norm = create_attack("lpla-lira", **params).fit(shadows)
        by_similarity = create_attack("encodermi-t-lira", **params).fit(shadows)
        assert by_similarity.fitted_params()["transform_"] == "atanh"
        # equal up to atanh(tanh(x)) vs log(exp(x)) rounding (amplified where a per-candidate
        # variance is tiny)
        np.testing.assert_allclose(
            by_similarity.score(target), by_norm.score(target), rtol=1e-6, atol=1e-9
        )
        assert by_similarity.threshold_ == pytest.approx(by_norm.threshold_, rel=1e-6)


@pytest.mark.parametrize("name", PER_IMAGE)
def test_threshold_comes_from_leave_one_shadow_out_scores(world, name: str) -> None:
    _, shadows, _, _ = world
    few = shadows[:5]
    params = {"offline_a": 0.5, "mode": "offline"} if name == "lpla-rmia" else {}
    attack = create_attack(name, **params).fit(few)
    scores, labels = [], []
    for i, shadow in enumerate(few):
        others = create_attack(name, **params).fit(few[:i] + few[i + 1 :])
        scores.append(others.score(shadow))
        labels.append(shadow.member)
    expected = best_threshold(np.concatenate(scores), np.concatenate(labels))
    assert attack.threshold_ == pytest.approx(expected, abs=1e-6)
    # in-sample scores (the shadows scored by a fit that contains them) give another threshold
    in_sample = np.concatenate([attack.score(s) for s in few])
    assert best_threshold(in_sample, np.concatenate(labels)) != pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", PER_IMAGE)
def test_shadows_are_matched_by_index_not_by_row_or_order(world, name: str) -> None:
    _, shadows, target, _ = world
    attack = create_attack(name).fit(shadows[:6])
    scores = attack.score(target)
    rng = np.random.default_rng(5)
    shuffled = [s.subset(rng.permutation(N)) for s in shadows[:6]][::-1]
    again = create_attack(name).fit(shuffled)
    order = rng.permutation(N)
    np.testing.assert_allclose(again.score(target.subset(order)), scores[order], atol=1e-9)
    assert again.threshold_ == pytest.approx(attack.threshold_, abs=1e-9)


def test_rmia_offline_with_two_references() -> None:
    w = _World(1)
    shadows = [w.encoder(w.half(), f"s{m}") for m in range(2)]
    target = w.encoder(w.half(), "target")
    attack = create_attack("lpla-rmia", mode="offline").fit(shadows)
    fitted = attack.fitted_params()
    assert fitted["offline_a_"] in OFFLINE_A_GRID and 0.5 < fitted["offline_a_auc_"] <= 1.0
    scores = attack.score(target)
    assert np.isfinite(scores).all() and 0.0 <= scores.min() and scores.max() <= 1.0
    # one OUT value for ~half the candidates, none for a quarter: weaker, far above chance
    assert auc(scores, target.member) > 0.75
    fixed = create_attack("lpla-rmia", mode="offline", offline_a=0.33).fit(shadows)
    assert fixed.fitted_params()["offline_a_"] == 0.33


def test_rmia_scores_are_fractions_of_the_population_and_gamma_counts_fewer() -> None:
    w = _World(2)
    shadows = [w.encoder(w.half(), f"s{m}", reference=True) for m in range(4)]
    target = w.encoder(w.half(), "target", reference=True)
    attack = create_attack("lpla-rmia").fit(shadows)
    assert attack.fitted_params()["population_"] == "reference"
    assert attack.fitted_params()["n_population_"] == 1000
    scores = attack.score(target)
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    np.testing.assert_allclose(scores * 1000, np.round(scores * 1000), atol=1e-9)
    strict = create_attack("lpla-rmia", gamma=1.5).fit(shadows).score(target)
    assert (strict <= scores).all() and (strict < scores).mean() > 0.5
    # z from the candidates instead: the same ranking up to ties (the z set is fixed)
    pooled = create_attack("lpla-rmia", population="candidates").fit(shadows)
    assert auc(pooled.score(target), target.member) == pytest.approx(
        auc(scores, target.member), abs=0.01
    )
    assert target.reference is not None
    other_images = target.reference.subset(np.arange(500))
    with pytest.raises(LplaError, match="the target needs its answers on the same reference"):
        attack.score(AttackInput(target.stats, target.member, target.index, other_images))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"gamma": 0}, "gamma must be a number > 0"),
        ({"gamma": -1.0}, "gamma must be a number > 0"),
        ({"gamma": "2"}, "gamma must be a number > 0"),
        ({"gamma": math.inf}, "gamma must be a number > 0"),
        ({"offline_a": 1.5}, r"offline_a must be in \[0, 1\]"),
        ({"offline_a": -0.1}, r"offline_a must be in \[0, 1\]"),
        ({"offline_a": True}, r"offline_a must be in \[0, 1\]"),
        ({"mode": "both"}, "mode='both' is not one of"),
        ({"signal": "gaussian"}, "signal='gaussian' is not one of"),
        ({"population": "z"}, "population='z' is not one of"),
    ],
)
def test_rmia_params_are_validated(params: dict, message: str) -> None:
    with pytest.raises(LplaError, match=message):
        create_attack("lpla-rmia", **params)


def test_encodermi_t_lira_transform_choice() -> None:
    assert create_attack("encodermi-t-lira", similarity="neg-euclidean").transform == "auto"
    with pytest.raises(LplaError, match="transform='atanh' needs a similarity in"):
        create_attack("encodermi-t-lira", similarity="neg-euclidean", transform="atanh")
    with pytest.raises(LplaError, match="transform='log' is not one of"):
        create_attack("encodermi-t-lira", transform="log")


@pytest.mark.parametrize("name", PER_IMAGE)
def test_input_errors(world, name: str) -> None:
    _, shadows, target, _ = world
    with pytest.raises(LplaError, match="needs 2 shadows"):
        create_attack(name).fit([shadows[0]])
    moved = AttackInput(shadows[1].stats, shadows[1].member, shadows[1].index + 1, name="moved")
    with pytest.raises(LplaError, match="the shadows share no candidate image"):
        create_attack(name).fit([shadows[0], moved])
    all_in = AttackInput(shadows[1].stats, np.ones(N, np.int8), shadows[1].index, name="all-in")
    with pytest.raises(LplaError, match=r"needs members \(1\) and non-members \(0\); got 2000"):
        create_attack(name).fit([shadows[0], all_in])
    attack = create_attack(name).fit(shadows[:3])
    with pytest.raises(LplaError, match="none of the target's 2000 images is a candidate"):
        attack.score(AttackInput(target.stats, target.member, target.index + 1))


def test_encodermi_t_lira_needs_two_views(world) -> None:
    _, shadows, _, _ = world
    with pytest.raises(LplaError, match="needs at least 2 views"):
        create_attack("encodermi-t-lira").fit([s.first_views(1) for s in shadows[:2]])


# --- end to end: lpla attack on 16 shadows' embeddings files ----------------------------------


def _embeddings_files(tmp: Path, n: int, m: int, k: int, d: int, seed: int = 0) -> list[Path]:
    """A target and m shadows over one candidate pool, as lpla .npz files: per-image base norm
    and view spread; members have larger norms and tighter views (by DELTA in log units)."""
    from lpla.embeddings import write_embeddings

    rng = np.random.default_rng(seed)
    base_norm, base_spread = rng.normal(0.0, 1.0, n), rng.normal(-1.0, 0.5, n)
    centre = rng.normal(size=(n, d))
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    index = np.arange(n) * 3 + 7
    files = []
    for e in range(m + 1):
        member = np.zeros(n, np.int8)
        member[rng.permutation(n)[: n // 2]] = 1
        log_norm = base_norm + DELTA * member + SIGMA * rng.normal(size=n)
        spread = np.exp(base_spread - DELTA * member + SIGMA * rng.normal(size=n))
        views = centre[:, None] + spread[:, None, None] * rng.normal(size=(n, k, d)) / d**0.5
        views /= np.linalg.norm(views, axis=2, keepdims=True)
        norms = math.exp(rng.normal()) * np.exp(log_norm[:, None] + 0.02 * rng.normal(size=(n, k)))
        name = "target" if e == 0 else f"shadow{e}"
        emb = (views * norms[..., None]).astype(np.float32)
        files.append(write_embeddings(tmp / f"{name}.npz", emb, member, index))
    return files


def test_attack_cli_reports_per_image_attacks_by_default(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    target, *shadows = _embeddings_files(tmp_path, n=N, m=M, k=K, d=16)
    assert set(PER_IMAGE) <= set(applicable_attacks(K, M, True))
    assert not set(PER_IMAGE) & set(applicable_attacks(K, 1, True))
    out = tmp_path / "out"
    args = ["attack", "--target-embeddings", str(target)]
    for s in shadows:
        args += ["--shadow-embeddings", str(s)]
    args += ["--n-bootstrap", "200", "--views-grid", "2,4", "--out", str(out)]
    # the MLP baselines on 16 x 2000 shadow rows are the slow part; fewer iterations here
    for mlp in ("encodermi-v", "encodermi-s"):
        args += ["--attack-param", f"{mlp}.max_iter=15"]
    start = time.perf_counter()
    res = CliRunner().invoke(app, args)
    elapsed = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())["attacks"]
    for name in (*PER_IMAGE, "lira-combined"):
        entry = results[name]
        assert entry["auc"] > 0.9, (name, entry["auc"])
        assert entry["auc"] > results["lpla"]["auc"] + 0.25
        assert entry["auc"] > results["encodermi-t"]["auc"] + 0.2
        lo, hi = entry["tpr_at_fpr_ci95"]["0.01"]
        assert lo <= entry["tpr_at_fpr"]["0.01"] <= hi and hi > lo
        assert entry["fitted"]["n_shadows_"] == M and entry["fitted"]["n_candidates_"] == N
    assert results["lpla-rmia"]["fitted"]["population_"] == "candidates"
    assert results["encodermi-t-lira"]["fitted"]["transform_"] == "atanh"
    assert elapsed < 60, elapsed
