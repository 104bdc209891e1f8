"""The embeddings .npz format: round trips, memmap, validation errors, the streaming writer."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lpla.embeddings import (
    EmbeddingsWriter,
    count_nonfinite,
    open_embeddings,
    write_embeddings,
)
from lpla.errors import LplaError


def _arrays(n: int = 12, k: int = 3, d: int = 5, dtype: str = "float32", seed: int = 0):
    g = np.random.default_rng(seed)
    emb = g.normal(size=(n, k, d)).astype(dtype)
    member = (np.arange(n) % 3 - 1).astype(np.int8)  # -1, 0, 1 cycling
    index = np.arange(100, 100 + n, dtype=np.int64)
    return emb, member, index


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_keeps_values_dtype_and_meta(tmp_path: Path, dtype: str) -> None:
    emb, member, index = _arrays(dtype=dtype)
    path = write_embeddings(tmp_path / "e.npz", emb, member, index, {"encoder": "x", "views": 3})
    for mmap in (True, False):
        f = open_embeddings(path, mmap=mmap)
        assert f.is_memmap is mmap
        assert f.embeddings.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(f.embeddings), emb)
        np.testing.assert_array_equal(f.member, member)
        np.testing.assert_array_equal(f.index, index)
        assert f.member.dtype == np.int8 and f.index.dtype == np.int64
        assert f.meta == {"encoder": "x", "views": 3}
        assert (f.num_images, f.num_views, f.dim) == (12, 3, 5)


def test_file_is_a_plain_uncompressed_npz(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    path = write_embeddings(tmp_path / "e.npz", emb, member, index, {"a": 1})
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    with np.load(path, allow_pickle=False) as npz:  # readable without lpla
        np.testing.assert_array_equal(npz["embeddings"], emb)
        assert json.loads(str(npz["meta"])) == {"a": 1}
        assert npz["meta"].shape == ()


def test_defaults_for_member_and_index(tmp_path: Path) -> None:
    emb, _, _ = _arrays(n=4)
    f = open_embeddings(write_embeddings(tmp_path / "e.npz", emb))
    np.testing.assert_array_equal(f.member, [-1, -1, -1, -1])
    np.testing.assert_array_equal(f.index, [0, 1, 2, 3])


def test_memmap_reads_large_offsets_like_a_full_load(tmp_path: Path) -> None:
    # several members before 'embeddings' and a non-trivial size: the offset parsing must be exact
    emb, member, index = _arrays(n=3000, k=4, d=7)
    path = tmp_path / "e.npz"
    np.savez(path, member=member, index=index, meta=np.array("{}"), embeddings=emb)
    f = open_embeddings(path, mmap=True)
    assert f.is_memmap
    np.testing.assert_array_equal(np.asarray(f.embeddings), emb)


def test_compressed_user_file_still_loads(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    path = tmp_path / "user.npz"
    np.savez_compressed(path, embeddings=emb, member=member, index=index)
    f = open_embeddings(path, mmap=True)
    assert not f.is_memmap  # deflated members cannot be mapped: loaded instead
    np.testing.assert_array_equal(f.embeddings, emb)
    assert f.meta == {}


def test_bool_member_is_accepted_as_int8(tmp_path: Path) -> None:
    emb, _, index = _arrays(n=4)
    path = tmp_path / "u.npz"
    np.savez(path, embeddings=emb, member=np.array([True, False, True, False]), index=index)
    np.testing.assert_array_equal(open_embeddings(path).member, [1, 0, 1, 0])


# ------------------------------------------------------------------------------ validation errors


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_missing_file_and_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(LplaError, match="not found"):
        open_embeddings(tmp_path / "nope.npz")
    bad = tmp_path / "e.npz"
    bad.write_text("hello")
    with pytest.raises(LplaError, match=r"not an \.npz"):
        open_embeddings(bad)


def test_missing_key_is_named_with_the_required_keys(tmp_path: Path) -> None:
    emb, member, _ = _arrays()
    path = _save(tmp_path / "e.npz", embeddings=emb, member=member)
    with pytest.raises(
        LplaError, match=r"no 'index' array.*required keys: embeddings, member, index"
    ):
        open_embeddings(path)


def test_two_dimensional_embeddings_get_the_views_axis_hint(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    path = _save(tmp_path / "e.npz", embeddings=emb[:, 0, :], member=member, index=index)
    with pytest.raises(LplaError, match=r"\[N, D\].*embeddings\[:, None, :\]"):
        open_embeddings(path)


def test_nan_and_inf_are_counted(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    emb[2, 0, 1] = np.nan
    emb[2, 1, 1] = np.inf
    emb[7, 2, 4] = -np.inf
    path = _save(tmp_path / "e.npz", embeddings=emb, member=member, index=index)
    with pytest.raises(LplaError, match="3 NaN/inf values in 2 of 12 images"):
        open_embeddings(path)
    assert count_nonfinite(emb) == (3, 2)
    f = open_embeddings(path, check_finite=False)  # an explicit opt-out still opens it
    assert np.isnan(f.embeddings[2, 0, 1])


def test_member_values_outside_minus_one_zero_one(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    member = member.astype(np.int64)
    member[3] = 2
    path = _save(tmp_path / "e.npz", embeddings=emb, member=member, index=index)
    with pytest.raises(LplaError, match=r"1 values outside \{-1, 0, 1\} \(e\.g\. \[2\]\)"):
        open_embeddings(path)


def test_mismatched_number_of_images(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    path = _save(tmp_path / "e.npz", embeddings=emb, member=member[:-1], index=index)
    with pytest.raises(LplaError, match="12 images but 'member' has 11"):
        open_embeddings(path)


def test_non_float_embeddings(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    path = _save(tmp_path / "e.npz", embeddings=emb.astype(np.int32), member=member, index=index)
    with pytest.raises(LplaError, match="floating point, got int32"):
        open_embeddings(path)


def test_bad_meta_json(tmp_path: Path) -> None:
    emb, member, index = _arrays()
    path = _save(
        tmp_path / "e.npz", embeddings=emb, member=member, index=index, meta=np.array("{not json")
    )
    with pytest.raises(LplaError, match="'meta' is not valid JSON"):
        open_embeddings(path)


class _TouchOnUnpickle:
    """Unpickling this runs ``open(path, "w")``: proof of whether anything was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("key", ["member", "embeddings"])
