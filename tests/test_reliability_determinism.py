"""Determinism: the same config and seed give the same split, the same views and, on CPU, the same
results.json (timing, creation time and paths aside), whichever directory the run is in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_reliability_common import _tally, count, run_cli  # noqa: F401

VOLATILE = {"created", "timing_s", "command"}
AUDIT = ["audit", "--members", "32", "--epochs", "3", "--no-utility", "--views", "3", "--seed", "4"]


def _normalise(obj: Any, run_dir: str) -> Any:
    """Drop wall-clock fields; make paths relative to the run directory."""
    if isinstance(obj, dict):
        return {k: _normalise(v, run_dir) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_normalise(v, run_dir) for v in obj]
    if isinstance(obj, str):
        return obj.replace(run_dir, "<RUN>")
    return obj


@pytest.mark.slow
def test_same_seed_same_audit_in_two_directories(tmp_path: Path) -> None:
    runs = []
    for name in ("first", "second/nested"):
        cwd = tmp_path / name
        cwd.mkdir(parents=True)
        res = run_cli([*AUDIT, "--out", "run"], cwd=cwd, timeout=600)
        assert res.returncode == 0, res.stderr
        runs.append(cwd / "run")
    a, b = runs
    count("outputs_checked", 3)
    split_a, split_b = (json.loads((r / "split.json").read_text()) for r in runs)
    assert split_a == split_b
    from lpla.embeddings import open_embeddings

    for name in ("target_candidates", "shadow_candidates"):
        ea, eb = (open_embeddings(r / "embeddings" / f"{name}.npz") for r in runs)
        assert np.array_equal(np.asarray(ea.embeddings), np.asarray(eb.embeddings)), name
        assert np.array_equal(ea.index, eb.index) and np.array_equal(ea.member, eb.member)
    ra = _normalise(json.loads((a / "results.json").read_text()), str(a))
    rb = _normalise(json.loads((b / "results.json").read_text()), str(b))
    assert ra["attacks"] == rb["attacks"]  # every number, exactly (floats compared bit for bit)
    assert ra == rb
    scores = [np.load(r / "scores.npz") for r in runs]
    for key in scores[0].files:
        assert np.array_equal(scores[0][key], scores[1][key]), key


def test_same_seed_same_split_and_views(tmp_path: Path) -> None:
    """The fast half of the claim, in-process: split and query views are pure functions of the
    seed (and differ for another seed, so the check can fail)."""
    import sys

    from lpla.data.splits import make_split
    from lpla.query import embed_dataset
    from test_reliability_common import TESTS

    s1 = make_split("fashion-mnist", 10000, members=32, seed=4)
    s2 = make_split("fashion-mnist", 10000, members=32, seed=4)
    s3 = make_split("fashion-mnist", 10000, members=32, seed=5)
    assert s1.fingerprint() == s2.fingerprint() != s3.fingerprint()
    sys.path.insert(0, str(TESTS))
    from fixtures_user_model import tiny_encoder
    from lpla.data.base import ArrayDataset

    g = np.random.default_rng(0)
    ds = ArrayDataset(
        g.integers(0, 255, (12, 1, 12, 12), dtype=np.uint8),
        np.arange(12) % 3,
        name="tiny",
        split="train",
        num_classes=3,
    )

    def views(seed: int) -> np.ndarray:
        emb = embed_dataset(
            tiny_encoder(),
            ds,
            np.arange(12),
            views=4,
            augmentation="weak",
            seed=seed,
            batch_size=5,
            progress=False,
        )
        assert not isinstance(emb, Path)  # no out=: the arrays come back in memory
        return np.asarray(emb.embeddings)

    count("outputs_checked", 2)
    assert np.array_equal(views(1), views(1))
    assert not np.array_equal(views(1), views(2))
