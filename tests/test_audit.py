"""`lpla audit` end to end on tiny settings: results, caching, knowledge, defenses, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = {
    "members": 16,
    "views": 3,
    "views_grid": [1, 3],
    "n_bootstrap": 50,
    "utility": False,
    "target": {"framework": "simclr", "backbone": "mlp", "epochs": 2, "batch_size": 16},
}


def _config(tmp: Path, **extra: object) -> Path:
    path = tmp / "audit.yaml"
    path.write_text(yaml.safe_dump(TINY | extra))
    return path


def _audit(args: list[str]):
    from typer.testing import CliRunner

    from lpla.cli import app

    return CliRunner().invoke(app, ["audit", *args])


@pytest.mark.slow
def test_audit_writes_results_report_and_caches_stages(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _audit(["--config", str(_config(tmp_path)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert {"attacks", "config", "split", "command", "versions", "auc_vs_views"} <= set(results)
    assert results["split"]["sizes"]["target_member"] == 16
    # few members, but >= 1000 non-members and reference images by default (TPR@1%FPR)
    assert results["split"]["sizes"]["target_nonmember"] == 1000
    assert results["split"]["sizes"]["reference"] == 1000
    for name in ("lpla", "lpla-diff", "lpla-ref", "norm-threshold", "encodermi-t"):
        entry = results["attacks"][name]
        assert 0.0 <= entry["auc"] <= 1.0 and len(entry["auc_ci95"]) == 2
        assert set(entry["tpr_at_fpr"]) == {"0.001", "0.01"}
    html = (out / "report.html").read_text()
    assert 'id="attack-table"' in html and "data:image/png;base64" in html
    for f in (
        "split.json",
        "audit_config.json",
        "norms.npz",
        "scores.npz",
        "target/model.safetensors",
        "shadow/model.safetensors",
        "embeddings/target_candidates.npz",
    ):
        assert (out / f).exists(), f
    # a re-run trains nothing and queries nothing: every stage is cached
    again = _audit(["--config", str(_config(tmp_path)), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "[run] train" not in again.output and "[run] embed" not in again.output
    assert again.output.count("[cached]") >= 7
    # the same numbers
    assert json.loads((out / "results.json").read_text())["attacks"] == results["attacks"]


@pytest.mark.slow
def test_audit_other_framework_shares_the_split_and_measures_a_defense(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(tmp_path, knowledge="other-framework", defenses=["l2-normalize"])
    res = _audit(["--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["knowledge"] == "other-framework"
    assert results["shadow"]["framework"] == "byol" and results["target"]["framework"] == "simclr"
    defenses = {e["defense"]: e["attacks"] for e in results["defenses"]}
    assert "l2-normalize" in defenses
    # after L2 normalisation the L2 norm is constant: no norm attack can use p=2 alone
    assert "lpla" in defenses["l2-normalize"]


@pytest.mark.slow
def test_audit_of_given_encoders_and_embeddings(tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert _audit(["--config", str(_config(tmp_path)), "--out", str(base)]).exit_code == 0
    mine = tmp_path / "mine"
    res = _audit(
        [
            "--target",
            str(base / "target"),
            "--shadow",
            str(base / "shadow"),
            "--views",
            "3",
            "--out",
            str(mine),
        ]
    )
    assert res.exit_code == 0, res.output
    assert (mine / "report.html").is_file()
    assert "lpla-diff" in json.loads((mine / "results.json").read_text())["attacks"]
    from typer.testing import CliRunner

    from lpla.cli import app

    att = tmp_path / "att"
    res = CliRunner().invoke(
        app,
        [
            "attack",
            "--target",
            str(base / "target"),
            "--shadow",
            str(base / "shadow"),
            "--views",
            "3",
            "--n-bootstrap",
            "20",
            "--out",
            str(att),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "lpla-diff" in json.loads((att / "results.json").read_text())["attacks"]
    emb = tmp_path / "emb"
    res = _audit(
        [
            "--target-embeddings",
            str(base / "embeddings/target_candidates.npz"),
            "--shadow-embeddings",
            str(base / "embeddings/shadow_candidates.npz"),
            "--reference-embeddings",
            str(base / "embeddings/target_reference.npz"),
            "--out",
            str(emb),
        ]
    )
    assert res.exit_code == 0, res.output
    assert "lpla" in json.loads((emb / "results.json").read_text())["attacks"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--members", "1"], "--members must be at least 2"),
        (["--knowledge", "telepathy"], "unknown knowledge setting"),
        (["--p", "0"], "every p must be > 0"),
        (["--dataset", "nope"], "unknown dataset"),
        (["--framework", "nope", "--epochs", "1"], "unknown"),
    ],
)
def test_audit_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    res = _audit([*args, "--out", str(out), "--no-utility"])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (out / "results.json").exists()


def test_audit_config_unknown_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: 16\ncolour: blue\n")
    res = _audit(["--config", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown option" in res.output


@pytest.mark.parametrize(
    "command", ["audit", "attack", "utility", "train", "embed", "study", "report", "list"]
)
def test_subprocess_help(command: str) -> None:
    """Every command's help renders (rich reads [..] in help texts as markup)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lpla.cli", command, "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage" in proc.stdout
    if command == "audit":
        assert "--knowledge" in proc.stdout and "--train-shadows" in proc.stdout
