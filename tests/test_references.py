"""Per-image calibration design: the keep matrix and `lpla audit --reference-models M`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lpla.data.splits import KeepMatrix, make_keep_matrix
from lpla.errors import LplaError


def _keep(p: int = 300, n: int = 64, m: int = 8, seed: int = 0) -> KeepMatrix:
    candidates = np.arange(1000, 1000 + p)
    members = np.random.default_rng(1).choice(candidates, n, replace=False)
    return make_keep_matrix(candidates, members, m, seed)


def test_every_reference_trains_on_as_many_images_as_the_target() -> None:
    keep = _keep()
    assert keep.keep.shape == (8, 300)
    assert (keep.keep.sum(axis=1) == 64).all()
    assert keep.target.sum() == 64
    counts = keep.keep.sum(axis=0)  # 8 * 64 / 300 = 1.71 IN per candidate
    assert counts.min() == 1 and counts.max() == 2


def test_halves_give_each_candidate_half_of_the_references() -> None:
    keep = _keep(p=128, n=64, m=6)
    assert (keep.keep.sum(axis=0) == 3).all()
    assert len({tuple(np.flatnonzero(row)) for row in keep.keep}) > 1  # not one set repeated


def test_keep_matrix_is_reproducible_and_seeded() -> None:
    a, b, c = _keep(seed=3), _keep(seed=3), _keep(seed=4)
    assert np.array_equal(a.keep, b.keep)
    assert not np.array_equal(a.keep, c.keep)


def test_members_and_nonmembers_of_a_reference_partition_the_candidates() -> None:
    keep = _keep()
    ins, outs = keep.members_of(2), keep.nonmembers_of(2)
    assert len(np.intersect1d(ins, outs)) == 0
    assert np.array_equal(np.union1d(ins, outs), keep.index)


def test_keep_matrix_round_trips_and_rejects_damage(tmp_path: Path) -> None:
    keep = _keep()
    path = tmp_path / "keep.npz"
    keep.save(path)
    back = KeepMatrix.load(path)
    assert np.array_equal(back.keep, keep.keep) and np.array_equal(back.index, keep.index)
    assert back.summary() == keep.summary()
    path.write_bytes(b"not a zip")
    with pytest.raises(LplaError, match="not a keep-matrix file"):
        KeepMatrix.load(path)
    with pytest.raises(LplaError, match="not found"):
        KeepMatrix.load(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    ("members", "refs", "message"),
    [(np.arange(5), 0, "at least 1"), (np.arange(300), 4, "members < candidates")],
)
def test_keep_matrix_bad_arguments(members: np.ndarray, refs: int, message: str) -> None:
    with pytest.raises(LplaError, match=message):
        make_keep_matrix(np.arange(300), members, refs, 0)


def test_reference_models_refuse_other_data_and_negative_counts() -> None:
    from lpla.audit import AuditConfig

    with pytest.raises(LplaError, match="drop other-data"):
        AuditConfig(reference_models=4, knowledge="other-data").validate()
    with pytest.raises(LplaError, match=">= 0"):
        AuditConfig(reference_models=-1).validate()


def test_reference_mode_splits_leave_out_the_population_shadow() -> None:
    from lpla.audit import AuditConfig, target_split

    default, refs = target_split(AuditConfig()), target_split(AuditConfig(reference_models=4))
    assert refs.sizes["shadow_member"] == 0 and default.sizes["shadow_member"] == 128
    # the target's members and non-members are the same images either way
    for role in ("target_member", "target_nonmember"):
        assert np.array_equal(default.indices(role), refs.indices(role))


def test_cli_refuses_reference_models_with_a_given_target(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    res = CliRunner().invoke(
        app,
        ["audit", "--target-embeddings", str(tmp_path / "t.npz"), "--reference-models", "4"],
    )
    assert res.exit_code == 2
    assert "--reference-models" in res.output and not (tmp_path / "audit-out").exists()
    res = CliRunner().invoke(
        app, ["audit", "--target-embeddings", str(tmp_path / "t.npz"), "--defense", "noise:0.5"]
    )
    assert res.exit_code == 2 and "--defense" in res.output


TINY = {
    "members": 24,
    "nonmembers": 48,
    "reference": 40,
    "views": 3,
    "views_grid": [1, 3],
    "n_bootstrap": 50,
    "utility": False,
    "reference_models": 3,
    "target": {"framework": "simclr", "backbone": "mlp", "epochs": 2, "batch_size": 12},
}


@pytest.mark.slow
def test_audit_with_reference_models_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app
    from lpla.ssl.checkpoint import Checkpoint

    cfg = tmp_path / "audit.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["audit", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    info = results["reference_models"]
    assert info["references"] == 3 and info["candidates"] == 72
    assert info["members_per_reference"] == 24
    assert results["shadow"]["count"] == 3
    keep = KeepMatrix.load(out / info["keep_file"])
    for i, name in enumerate(info["names"]):
        emb = np.load(out / "embeddings" / f"{name}_candidates.npz")
        member = dict(zip(emb["index"].tolist(), emb["member"].tolist(), strict=True))
        assert [member[j] for j in keep.index.tolist()] == keep.keep[i].astype(int).tolist()
        meta = Checkpoint(out / "references" / name).meta()
        assert meta["finished"] and meta["num_members"] == 24
    assert {"lpla-lira", "lpla"} <= set(results["attacks"])
    for entry in results["attacks"].values():
        assert set(entry["tpr_at_fpr_ci95"]) == {"0.001", "0.01"}
    # a re-run trains nothing
    again = CliRunner().invoke(app, ["audit", "--config", str(cfg), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "[run] train_references" not in again.output
