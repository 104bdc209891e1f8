"""`lpla train` and `lpla utility` on the command line (CliRunner and a real subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str]):
    from typer.testing import CliRunner

    from lpla.cli import app

    return CliRunner().invoke(app, args)


def test_the_documented_call_trains_and_reports_utility(tmp_path: Path) -> None:
    out = tmp_path / "enc"
    result = _run(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--framework",
            "simclr",
            "--backbone",
            "cnn-small",
            "--members",
            "512",
            "--epochs",
            "3",
            "--seed",
            "0",
            "--out",
            str(out),
            "--utility-train-limit",
            "1000",
            "--no-progress",
        ]
    )
    assert result.exit_code == 0, result.output
    assert f"encoder: {out}" in result.output and "utility: linear probe" in result.output
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["epoch"] == 3 and meta["num_members"] == 512 and meta["steps_per_epoch"] == 2
    util = meta["utility"]
    assert util["num_train"] == 1000 and util["num_test"] == 2000
    assert 0.5 < util["linear_probe_acc"] <= 1 and 0.5 < util["linear_probe_acc_pixels"] <= 1
    assert {"knn_acc", "knn_acc_k200", "knn_acc_pixels"} <= set(util)

    # --resume with nothing else repeats the saved settings; the finished run is reused
    again = _run(["train", "--resume", "--out", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    changed = _run(["train", "--resume", "--out", str(out), "--epochs", "5"])
    assert changed.exit_code == 2 and "epochs=3 (now 5)" in changed.output


def test_config_file_and_flag_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "dataset: fashion-mnist\nframework: byol\nmembers: 40\nepochs: 1\n"
        "batch_size: 20\nutility: false\nframework_params: {hidden_dim: 64}\n"
    )
    out = tmp_path / "enc"
    result = _run(
        [
            "train",
            "--config",
            str(cfg),
            "--members",
            "48",
            "--param",
            "output_dim=32",
            "--augmentation",
            "weak",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["framework"] == "byol" and meta["num_members"] == 48
    assert meta["framework_params"]["hidden_dim"] == 64
    assert meta["framework_params"]["output_dim"] == 32 and meta["augmentation"] == "weak"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mnist-nope"], "unknown dataset 'mnist-nope'"),
        (["--framework", "swav"], "unknown framework 'swav'"),
        (["--backbone", "resnet9"], "unknown backbone 'resnet9'"),
        (["--split", "/nonexistent/split.json"], "split file not found"),
        (["--members", "9000"], "members"),
        (["--temperature", "0.2", "--framework", "byol"], "no parameter temperature"),
        (["--config", "/nonexistent.yaml"], "config '/nonexistent.yaml' not found"),
        (["--epochs", "0"], "epochs must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    base = [
        "train",
        "--members",
        "32",
        "--epochs",
        "1",
        "--no-utility",
        "--no-progress",
        "--out",
        str(tmp_path / "enc"),
    ]
    result = _run(base + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("lpla: error:") and message in lines[-1], result.output
    assert "Traceback" not in result.output


def test_subprocess_train_then_utility(tmp_path: Path) -> None:
    out = tmp_path / "enc"
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "lpla.cli",
            "train",
            "--dataset",
            "fashion-mnist",
            "--framework",
            "vicreg",
            "--backbone",
            "mlp",
            "--members",
            "64",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--no-utility",
            "--no-progress",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert train.returncode == 0, train.stderr
    assert (out / "model.safetensors").is_file()
    util = subprocess.run(
        [
            sys.executable,
            "-m",
            "lpla.cli",
            "utility",
            "--encoder",
            str(out),
            "--train-limit",
            "300",
            "--test-limit",
            "300",
            "--no-pixels",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert util.returncode == 0, util.stderr
    written = json.loads((out / "utility.json").read_text())
    assert written["num_train"] == 300 and written["dataset"] == "fashion-mnist"
    assert re.search(rf"linear probe\W+{written['linear_probe_acc']:.4f}", util.stdout)
    missing = _run(["utility", "--encoder", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "lpla: error: encoder" in missing.output
    assert "not found" in missing.output
