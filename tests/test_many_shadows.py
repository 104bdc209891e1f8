"""Many shadows as independent jobs: paired-halves training, merge, LiRA via `lpla attack`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from lpla.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.slow
def test_shadow_jobs_merge_and_feed_lira(tmp_path: Path) -> None:
    common = [
        "--dataset",
        "fashion-mnist",
        "--framework",
        "simclr",
        "--backbone",
        "mlp",
        "--members",
        "16",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--no-utility",
        "--no-progress",
    ]
    target = tmp_path / "target"
    res = _cli(["train", *common, "--out", str(target)])
    assert res.exit_code == 0, res.output
    shadows = []
    for i in range(2):
        out = tmp_path / f"shadow{i}"
        res = _cli(
            [
                "train",
                *common,
                "--role",
                "shadow",
                "--split",
                str(target / "split.json"),
                "--shadow-index",
                str(i),
                "--num-shadows",
                "2",
                "--out",
                str(out),
            ]
        )
        assert res.exit_code == 0, res.output
        shadows.append(out)

    merged = tmp_path / "membership.npz"
    res = _cli(["merge-shadows", *map(str, shadows), "--out", str(merged)])
    assert res.exit_code == 0, res.output
    with np.load(merged) as z:
        membership, index = z["membership"], z["index"]
    assert membership.shape == (2, len(index))
    assert (membership.sum(axis=0) == 1).all()  # each population image IN for exactly half

    out = tmp_path / "attack"
    res = _cli(
        [
            "attack",
            "--target",
            str(target),
            "--shadow",
            str(shadows[0]),
            "--shadow",
            str(shadows[1]),
            "--views",
            "2",
            "--attacks",
            "lpla-lira,lpla",
            "--n-bootstrap",
            "20",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["attacks"]) == {"lpla-lira", "lpla"}
    assert 0.0 <= results["attacks"]["lpla-lira"]["auc"] <= 1.0


def test_merge_refuses_non_shadow_dirs(tmp_path: Path) -> None:
    d = tmp_path / "enc"
    d.mkdir()
    (d / "checkpoint.json").write_text(json.dumps({"config": {"shadow_index": None}}))
    res = _cli(["merge-shadows", str(d), "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 2 and "not a paired-halves shadow" in res.output
    assert not (tmp_path / "m.npz").exists()