def test_object_arrays_are_never_unpickled(tmp_path: Path, key: str) -> None:
    sentinel = tmp_path / "pwned"
    emb, member, index = _arrays(n=2)
    arrays = {"embeddings": emb, "member": member, "index": index}
    arrays[key] = np.array([_TouchOnUnpickle(str(sentinel)), 1], dtype=object)
    path = _save(tmp_path / "e.npz", **arrays)
    with pytest.raises(LplaError, match="object arrays; lpla never unpickles"):
        open_embeddings(path)
    assert not sentinel.exists()


# --------------------------------------------------------------------------------------- writer


def _write_streamed(path: Path, emb, member, index, meta, batch: int = 5) -> Path:
    n, k, d = emb.shape
    with EmbeddingsWriter(path, n, k, d, str(emb.dtype), member, index, meta) as w:
        for start in range(0, n, batch):
            w.write(emb[start : start + batch])
        return w.close()


def test_writer_matches_write_embeddings_byte_for_byte(tmp_path: Path) -> None:
    emb, member, index = _arrays(n=23)
    meta = {"created": "2025-01-01T00:00:00+00:00", "encoder": "e"}
    a = _write_streamed(tmp_path / "a.npz", emb, member, index, meta)
    b = write_embeddings(tmp_path / "b.npz", emb, member, index, meta)
    c = _write_streamed(tmp_path / "c.npz", emb, member, index, meta, batch=7)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()  # deterministic zip layout
    assert not (tmp_path / "a.npz.partial").exists()
    assert open_embeddings(a).is_memmap


def test_writer_sets_created_and_refuses_nan(tmp_path: Path) -> None:
    emb, member, index = _arrays(n=6)
    f = open_embeddings(_write_streamed(tmp_path / "a.npz", emb, member, index, {}))
    assert f.meta["created"].startswith("20")
    emb[4, 0, 0] = np.nan
    w = EmbeddingsWriter(tmp_path / "b.npz", 6, 3, 5, "float32", member, index, {})
    w.write(emb[:3])
    with pytest.raises(LplaError, match="1 NaN/inf values in 1 images"):
        w.write(emb[3:])
    assert w.rows_done == 3
    w.abort()
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "b.npz.partial").exists()


def test_writer_resume_continues_and_gives_the_same_bytes(tmp_path: Path) -> None:
    emb, member, index = _arrays(n=20)
    meta = {"created": "fixed", "views": 3}
    whole = _write_streamed(tmp_path / "whole.npz", emb, member, index, meta)
    out = tmp_path / "resumed.npz"
    with (
        pytest.raises(KeyboardInterrupt),
        EmbeddingsWriter(
            out, 20, 3, 5, "float32", member, index, meta, checkpoint_every_s=1e9
        ) as w,
    ):
        w.write(emb[:5])
        w.write(emb[5:10])
        raise KeyboardInterrupt  # the context manager saves progress on the way out
    assert not out.exists()
    progress = json.loads((tmp_path / "resumed.npz.partial" / "progress.json").read_text())
    assert progress["rows_done"] == 10
    w2 = EmbeddingsWriter(out, 20, 3, 5, "float32", member, index, meta, resume=True)
    assert w2.rows_done == w2.resumed_from == 10
    w2.write(emb[10:])
    w2.close()
    assert out.read_bytes() == whole.read_bytes()


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    emb, member, index = _arrays(n=10)
    out = tmp_path / "e.npz"
    w = EmbeddingsWriter(out, 10, 3, 5, "float32", member, index, {"seed": 0})
    w.write(emb[:5])
    w.checkpoint()
    with pytest.raises(LplaError, match="other settings"):
        EmbeddingsWriter(out, 10, 3, 5, "float32", member, index, {"seed": 1}, resume=True)
    # without --resume a new run starts from scratch
    fresh = EmbeddingsWriter(out, 10, 3, 5, "float32", member, index, {"seed": 1})
    assert fresh.rows_done == 0


def _peak_numpy_bytes(tmp_path: Path, n: int) -> int:
    k, d, batch = 4, 16, 500
    member = np.zeros(n, np.int8)
    index = np.arange(n, dtype=np.int64)
    block = np.ones((batch, k, d), np.float32)
    tracemalloc.start()
    tracemalloc.reset_peak()
    with EmbeddingsWriter(tmp_path / f"e{n}.npz", n, k, d, "float32", member, index, {}) as w:
        for _ in range(0, n, batch):
            w.write(block)
        w.close()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_writer_memory_does_not_grow_with_n(tmp_path: Path) -> None:
    # both files exceed the 1 MiB copy buffer, the one allocation that scales up to a constant
    small = _peak_numpy_bytes(tmp_path, 20_000)  # 5 MB of embeddings
    large = _peak_numpy_bytes(tmp_path, 200_000)  # 51 MB
    file_growth = 180_000 * 4 * 16 * 4
    assert large - small < file_growth / 100, (small, large)
    assert large < 4 * 1024 * 1024, large
    assert open_embeddings(tmp_path / "e200000.npz").embeddings.shape == (200_000, 4, 16)
