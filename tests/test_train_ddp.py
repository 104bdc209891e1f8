"""DDP through Lightning Fabric on a CPU 2-process gloo group (lightly's own test pattern)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")


@pytest.mark.slow
def test_two_cpu_ranks_split_every_batch_and_end_identical(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lpla.cli",
            "train",
            "--dataset",
            "fashion-mnist",
            "--members",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--devices",
            "2",
            "--device",
            "cpu",
            "--no-utility",
            "--no-progress",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("encoder:") == 1  # only rank 0 reports
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["world_size"] == 2 and meta["batch_size"] == 32
    # each rank took its half of every global batch, and gradient all-reduce kept them equal
    assert meta["distributed"] == {
        "world_size": 2,
        "per_rank_batch": 16,
        "weights_identical_across_ranks": True,
    }
    assert meta["step"] == 4 and meta["finished"]
    from lpla.ssl.checkpoint import load_encoder

    encoder, _ = load_encoder(out)
    assert torch.isfinite(encoder(torch.rand(2, 1, 28, 28))).all()
