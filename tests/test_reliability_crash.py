"""Crash safety: a fault or a kill mid-write never leaves a half file where a result should be.

Faults are injected in-process (a writer raises part-way, at points hypothesis picks) and from
outside (SIGKILL of a process streaming a large embeddings file; SIGINT/SIGTERM of ``lpla
train``). After each: the previous complete file is byte-identical, no partial target exists, and
resuming an interrupted training or embedding gives exactly the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lpla.embeddings as embeddings_mod
from lpla.embeddings import EmbeddingsWriter, open_embeddings, write_embeddings
from lpla.io import write_json_atomic
from test_reliability_common import (  # noqa: F401
    TESTS,
    _tally,
    count,
    leftover_temps,
    snapshot,
)

HYP = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Fault(OSError):
    """The injected failure (a full disk, a yanked drive)."""


def _emb(seed: int, n: int = 6, k: int = 3, d: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, k, d)).astype(np.float32)


# ------------------------------------------------------------- in-process faults, every writer


def _fail_after(fraction: float, write: Callable[[Any, bytes], Any]) -> Callable[..., Any]:
    """A write that writes the first ``fraction`` of its bytes, then raises :class:`Fault`."""

    def broken(fh: Any, data: Any) -> None:
        raw = bytes(memoryview(data).cast("B"))
        write(fh, raw[: int(len(raw) * fraction)])
        raise Fault("injected: disk full")

    return broken


Writer = tuple[Path, Callable[[int], Any], Callable[[Any, float], None]]


def _writers(tmp: Path) -> dict[str, Writer]:
    """name -> (target, write(version), inject(monkeypatch, fraction))."""

    def npy_fault(mp: Any, frac: float) -> None:
        real = embeddings_mod._write_npy

        def broken(fh: Any, arr: np.ndarray) -> None:
            if arr.ndim == 3:  # the embeddings member: half of it, then the fault
                _fail_after(frac, lambda f, b: f.write(b))(fh, np.ascontiguousarray(arr).data)
            real(fh, arr)

        mp.setattr(embeddings_mod, "_write_npy", broken)

    def copy_fault(mp: Any, frac: float) -> None:
        def broken(src: Any, dst: Any, length: int = 0) -> None:
            data = src.read()
            _fail_after(frac, lambda f, b: f.write(b))(dst, data)

        mp.setattr(embeddings_mod.shutil, "copyfileobj", broken)

    def bytes_fault(mp: Any, frac: float) -> None:
        mp.setattr(
            Path,
            "write_bytes",
            lambda self, data: _fail_after(frac, lambda p, b: p.open("wb").write(b))(self, data),
        )

    def savez_fault(mp: Any, frac: float) -> None:
        real = np.savez

        def broken(file: Any, *args: Any, **kw: Any) -> None:
            real(file, *args, **kw)
            size = Path(file).stat().st_size
            with open(file, "r+b") as fh:
                fh.truncate(int(size * frac))
            raise Fault("injected: killed while saving")

        mp.setattr(np, "savez", broken)

    def streamed(version: int) -> None:
        target = tmp / "streamed.npz"
        with EmbeddingsWriter(target, 6, 3, 4) as w:
            w.write(_emb(version))
            w.close()

    def scores(version: int) -> None:
        from lpla.pipeline.writing import save_scores

        save_scores(
            tmp / "scores.npz",
            np.array([1, 0], np.int8),
            {"lpla": np.array([version, -version], float)},
        )

    def idx(version: int) -> None:
        from lpla.data.idx import write_idx

        write_idx(tmp / "labels.idx", np.full((7,), version, np.uint8))

    return {
        "write_embeddings": (
            tmp / "emb.npz",
            lambda v: write_embeddings(tmp / "emb.npz", _emb(v)) and None,
            npy_fault,
        ),
        "EmbeddingsWriter.close": (tmp / "streamed.npz", streamed, copy_fault),
        "write_json_atomic": (
            tmp / "results.json",
            lambda v: write_json_atomic(
                tmp / "results.json", {"v": v} | {f"k{i}": list(range(50)) for i in range(20)}
            ),
            bytes_fault,
        ),
        "scores.npz": (tmp / "scores.npz", scores, savez_fault),
        "write_idx": (tmp / "labels.idx", idx, bytes_fault),
    }


WRITER_NAMES = [
    "write_embeddings",
    "EmbeddingsWriter.close",
    "write_json_atomic",
    "scores.npz",
    "write_idx",
]


@pytest.mark.parametrize("writer", WRITER_NAMES)
@HYP
@given(fraction=st.floats(0.0, 0.99), had_previous=st.booleans())
def test_a_fault_mid_write_keeps_the_previous_file(
    tmp_path_factory: pytest.TempPathFactory, writer: str, fraction: float, had_previous: bool
) -> None:
    tmp = tmp_path_factory.mktemp("w")
    target, write, inject = _writers(tmp)[writer]
    if had_previous:
        write(1)
    previous = target.read_bytes() if had_previous else None
    with pytest.MonkeyPatch.context() as mp:
        inject(mp, fraction)
        with pytest.raises(Fault):
            write(2)
    count("faults")
    count("outputs_checked")
    if previous is None:
        assert not target.exists(), "a partial file took the target's name"
    else:
        assert target.read_bytes() == previous
    assert not leftover_temps(tmp), leftover_temps(tmp)
    if writer == "EmbeddingsWriter.close":  # the rows are still there for --resume
        assert (tmp / "streamed.npz.partial" / "progress.json").is_file()
        shutil.rmtree(tmp / "streamed.npz.partial")


def test_a_failing_fsync_renames_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last moment before the rename: the data is written but not yet durable."""
    target = tmp_path / "emb.npz"
    write_embeddings(target, _emb(1))
    before = target.read_bytes()

    def broken(fd: int) -> None:
        raise Fault("injected: fsync failed")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(Fault):
        write_embeddings(target, _emb(2))
    count("faults")
    count("outputs_checked")
    assert target.read_bytes() == before and not leftover_temps(tmp_path)


