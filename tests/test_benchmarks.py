"""The benchmark scripts run end to end (tiny sizes) and write the JSON the docs are built from;
plus the page release that keeps streamed embeddings files out of the RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpla.embeddings import release_rows

ROOT = Path(__file__).resolve().parent.parent
STATUS = Path("/proc/self/status")


def _rss_file_mb() -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not STATUS.exists(), reason="needs Linux /proc")
def test_release_rows_drops_read_pages_and_keeps_data(tmp_path: Path) -> None:
    rows, width = 2048, 8192  # 64 MiB of float32
    expected = np.arange(rows, dtype=np.float32)[:, None] * np.ones(width, np.float32)
    np.save(tmp_path / "a.npy", expected)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    before = _rss_file_mb()
    assert float(mm.sum(dtype=np.float64)) == float(expected.sum(dtype=np.float64))
    touched = _rss_file_mb()
    assert touched - before > 48  # reading a memmap makes its pages resident ...
    release_rows(mm, 0, rows)
    assert touched - _rss_file_mb() > 48  # ... and release_rows takes them out of the RSS
    np.testing.assert_array_equal(mm[::97], expected[::97])  # the data is still there


def test_release_rows_keeps_writes_of_a_shared_map(tmp_path: Path) -> None:
    mm = np.lib.format.open_memmap(
        tmp_path / "w.npy", mode="w+", dtype=np.float32, shape=(1000, 1024)
    )
    mm[:] = 3.0
    release_rows(mm, 0, 1000)  # dirty pages: the kernel keeps them in the page cache
    mm.flush()
    del mm
    back = np.load(tmp_path / "w.npy")
    assert back.shape == (1000, 1024) and np.all(back == 3.0)


def test_release_rows_ignores_plain_arrays_and_private_maps(tmp_path: Path) -> None:
    a = np.ones((10, 4))
    release_rows(a, 0, 10)
    assert a.sum() == 40
    np.save(tmp_path / "c.npy", np.ones((10, 4)))
    cow = np.load(tmp_path / "c.npy", mmap_mode="c")
    cow[0] = 5.0  # private change: releasing would silently drop it
    release_rows(cow, 0, 10)
    assert cow[0, 0] == 5.0 and cow[1, 0] == 1.0


def _run(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "LPLA_THREADS": "1", "MPLBACKEND": "Agg"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    machine = data["machine"]
    for key in ("cpu_model", "cores", "torch_threads", "torch_version", "date_utc", "command"):
        assert key in machine
    assert machine["torch_threads"] == 1 and script in machine["command"]
    return data


@pytest.mark.slow
def test_bench_query_quick(tmp_path: Path) -> None:
    data = _run("bench_query.py", tmp_path / "q.json")
    assert [b["backbone"] for b in data["backbones"]] == ["cnn-small", "resnet18"]
    for b in data["backbones"]:
        v = b["variants"]
        assert set(v) == {"ours", "ours_no_aug", "raw", "naive"}
        assert b["ratio_ours_over_raw"] == pytest.approx(
            v["ours"]["items_per_s"] / v["raw"]["items_per_s"]
        )
        assert b["met_raw"] == (b["ratio_ours_over_raw"] >= 0.7)
        assert v["ours"]["median_s"] == pytest.approx(np.median(v["ours"]["runs_s"]))
    assert "untested_here" in data and "by_batch_size" in data["batch_sizes"]


@pytest.mark.slow
def test_bench_train_quick(tmp_path: Path) -> None:
    data = _run("bench_train.py", tmp_path / "t.json")
    assert data["ratio_ours_over_lightly"] == pytest.approx(
        data["ours_images_per_s"] / data["lightly_images_per_s"]
    )
    assert set(data["phases_ms"]["ours"]) == {"data", "augmentation", "forward", "backward_step"}
    assert all(v > 0 for v in data["phases_ms"]["lightly"].values())


@pytest.mark.slow
def test_bench_attacks_quick(tmp_path: Path) -> None:
    data = _run("bench_attacks.py", tmp_path / "a.json")
    assert [r["n"] for r in data["sizes"]] == [500, 2000]
    big = data["sizes"][-1]
    assert big["file_bytes"] > 2000 * 10 * 512 * 2  # float16 [N, 10, 512] plus headers
    assert set(big["attack"]["stages"]) == {
        "open+validate",
        "compute_stats",
        "fit+score lpla",
        "fit+score norm-threshold",
        "fit+score encodermi-t",
    }
    assert big["attack"]["auc"]["norm-threshold"] > 0.55  # members' embeddings are 5% longer
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.slow
def test_bench_query_memory_quick(tmp_path: Path) -> None:
    data = _run("bench_query_memory.py", tmp_path / "m.json")
    modes = {(r["n"], r["mode"]) for r in data["runs"]}
    assert modes == {(n, m) for n in (200, 2000) for m in ("ours-file", "ours-memory", "naive")}
    assert all(r["peak_rss_mb"] >= r["rss_before_mb"] > 0 for r in data["runs"])
