"""``lpla embed`` end to end: CliRunner with an in-memory dataset, and real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lpla.data.base import ArrayDataset
from lpla.embeddings import EmbeddingsFile, open_embeddings
from lpla.encoders import load_any_encoder
from lpla.query import embed_dataset

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fixtures_user_model import TinyEncoder  # noqa: E402


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    path = tmp_path / "w.safetensors"
    save_file(TinyEncoder().state_dict(), str(path))
    return path


@pytest.fixture
def cli(monkeypatch, tiny_dataset: ArrayDataset):
    """The app, with ``--dataset tiny`` served from memory (whatever lpla.data holds)."""
    import lpla.cli.embed as embed_cli
    from lpla.cli import app

    opened: list[tuple] = []

    def fake_open(name, split, root, image_size, download):
        opened.append((name, split, image_size))
        return tiny_dataset

    monkeypatch.setattr(embed_cli, "open_dataset", fake_open)
    return app, opened


def _invoke(app, args: list[str]):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, args)


def test_embed_writes_what_the_library_computes(
    cli, weights: Path, tmp_path: Path, tiny_dataset: ArrayDataset
) -> None:
    app, opened = cli
    out = tmp_path / "e.npz"
    res = _invoke(
        app,
        [
            "embed",
            "--encoder",
            "fixtures_user_model:tiny_encoder",
            "--weights",
            str(weights),
            "--dataset",
            "tiny",
            "--split",
            "train",
            "--limit",
            "40",
            "--views",
            "3",
            "--augmentation",
            "weak",
            "--seed",
            "2",
            "--batch-size",
            "16",
            "--clean-view0",
            "--no-progress",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "40 images x 3 views" in res.output
    assert opened == [("tiny", "train", None)]
    f = open_embeddings(out)
    assert f.embeddings.shape == (40, 3, 8)
    np.testing.assert_array_equal(f.index, np.arange(40))
    np.testing.assert_array_equal(f.member, -1)
    assert f.meta["augmentation"] == "weak" and f.meta["clean_view0"] is True
    assert f.meta["encoder_kind"] == "factory" and f.meta["dataset"] == "tiny"

    enc = load_any_encoder("fixtures_user_model:tiny_encoder", weights=str(weights))
    lib = embed_dataset(
        enc,
        tiny_dataset,
        np.arange(40),
        views=3,
        augmentation="weak",
        seed=2,
        batch_size=16,
        clean_view0=True,
        progress=False,
    )
    assert isinstance(lib, EmbeddingsFile)
    np.testing.assert_array_equal(np.asarray(f.embeddings), lib.embeddings)


def test_sample_takes_a_seeded_subset_in_order(cli, weights: Path, tmp_path: Path) -> None:
    app, _ = cli
    outs = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"s{len(outs)}.npz"
        args = [
            "embed",
            "-e",
            "fixtures_user_model:tiny_encoder",
            "--weights",
            str(weights),
            "-d",
            "tiny",
            "--limit",
            "10",
            "--sample",
            "--seed",
            seed,
            "--views",
            "1",
            "--augmentation",
            "none",
            "--no-progress",
            "-o",
            str(out),
        ]
        assert _invoke(app, args).exit_code == 0
        outs.append(open_embeddings(out).index)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert len(set(outs[0].tolist())) == 10 and (np.diff(outs[0]) > 0).all()
    assert not np.array_equal(outs[0], outs[2]) and not np.array_equal(outs[0], np.arange(10))


def test_role_from_split_file_fills_member(cli, weights: Path, tmp_path: Path) -> None:
    splits = pytest.importorskip("lpla.data.splits")
    app, opened = cli
    split = splits.make_split("tiny", 64, members=10, seed=0)
    split.save(tmp_path / "split.json")
    for role, expected in (("target_member", 1), ("target_nonmember", 0)):
        out = tmp_path / f"{role}.npz"
        res = _invoke(
            app,
            [
                "embed",
                "-e",
                "fixtures_user_model:tiny_encoder",
                "--weights",
                str(weights),
                "--role",
                role,
                "--split-file",
                str(tmp_path / "split.json"),
                "--views",
                "2",
                "--no-progress",
                "--augmentation",
                "none",
                "-o",
                str(out),
            ],
        )
        assert res.exit_code == 0, res.output
        f = open_embeddings(out)
        np.testing.assert_array_equal(f.index, split.indices(role))
        np.testing.assert_array_equal(f.member, expected)
        assert f.meta["role"] == role and f.meta["split_fingerprint"] == split.fingerprint()
    assert opened[-1][:2] == ("tiny", split.pool_split)


def test_user_errors_are_one_line(cli, tmp_path: Path) -> None:
    app, _ = cli
    torch.save(TinyEncoder().state_dict(), tmp_path / "sd.pt")
    res = _invoke(
        app, ["embed", "-e", str(tmp_path / "sd.pt"), "-d", "tiny", "-o", str(tmp_path / "e.npz")]
    )
    assert res.exit_code == 2
    assert "pickled checkpoint, not TorchScript" in res.output
    res = _invoke(app, ["embed", "-e", "fixtures_user_model:tiny_encoder", "-o", "x.npz"])
    assert res.exit_code == 2 and "--dataset is required" in res.output
    res = _invoke(
        app,
        [
            "embed",
            "-e",
            "fixtures_user_model:tiny_encoder",
            "-d",
            "tiny",
            "--role",
            "victims",
            "-o",
            "x.npz",
        ],
    )
    assert res.exit_code == 2 and "unknown role 'victims'" in res.output
    res = _invoke(
        app,
        [
            "embed",
            "-e",
            "fixtures_user_model:tiny_encoder",
            "-d",
            "tiny",
            "--image-shape",
            "1,12",
            "-o",
            "x.npz",
        ],
    )
    assert res.exit_code == 2 and "--image-shape must be C,H,W" in res.output


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["LPLA_THREADS"] = "1"
    return env


def test_subprocess_refuses_a_pickle_in_one_line(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lpla.cli",
            "embed",
            "--encoder",
            str(tmp_path / "ckpt.pt"),
            "--dataset",
            "fashion-mnist",
            "--out",
            str(tmp_path / "e.npz"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lpla never unpickles it" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_the_documented_call_on_fashion_mnist(weights: Path, tmp_path: Path) -> None:
    registry = pytest.importorskip("lpla.data.registry")
    if "fashion-mnist" not in registry.list_datasets():
        pytest.skip("fashion-mnist is not registered yet")
    out = tmp_path / "F.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lpla.cli",
            "embed",
            "--encoder",
            "fixtures_user_model:tiny_encoder",
            "--weights",
            str(weights),
            "--dataset",
            "fashion-mnist",
            "--split",
            "test",
            "--limit",
            "2000",
            "--views",
            "10",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    f = open_embeddings(out)
    assert f.embeddings.shape == (2000, 10, 8)
    np.testing.assert_array_equal(f.index, np.arange(2000))
    assert f.meta["dataset"] == "fashion-mnist" and f.meta["split"] == "test"
    assert f.meta["augmentation"] == "weak" and f.meta["views"] == 10
    assert np.isfinite(np.asarray(f.embeddings)).all()