# ----------------------------------------------------------------- SIGKILL during a large write

_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import lpla.embeddings as m

    target, started = Path(sys.argv[1]), Path(sys.argv[2])
    real = m._write_npy

    def slow(fh, arr):  # the real bytes, in 1 MiB pieces with a pause: a slow disk
        if arr.ndim != 3:
            return real(fh, arr)
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
        raw = arr.reshape(-1).view(np.uint8)
        for i in range(0, raw.size, 1 << 20):
            fh.write(raw[i:i + (1 << 20)].data)
            started.touch()
            time.sleep(0.05)

    m._write_npy = slow
    m.write_embeddings(target, np.ones((512, 8, 1024), np.float32))  # 16 MiB
    """
)


def test_sigkill_while_writing_embeddings_keeps_the_previous_file(tmp_path: Path) -> None:
    target, started = tmp_path / "emb.npz", tmp_path / "started"
    write_embeddings(target, _emb(7))
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target), str(started)])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    count("faults")
    count("outputs_checked")
    assert started.exists(), "the writer never started"
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    assert np.array_equal(open_embeddings(target).embeddings, _emb(7))
    # SIGKILL allows no clean-up: the half file stays as a hidden temp, never as the target
    temps = leftover_temps(tmp_path)
    assert all(Path(t).name.startswith(".emb.npz.") for t in temps)


# ------------------------------------------------------------- interrupted embedding + --resume


def _tiny_dataset() -> Any:
    from lpla.data.base import ArrayDataset

    g = np.random.default_rng(3)
    return ArrayDataset(
        g.integers(0, 255, (40, 1, 12, 12), dtype=np.uint8),
        np.arange(40) % 4,
        name="tiny",
        split="train",
        num_classes=4,
    )


def _encoder() -> torch.nn.Module:
    sys.path.insert(0, str(TESTS))
    from fixtures_user_model import tiny_encoder

    return tiny_encoder()


def _embed(out: Path, resume: bool = False) -> Path:
    from lpla.query import embed_dataset

    path = embed_dataset(
        _encoder(),
        _tiny_dataset(),
        np.arange(40),
        views=3,
        augmentation="weak",
        seed=5,
        batch_size=8,
        out=out,
        progress=False,
        resume=resume,
    )
    assert isinstance(path, Path)
    return path


@pytest.fixture(scope="module")
def reference_embeddings(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = _embed(tmp_path_factory.mktemp("ref") / "ref.npz")
    return np.asarray(open_embeddings(path).embeddings)


@HYP
@given(stop_batch=st.integers(0, 4), exc=st.sampled_from([KeyboardInterrupt, Fault]))
def test_embedding_resume_after_interruption_is_exact(
    tmp_path_factory: pytest.TempPathFactory,
    reference_embeddings: np.ndarray,
    stop_batch: int,
    exc: type[BaseException],
) -> None:
    import lpla.query as query

    out = tmp_path_factory.mktemp("e") / "emb.npz"
    real = query.embed_batch
    calls = {"n": 0}

    def interrupted(plan: Any, images: torch.Tensor) -> torch.Tensor:
        if calls["n"] == stop_batch:
            raise exc()
        calls["n"] += 1
        return real(plan, images)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(query, "embed_batch", interrupted)
        with pytest.raises(exc):
            _embed(out)
    count("faults")
    assert not out.exists(), "an interrupted run must not leave the final file"
    progress = json.loads((out.parent / "emb.npz.partial" / "progress.json").read_text())
    assert progress["rows_done"] == 8 * stop_batch  # everything before the fault was kept
    _embed(out, resume=True)
    count("outputs_checked")
    assert np.array_equal(np.asarray(open_embeddings(out).embeddings), reference_embeddings)
    assert not (out.parent / "emb.npz.partial").exists()


@pytest.mark.slow
def test_cli_embed_resume_after_sigint_is_exact(tmp_path: Path) -> None:
    """``lpla embed`` interrupted by SIGINT, then ``--resume``: the same arrays as one run."""
    from test_reliability_common import run_cli

    args = [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "fashion-mnist",
        "--image-shape",
        "1,12,12",
        "--limit",
        "2000",
        "--views",
        "4",
        "--batch-size",
        "8",
        "--no-progress",
        "--seed",
        "2",
    ]
    ref = run_cli([*args, "--out", str(tmp_path / "ref.npz")], cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "emb.npz"
    env = dict(os.environ, LPLA_THREADS="1", PYTHONPATH=str(TESTS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpla.cli", *args, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = tmp_path / "emb.npz.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    count("faults")
    if out.exists():  # finished before the signal (a fast machine): nothing to resume
        assert open_embeddings(out).embeddings.shape == (2000, 4, 8)
        pytest.skip("the embedding finished before SIGINT arrived")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    assert not out.exists()
    res = run_cli([*args, "--out", str(out), "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    count("outputs_checked")
    a, b = open_embeddings(out), open_embeddings(tmp_path / "ref.npz")
    assert np.array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))
    assert np.array_equal(a.index, b.index)


# ------------------------------------------------------------- interrupted training + --resume

TRAIN = [
    "train",
    "--dataset",
    "fashion-mnist",
    "--members",
    "64",
    "--backbone",
    "mlp",
    "--epochs",
    "15",
    "--batch-size",
    "32",
    "--checkpoint-every",
    "1",
    "--no-utility",
    "--no-progress",
    "--seed",
    "3",
]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    from test_reliability_common import run_cli

    out = tmp_path_factory.mktemp("train") / "ref"
    res = run_cli([*TRAIN, "--out", str(out)], cwd=out.parent, timeout=300)
    assert res.returncode == 0, res.stderr
    return _weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_resumes_bit_identically(
    tmp_path: Path, uninterrupted: dict[str, torch.Tensor], sig: signal.Signals
) -> None:
    from lpla.encoders import load_any_encoder
    from test_reliability_common import run_cli

    out = tmp_path / "run"
    env = dict(os.environ, LPLA_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpla.cli", *TRAIN, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    count("faults")
    assert proc.returncode != 0, "an interrupted training must not report success"
    assert "Traceback" not in stderr
    meta = json.loads((out / "checkpoint.json").read_text())
    assert 1 <= meta["epoch"] < 15 and not meta.get("finished")
    enc = load_any_encoder(str(out))  # the last good checkpoint loads
    assert enc.kind == "checkpoint"
    res = run_cli(
        ["train", "--resume", "--out", str(out), "--no-progress"], cwd=tmp_path, timeout=300
    )
    assert res.returncode == 0, res.stderr
    count("outputs_checked")
    resumed = _weights(out)
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    assert snapshot(out) >= {"model.safetensors", "checkpoint.json", "split.json"}
