"""The dataset registry: every name loads, the embedded default is right, errors are user errors."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lpla.data import registry
from lpla.data.base import ImageDataset
from lpla.data.registry import (
    DATASETS,
    FASHION_CLASSES,
    create_dataset,
    dataset_summaries,
    list_datasets,
)
from lpla.errors import LplaError
from test_data_formats import (
    write_cifar10,
    write_cifar100,
    write_fashion_idx,
    write_folder,
    write_stl10,
    write_svhn,
)

ALL_NAMES = (
    "cifar10",
    "cifar100",
    "digits",
    "fashion-mnist",
    "fashion-mnist-full",
    "imagefolder",
    "stl10",
    "svhn",
)
REPO = Path(__file__).resolve().parents[1]
DEBIAN_IDX = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _root_for(name: str, tmp_path: Path) -> str | None:
    """Tiny files in the real layout for the datasets that read from disk."""
    writers: dict[str, Callable[[Path], object]] = {
        "cifar10": write_cifar10,
        "cifar100": write_cifar100,
        "stl10": write_stl10,
        "svhn": write_svhn,
        "fashion-mnist-full": write_fashion_idx,
        "imagefolder": lambda root: write_folder(root, {"a": [(1, 2, 3)], "b": [(9, 9, 9)]}),
    }
    if name not in writers:
        return None
    writers[name](tmp_path)
    return str(tmp_path)


def test_the_documented_names_are_registered() -> None:
    assert tuple(list_datasets()) == ALL_NAMES
    assert list_datasets("fashion*") == ["fashion-mnist", "fashion-mnist-full"]
    summaries = dataset_summaries()
    assert set(summaries) == set(ALL_NAMES)
    assert all(len(line) > 20 and "\n" not in line for line in summaries.values())


@pytest.mark.parametrize("name", list_datasets())
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_dataset_honours_the_interface(name: str, split: str, tmp_path: Path) -> None:
    root = _root_for(name, tmp_path)
    if name == "imagefolder":
        split = "train"  # a folder without split sub-folders serves the whole folder
    ds = create_dataset(name, split, root=root)
    assert isinstance(ds, ImageDataset)
    assert ds.info.name == name and ds.info.split == split
    n = len(ds)
    assert n == ds.info.num_images == len(ds.labels) > 0
    assert ds.labels.dtype == np.int64
    assert 0 <= ds.labels.min() and ds.labels.max() < ds.info.num_classes
    assert len(ds.classes) in (0, ds.info.num_classes)
    idx = np.arange(n)[::-1][:5].copy()
    images = ds.get_images(idx)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (len(idx), *ds.info.image_shape)
    batches = list(ds.iter_batches(np.arange(n), batch_size=2))
    assert sum(len(i) for i, _ in batches) == n
    assert torch.equal(batches[0][1], ds.get_images([0, 1][: min(2, n)]))
    with pytest.raises(LplaError, match="index out of range"):
        ds.get_images([n])
    resized = create_dataset(name, split, root=root, image_size=20)
    assert resized.info.image_shape[1:] == (20, 20) and len(resized) == n
    assert resized.get_images([0]).shape[-2:] == (20, 20)
    assert np.array_equal(resized.labels, ds.labels)


def test_embedded_fashion_mnist_is_fast_balanced_and_offline() -> None:
    registry._fashion_subset.cache_clear()
    start = time.perf_counter()
    train = create_dataset("fashion-mnist", "train")
    test = create_dataset("fashion-mnist", "test")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"embedded subset took {elapsed:.2f}s to load"
    assert (len(train), len(test)) == (10_000, 2_000)
    assert train.info.image_shape == (1, 28, 28) and train.info.num_classes == 10
    assert np.bincount(train.labels).tolist() == [1000] * 10
    assert np.bincount(test.labels).tolist() == [200] * 10
    assert (
        train.classes == FASHION_CLASSES
        and json.loads(train.info.extra["classes"])[9] == "Ankle boot"
    )
    # real garments, not noise: trousers (1) fill a narrower, taller box than bags (8)
    imgs = train.get_images(np.arange(10_000)).float()
    mean = {c: imgs[torch.from_numpy(train.labels == c)].mean().item() for c in (1, 8)}
    assert 40 < mean[1] < mean[8] < 140
    assert create_dataset("fashion-mnist") is train  # cached, no second decompression


@pytest.mark.skipif(not DEBIAN_IDX.is_file(), reason="Debian's dataset-fashion-mnist not installed")
def test_embedded_subset_is_the_real_data_and_the_script_rebuilds_it(tmp_path: Path) -> None:
    full = create_dataset("fashion-mnist-full", "train")
    assert len(full) == 60_000 and np.bincount(full.labels).tolist() == [6000] * 10
    assert len(create_dataset("fashion-mnist-full", "test")) == 10_000
    script = _load_script()
    rebuilt = script.build_subset(DEBIAN_IDX.parent, tmp_path / "subset.npz")
    with np.load(REPO / "src/lpla/data/assets/fashion_mnist_subset.npz") as shipped:
        for key in (
            "train_images",
            "train_labels",
            "train_source_index",
            "test_images",
            "test_labels",
            "test_source_index",
        ):
            assert np.array_equal(shipped[key], rebuilt[key]), key
        rows = shipped["train_source_index"][[0, 4321, 9999]]
        assert torch.equal(
            full.get_images(rows)[:, 0], torch.from_numpy(shipped["train_images"][[0, 4321, 9999]])
        )


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "make_fashion_mnist_subset", REPO / "scripts" / "make_fashion_mnist_subset.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_subset_script_is_stratified_and_seeded(tmp_path: Path) -> None:
    truth = write_fashion_idx(tmp_path / "idx", n_train=60, n_test=40, gz=False)
    script = _load_script()
    a = script.build_subset(
        tmp_path / "idx", tmp_path / "a.npz", train_per_class=3, test_per_class=2, seed=5
    )
    b = script.build_subset(
        tmp_path / "idx", tmp_path / "b.npz", train_per_class=3, test_per_class=2, seed=5
    )
    c = script.build_subset(
        tmp_path / "idx", tmp_path / "c.npz", train_per_class=3, test_per_class=2, seed=6
    )
    assert np.bincount(a["train_labels"]).tolist() == [3] * 10
    assert np.bincount(a["test_labels"]).tolist() == [2] * 10
    assert np.array_equal(a["train_source_index"], b["train_source_index"])
    assert not np.array_equal(a["train_source_index"], c["train_source_index"])
    src = a["train_source_index"]
    assert len(np.unique(src)) == 30
    assert np.array_equal(a["train_images"], truth["train"][0][src])
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert np.array_equal(z["test_images"], a["test_images"])
        assert "default_rng(5)" in json.loads(str(z["provenance"]))["rule"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz", "idx"]


def test_fashion_mnist_full_plain_files_and_missing_files(tmp_path: Path, monkeypatch) -> None:
    truth = write_fashion_idx(tmp_path / "plain", gz=False)
    ds = create_dataset("fashion-mnist-full", "test", root=str(tmp_path / "plain"))
    assert np.array_equal(ds.get_images(np.arange(10))[:, 0].numpy(), truth["test"][0])
    assert ds.classes == FASHION_CLASSES
    monkeypatch.setattr(registry, "DEBIAN_FASHION", tmp_path / "not-installed")
    with pytest.raises(LplaError, match=r"dataset-fashion-mnist.*--data-root"):
        create_dataset("fashion-mnist-full", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LplaError, match=r"train-images-idx3-ubyte\[\.gz\] not found"):
        create_dataset("fashion-mnist-full", "train", root=str(tmp_path / "empty"))


def test_fashion_mnist_full_mismatched_files(tmp_path: Path) -> None:
    from lpla.data.idx import write_idx

    write_fashion_idx(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(LplaError, match="10 uint8 images but 3 labels"):
        create_dataset("fashion-mnist-full", "test", root=str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(LplaError, match=r"0\.\.9"):
        create_dataset("fashion-mnist-full", "train", root=str(tmp_path))


def test_digits_split_is_fixed_stratified_and_scaled() -> None:
    from sklearn.datasets import load_digits

    train, test = create_dataset("digits", "train"), create_dataset("digits", "test")
    assert (len(train), len(test)) == (1497, 300)
    assert train.info.image_shape == (1, 8, 8)
    assert np.bincount(test.labels).min() >= 29 and np.bincount(test.labels).max() <= 31
    split = registry.digits_split_indices()
    assert len(np.intersect1d(split["train"], split["test"])) == 0
    assert len(np.union1d(split["train"], split["test"])) == 1797
    assert np.array_equal(split["test"], registry.digits_split_indices()["test"])  # fixed
    original = load_digits().images
    j = int(split["test"][7])
    expected = np.round(original[j] * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.get_images([7])[0, 0].numpy(), expected)
    assert int(train.get_images(np.arange(1497)).max()) == 255  # 16 -> 255
    assert "random_state=0" in train.info.extra["split_rule"]


def test_user_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LplaError, match=r"unknown dataset 'mnist'; choose one of: cifar10"):
        create_dataset("mnist")
    with pytest.raises(LplaError, match=r"has no split 'val'"):
        create_dataset("fashion-mnist", "val")
    with pytest.raises(LplaError, match="data root not found"):
        create_dataset("cifar10", root=str(tmp_path / "nope"))
    with pytest.raises(
        LplaError,
        match=r"cifar10 not found: expected .*cifar-10-batches-py.*"
        r"--download",
    ):
        create_dataset("cifar10", root=str(tmp_path))
    for name in ("stl10", "svhn", "cifar100"):
        with pytest.raises(LplaError, match=f"{name} not found"):
            create_dataset(name, root=str(tmp_path))
    with pytest.raises(LplaError, match="positive"):
        create_dataset("digits", image_size=0)


def test_default_root_follows_lpla_data(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LPLA_DATA", str(tmp_path))
    assert registry.default_root("svhn") == tmp_path / "svhn"
    write_svhn(tmp_path / "svhn")
    assert len(create_dataset("svhn", "test")) == 4
    monkeypatch.delenv("LPLA_DATA")
    assert registry.default_root("svhn") == Path.home() / ".cache" / "lpla" / "data" / "svhn"


def test_resized_view_keeps_indices_and_pixels_of_flat_images(tmp_path: Path) -> None:
    ds = create_dataset("fashion-mnist", "test", image_size=32)
    base = create_dataset("fashion-mnist", "test")
    assert ds.info.image_shape == (1, 32, 32) and len(ds) == 2000 and ds.classes == base.classes
    # a blank border stays blank after resizing
    assert int(ds.get_images([0])[0, 0, 0, 0]) == int(base.get_images([0])[0, 0, 0, 0]) == 0
    assert create_dataset("fashion-mnist", "test", image_size=28) is base
    assert "fashion-mnist" in DATASETS
