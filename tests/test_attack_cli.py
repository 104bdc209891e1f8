"""`lpla attack` on embeddings files with a known signal, and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpla.embeddings import write_embeddings


def _encoder_files(
    tmp: Path,
    name: str,
    scale: float,
    seed: int,
    n: int = 300,
    k: int = 4,
    d: int = 16,
    effect: float = 0.4,
) -> tuple[Path, Path]:
    """Candidates (members have larger norms) and a reference set, as lpla .npz files."""
    rng = np.random.default_rng(seed)
    member = (np.arange(n) < n // 2).astype(np.int8)

    def emb(log_norm: np.ndarray) -> np.ndarray:
        direction = rng.normal(size=(len(log_norm), k, d))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        norms = scale * np.exp(log_norm[:, None] + 0.1 * rng.normal(size=(len(log_norm), k)))
        return (direction * norms[..., None]).astype(np.float32)

    cand = write_embeddings(
        tmp / f"{name}.npz",
        emb(0.3 * rng.normal(size=n) + effect * member),
        member,
        np.arange(n) + 1000 * seed,
    )
    ref = write_embeddings(
        tmp / f"{name}_ref.npz", emb(0.3 * rng.normal(size=200)), np.zeros(200, np.int8)
    )
    return cand, ref


def _run(args: list[str]):
    from typer.testing import CliRunner

    from lpla.cli import app

    return CliRunner().invoke(app, args)


def test_attack_from_embeddings_finds_the_norm_signal(tmp_path: Path) -> None:
    t, t_ref = _encoder_files(tmp_path, "target", scale=3.0, seed=1)
    s, s_ref = _encoder_files(tmp_path, "shadow", scale=1.0, seed=2)
    out = tmp_path / "out"
    res = _run(
        [
            "attack",
            "--target-embeddings",
            str(t),
            "--shadow-embeddings",
            str(s),
            "--reference-embeddings",
            str(t_ref),
            "--shadow-reference-embeddings",
            str(s_ref),
            "--n-bootstrap",
            "100",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    for name in ("lpla", "lpla-ref", "norm-threshold"):
        entry = results["attacks"][name]
        assert entry["auc"] > 0.8, (name, entry["auc"])
        lo, hi = entry["auc_ci95"]
        assert lo <= entry["auc"] <= hi
        assert set(entry["tpr_at_fpr"]) == {"0.001", "0.01"}
        assert entry["tpr_at_fpr"]["0.001"] is None  # 150 non-members cannot resolve 0.1% FPR
        assert {"balanced_accuracy", "advantage", "roc"} <= set(entry)
    # view similarity carries no signal here
    assert abs(results["attacks"]["encodermi-t"]["auc"] - 0.5) < 0.12
    assert set(results["auc_vs_views"]["lpla"]) == {"1", "2"}  # K = 4: the grid's 1, 2 (5, 10 > K)
    assert (out / "scores.npz").is_file()


def test_mismatched_views_is_a_clear_error(tmp_path: Path) -> None:
    t, _ = _encoder_files(tmp_path, "target", 1.0, 1, k=4)
    s, _ = _encoder_files(tmp_path, "shadow", 1.0, 2, k=3)
    res = _run(
        [
            "attack",
            "--target-embeddings",
            str(t),
            "--shadow-embeddings",
            str(s),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert res.exit_code == 2
    assert "same --views" in res.output
    assert not (tmp_path / "o" / "results.json").exists()


def test_shadow_without_members_is_a_clear_error(tmp_path: Path) -> None:
    t, _ = _encoder_files(tmp_path, "target", 1.0, 1)
    z = np.ones((10, 4, 16), np.float32)
    s = write_embeddings(tmp_path / "s.npz", z, np.zeros(10, np.int8))
    res = _run(
        [
            "attack",
            "--target-embeddings",
            str(t),
            "--shadow-embeddings",
            str(s),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert res.exit_code == 2
    assert "members and non-members" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "either --target"),
        (["--target-embeddings", "missing.npz", "--shadow-embeddings", "missing.npz"], "not found"),
    ],
)
def test_bad_invocations(tmp_path: Path, args: list[str], message: str) -> None:
    res = _run(["attack", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert message in res.output


def test_attack_subprocess_user_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lpla.cli", "attack", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("lpla: error:")
    assert "Traceback" not in proc.stderr
