"""Honest numbers: results.json says how sure it is (CI, sizes), refuses rates it cannot resolve,
and warns when the shadow saw the target's members."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lpla.embeddings import write_embeddings
from test_reliability_common import _tally, count, invoke  # noqa: F401


def _write(
    path: Path,
    n_members: int,
    n_nonmembers: int,
    seed: int,
    index: np.ndarray | None = None,
    dataset: str | None = "fashion-mnist",
) -> Path:
    g = np.random.default_rng(seed)
    member = np.r_[np.ones(n_members, np.int8), np.zeros(n_nonmembers, np.int8)]
    emb = g.normal(size=(len(member), 2, 3)).astype(np.float32)
    emb[member == 1] *= 0.6  # members: smaller norms (a real, learnable signal)
    idx = np.arange(len(member), dtype=np.int64) if index is None else index
    meta = {"dataset": dataset} if dataset else {}
    return write_embeddings(path, emb, member, idx, meta)


def _attack(tmp_path: Path, target: Path, shadow: Path) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out"
    res = invoke(
        [
            "attack",
            "--target-embeddings",
            str(target),
            "--shadow-embeddings",
            str(shadow),
            "--attacks",
            "lpla",
            "--n-bootstrap",
            "200",
            "--views-grid",
            "1,2",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
    )
    assert res.exit_code == 0, res.output
    count("outputs_checked")
    return json.loads((out / "results.json").read_text()), res.stderr


def test_results_carry_ci_sizes_and_no_unresolvable_rates(tmp_path: Path) -> None:
    target = _write(tmp_path / "t.npz", 30, 50, seed=0)
    shadow = _write(tmp_path / "s.npz", 30, 30, seed=1, index=np.arange(100, 160))
    results, _ = _attack(tmp_path, target, shadow)
    entry = results["attacks"]["lpla"]
    assert entry["n_members"] == 30 and entry["n_nonmembers"] == 50
    lo, hi = entry["auc_ci95"]
    assert 0.0 <= lo <= entry["auc"] <= hi <= 1.0 and hi > lo
    assert entry["auc"] > 0.7  # the planted signal is found
    # 50 non-members cannot resolve a 0.1% or a 1% false-positive rate: null, with the reason
    assert entry["tpr_at_fpr"]["0.001"] is None and entry["tpr_at_fpr"]["0.01"] is None
    assert any("0.001" in n or "0.1%" in n for n in entry["notes"]), entry["notes"]


def test_tpr_at_low_fpr_is_reported_once_resolvable() -> None:
    from lpla.metrics import evaluate_scores

    g = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(1000)].astype(int)
    scores = g.normal(size=1200) + 3.0 * labels
    small = evaluate_scores(scores[-999 - 200 :], labels[-999 - 200 :], n_bootstrap=50)
    small_members = evaluate_scores(scores[:1199], labels[:1199], n_bootstrap=50)
    full = evaluate_scores(scores, labels, n_bootstrap=50)
    count("inputs", 3)
    assert small_members["n_nonmembers"] == 999 and small_members["tpr_at_fpr"]["0.001"] is None
    assert full["n_nonmembers"] == 1000 and full["tpr_at_fpr"]["0.001"] is not None
    # hand check: at FPR <= 0.1% with 1000 non-members, at most 1 non-member may score above the
    # threshold; the TPR is the share of members above the 2nd-highest non-member score
    neg = np.sort(scores[labels == 0])[::-1]
    expected = float((scores[labels == 1] > neg[1]).mean())
    assert full["tpr_at_fpr"]["0.001"] == pytest.approx(expected, abs=1 / 200)
    assert small["n_members"] == 199


def test_perfect_separation_has_a_degenerate_ci() -> None:
    from lpla.metrics import evaluate_scores

    labels = np.r_[np.ones(20), np.zeros(20)].astype(int)
    entry = evaluate_scores(labels + 0.0, labels, n_bootstrap=100)
    assert entry["auc"] == 1.0 and entry["auc_ci95"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("shadow_index", "shadow_dataset", "warned"),
    [
        (np.r_[np.arange(0, 10), np.arange(500, 530)], "fashion-mnist", True),  # 10 shared members
        (np.arange(500, 540), "fashion-mnist", False),  # disjoint
        (np.r_[np.arange(0, 10), np.arange(500, 530)], "digits", False),  # other dataset
        (np.r_[np.arange(0, 10), np.arange(500, 530)], None, True),  # unknown: warn, hedged
        (np.r_[np.arange(30, 40), np.arange(500, 530)], "fashion-mnist", False),  # target non-mem.
        # LiRA's paired halves: a shadow trained on half of all candidates (members and
        # non-members alike) overlaps by design; 5 + 5 of 30 + 30 is no over-representation
        (np.r_[np.arange(0, 5), np.arange(30, 35), np.arange(500, 530)], "fashion-mnist", False),
        # ... but a shadow that mostly holds target members is flagged even with a few non-members
        (np.r_[np.arange(0, 20), np.arange(30, 32), np.arange(500, 530)], "fashion-mnist", True),
    ],
    ids=[
        "overlap",
        "disjoint",
        "other-dataset",
        "unknown-dataset",
        "shadow-on-target-nonmembers",
        "paired-halves",
        "skewed-halves",
    ],
)
def test_overlapping_shadow_members_are_flagged(
    tmp_path: Path, shadow_index: np.ndarray, shadow_dataset: str | None, warned: bool
) -> None:
    target = _write(tmp_path / "t.npz", 30, 30, seed=0)  # members are indices 0..29
    n_shadow_members = len(shadow_index) - 30
    shadow = _write(
        tmp_path / "s.npz",
        n_shadow_members,
        30,
        seed=1,
        index=shadow_index.astype(np.int64),
        dataset=shadow_dataset,
    )
    count("inputs")
    results, stderr = _attack(tmp_path, target, shadow)
    flagged = [n for n in results["notes"] if "WARNING" in n and "members" in n]
    assert bool(flagged) == warned, results["notes"]
    assert ("lpla: warning:" in stderr) == warned
    if warned:
        shared = len(np.intersect1d(shadow_index[:n_shadow_members], np.arange(30)))
        assert f"{shared} of the target's 30 members" in flagged[0]
