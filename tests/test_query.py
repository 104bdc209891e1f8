"""The query engine: shapes, seeded views, clean view 0, streaming memory, resume."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import kornia.augmentation as KA
import numpy as np
import pytest
import torch
from torch import nn

from lpla.data.base import ArrayDataset
from lpla.embeddings import EmbeddingsFile, open_embeddings
from lpla.encoders import LoadedEncoder
from lpla.errors import LplaError
from lpla.query import batch_seed, embed_dataset

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_user_model import FeatureMapEncoder, TinyEncoder, tiny_encoder


def _aug(size: int = 12) -> nn.Module:
    return nn.Sequential(
        KA.RandomResizedCrop((size, size), scale=(0.5, 1.0)), KA.RandomHorizontalFlip()
    )


def _plain_forward(model: nn.Module, ds: ArrayDataset, idx: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(ds.get_images(idx).float() / 255.0).numpy()


def _embed(model, ds, **kw) -> EmbeddingsFile:
    kw.setdefault("views", 4)
    kw.setdefault("augmentation", _aug())
    kw.setdefault("batch_size", 16)
    kw.setdefault("progress", False)
    out = embed_dataset(model, ds, kw.pop("indices", None), **kw)
    assert isinstance(out, EmbeddingsFile)
    return out


def test_shape_index_member_and_meta(tiny_dataset: ArrayDataset) -> None:
    idx = np.array([5, 1, 9, 33, 2])
    member = np.array([1, 0, 1, -1, 0])
    f = _embed(tiny_encoder(), tiny_dataset, indices=idx, member=member, views=3)
    assert f.embeddings.shape == (5, 3, 8)
    assert f.embeddings.dtype == np.float32
    np.testing.assert_array_equal(f.index, idx)
    np.testing.assert_array_equal(f.member, member)
    assert f.meta["views"] == 3 and f.meta["dataset"] == "tiny" and f.meta["seed"] == 0
    assert f.meta["dim"] == 8 and f.meta["encoder"] == "TinyEncoder"
    # every view of an image is a different augmentation of it
    spread = np.abs(f.embeddings[:, 1:] - f.embeddings[:, :1]).max(axis=(1, 2))
    assert (spread > 1e-4).all()


def test_same_seed_same_views_other_seed_other_views(tiny_dataset: ArrayDataset) -> None:
    model = tiny_encoder()
    a = _embed(model, tiny_dataset, seed=3).embeddings
    b = _embed(model, tiny_dataset, seed=3).embeddings
    c = _embed(model, tiny_dataset, seed=4).embeddings
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_global_rng_state_is_restored(tiny_dataset: ArrayDataset) -> None:
    model = tiny_encoder()
    torch.manual_seed(7)
    _embed(model, tiny_dataset)
    after_embedding = torch.rand(3)
    torch.manual_seed(7)
    untouched = torch.rand(3)
    torch.testing.assert_close(after_embedding, untouched)


def test_clean_view0_is_the_plain_forward_pass(tiny_dataset: ArrayDataset) -> None:
    model = tiny_encoder()
    idx = np.arange(40)
    f = _embed(model, tiny_dataset, indices=idx, clean_view0=True, views=3)
    plain = _plain_forward(model, tiny_dataset, idx)
    np.testing.assert_allclose(f.embeddings[:, 0], plain, rtol=1e-5, atol=1e-6)
    assert np.abs(f.embeddings[:, 1] - plain).max() > 1e-3  # the other views are augmented
    g = _embed(model, tiny_dataset, indices=idx, clean_view0=False, views=3)
    assert np.abs(g.embeddings[:, 0] - plain).max() > 1e-3


def test_no_augmentation_is_batch_size_independent(tiny_dataset: ArrayDataset) -> None:
    # with augmentation, views depend on (seed, batch_size) by design; without, nothing does
    model = tiny_encoder()
    a = _embed(model, tiny_dataset, augmentation="none", views=2, batch_size=7).embeddings
    b = _embed(model, tiny_dataset, augmentation="none", views=2, batch_size=64).embeddings
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[:, 0], a[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        a[:, 0], _plain_forward(model, tiny_dataset, np.arange(64)), rtol=1e-5, atol=1e-6
    )


def test_float16_storage(tiny_dataset: ArrayDataset) -> None:
    model = tiny_encoder()
    a = _embed(model, tiny_dataset, dtype="float32").embeddings
    h = _embed(model, tiny_dataset, dtype="float16").embeddings
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float32), a, rtol=2e-3, atol=2e-3)


def test_streamed_file_equals_in_memory(tiny_dataset: ArrayDataset, tmp_path: Path) -> None:
    model = tiny_encoder()
    mem = _embed(model, tiny_dataset, seed=1, member=np.ones(64, np.int8))
    path = embed_dataset(
        model,
        tiny_dataset,
        None,
        views=4,
        augmentation=_aug(),
        batch_size=16,
        seed=1,
        member=np.ones(64, np.int8),
        out=tmp_path / "e.npz",
        progress=True,
    )
    assert path == tmp_path / "e.npz"
    f = open_embeddings(path)
    assert f.is_memmap
    np.testing.assert_array_equal(np.asarray(f.embeddings), mem.embeddings)
    np.testing.assert_array_equal(f.member, 1)
    assert f.meta["encoder_fingerprint"] == mem.meta["encoder_fingerprint"]


class _Crashy(TinyEncoder):
    """Raises on forward call number ``crash_at`` (a killed run), like the eager model otherwise."""

    def __init__(self, crash_at: int | None) -> None:
        super().__init__()
        self.crash_at, self.calls = crash_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt
        return super().forward(x)


def test_resume_equals_uninterrupted(tiny_dataset: ArrayDataset, tmp_path: Path) -> None:
    weights = tiny_encoder().state_dict()
    kw = dict(
        views=3,
        augmentation=_aug(),
        batch_size=8,
        seed=5,
        progress=False,
        meta={"created": "fixed"},
    )
    whole = _Crashy(None)
    whole.load_state_dict(weights)
    ref = embed_dataset(whole, tiny_dataset, None, out=tmp_path / "whole.npz", **kw)

    out = tmp_path / "resumed.npz"
    crashy = _Crashy(crash_at=1 + 4)  # 1 probe forward, then dies in batch 4 of 8
    crashy.load_state_dict(weights)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(crashy, tiny_dataset, None, out=out, **kw)
    assert not out.exists() and (tmp_path / "resumed.npz.partial").is_dir()

    again = _Crashy(None)
    again.load_state_dict(weights)
    with pytest.raises(LplaError, match="other settings"):
        embed_dataset(again, tiny_dataset, None, out=out, resume=True, **{**kw, "seed": 6})
    embed_dataset(again, tiny_dataset, None, out=out, resume=True, **kw)
    # the refused attempt probed once; the resumed run probes once and runs batches 3..7 only
    assert again.calls == 1 + 1 + 5
    assert out.read_bytes() == Path(ref).read_bytes()
    assert not (tmp_path / "resumed.npz.partial").exists()


def test_feature_map_encoder_is_a_clear_error(tiny_dataset: ArrayDataset) -> None:
    with pytest.raises(LplaError, match=r"feature map.*--pool avg"):
        _embed(FeatureMapEncoder(), tiny_dataset)


def test_nan_encoder_is_refused(tiny_dataset: ArrayDataset, tmp_path: Path) -> None:
    class Nan(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :4] / (x.flatten(1)[:, :4] > 2).float()  # 0/0 = NaN

    with pytest.raises(LplaError, match="NaN/inf"):
        embed_dataset(
            Nan(),
            tiny_dataset,
            None,
            views=1,
            augmentation="none",
            progress=False,
            out=tmp_path / "n.npz",
        )


def test_bad_arguments(tiny_dataset: ArrayDataset) -> None:
    model = tiny_encoder()
    with pytest.raises(LplaError, match="views must be"):
        _embed(model, tiny_dataset, views=0)
    with pytest.raises(LplaError, match="unknown dtype"):
        _embed(model, tiny_dataset, dtype="bfloat16")
    with pytest.raises(LplaError, match="out of range"):
        _embed(model, tiny_dataset, indices=np.array([0, 64]))
    with pytest.raises(LplaError, match=r"values outside \{-1, 0, 1\}"):
        _embed(model, tiny_dataset, member=np.full(64, 3))
    loaded = LoadedEncoder(model, "m", "module", image_shape=(3, 12, 12))
    with pytest.raises(LplaError, match=r"expects images \(3, 12, 12\)"):
        _embed(loaded, tiny_dataset)


def test_named_augmentation_from_ssl(tiny_dataset: ArrayDataset) -> None:
    pytest.importorskip("lpla.ssl.augment")
    model = tiny_encoder()
    f = _embed(model, tiny_dataset, augmentation="weak", views=3, seed=0)
    g = _embed(
        LoadedEncoder(model, "m", "module", augmentation="weak"),
        tiny_dataset,
        augmentation=None,
        views=3,
        seed=0,
    )
    assert f.meta["augmentation"] == g.meta["augmentation"] == "weak"
    np.testing.assert_array_equal(f.embeddings, g.embeddings)


def test_batch_seeds_are_decorrelated() -> None:
    seeds = {batch_seed(s, b) for s in range(20) for b in range(20)}
    assert len(seeds) == 400  # seed + batch would collide (s=0,b=1 vs s=1,b=0)


def _engine_peak(tmp_path: Path, n: int) -> int:
    imgs = np.random.default_rng(0).integers(0, 255, size=(n, 1, 4, 4), dtype=np.uint8)
    ds = ArrayDataset(imgs, np.zeros(n, np.int64), name="big", split="train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16))
    tracemalloc.start()
    tracemalloc.reset_peak()
    embed_dataset(
        model,
        ds,
        None,
        views=4,
        augmentation="none",
        batch_size=1000,
        progress=False,
        out=tmp_path / f"q{n}.npz",
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_engine_memory_does_not_grow_with_n(tmp_path: Path) -> None:
    small = _engine_peak(tmp_path, 5_000)  # 1.3 MB of embeddings (beyond the 1 MiB copy buffer)
    large = _engine_peak(tmp_path, 50_000)  # 12.8 MB
    # member/index (~10 bytes per image) are the only O(N) arrays; embeddings are 256 B per image
    assert large - small < 45_000 * 256 / 10, (small, large)
    f = open_embeddings(tmp_path / "q50000.npz")
    assert f.embeddings.shape == (50_000, 4, 16)
