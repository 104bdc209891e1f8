"""On-disk formats: IDX, CIFAR pickles (restricted unpickler), STL-10 binaries, SVHN .mat, folders.

Every test writes tiny files in the real layout of the original datasets and checks that pixels
and labels come back exactly where the format says they are. The ``write_*`` helpers are also
used by test_data_registry.py.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lpla.data import formats
from lpla.data.folder import FolderDataset
from lpla.data.idx import read_idx, write_idx
from lpla.data.registry import create_dataset
from lpla.data.resize import resize_uint8
from lpla.data.safe_pickle import load_cifar_batch
from lpla.errors import LplaError


# ---- writers for the real layouts ----------------------------------------------------------------
def _pixels(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # like the originals: protocol 2, bytes keys


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        images = _pixels(per_batch, (3, 32, 32), seed=i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        _dump(
            folder / name,
            {
                b"batch_label": b"batch",
                b"labels": labels,
                b"data": images.reshape(per_batch, -1),
                b"filenames": [b"f.png"] * per_batch,
            },
        )
        out["test" if name == "test_batch" else "train"].append((images, np.array(labels)))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return {
        k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]))
        for k, v in out.items()
    }


def write_cifar100(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-100-python"
    out = {}
    for i, split in enumerate(("train", "test")):
        images = _pixels(n, (3, 32, 32), seed=10 + i)
        fine = [97 - 13 * j - i for j in range(n)]
        _dump(
            folder / split,
            {
                b"data": images.reshape(n, -1),
                b"fine_labels": fine,
                b"coarse_labels": [f % 20 for f in fine],
                b"filenames": [b"x"] * n,
            },
        )
        out[split] = (images, np.array(fine))
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"c{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
        },
    )
    return out


def write_stl10(root: Path, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``stl10_binary/<split>_X.bin`` column-major (each plane stored W-major), labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, split in enumerate(("train", "test", "unlabeled")):
        images = _pixels(n, (3, 96, 96), seed=20 + i)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        labels = np.array([(3 * j + i) % 10 for j in range(n)])
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[split] = (images, labels if split != "unlabeled" else np.full(n, -1))
    (folder / "class_names.txt").write_text(
        "airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n"
    )
    return out


def write_svhn(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``<split>_32x32.mat``: X [32, 32, 3, N] uint8, y [N, 1] with digit 0 stored as 10."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, split in enumerate(("train", "test")):
        images = _pixels(n, (3, 32, 32), seed=30 + i)
        digits = np.array([(j + i) % 10 for j in range(n)])
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})
        out[split] = (images, digits)
    return out


def write_fashion_idx(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for i, (prefix, n) in enumerate((("train", n_train), ("t10k", n_test))):
        images = _pixels(n, (28, 28), seed=40 + i)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out["train" if prefix == "train" else "test"] = (images, labels)
    return out


def write_folder(
    root: Path, colors: dict[str, list[tuple[int, int, int]]], size: int = 10, mode: str = "RGB"
) -> None:
    from PIL import Image

    for cls, cls_colors in colors.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, color in enumerate(cls_colors):
            value = color[0] if mode == "L" else color
            Image.new(mode, (size, size + 3), value).save(root / cls / f"img{k}.png")


# ---- IDX -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip_plain_and_gzip(tmp_path: Path, name: str) -> None:
    images = _pixels(5, (4, 3), seed=0)
    write_idx(tmp_path / name, images)
    assert np.array_equal(read_idx(tmp_path / name, ndim=3), images)
    wide = np.array([[-5, 70000], [1, 2]], dtype=np.int32)
    write_idx(tmp_path / "w.idx", wide)
    raw = (tmp_path / "w.idx").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 2]) and raw[8:12] == (2).to_bytes(4, "big")
    assert raw[12:16] == (-5).to_bytes(4, "big", signed=True)  # big-endian data
    assert np.array_equal(read_idx(tmp_path / "w.idx"), wide)


def test_idx_hand_made_header_is_parsed(tmp_path: Path) -> None:
    body = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    (tmp_path / "h.idx").write_bytes(body)
    assert read_idx(tmp_path / "h.idx").tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5]), "truncated or corrupt"),
        (bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7]), "truncated or corrupt"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "truncated IDX header"),
        (bytes([1, 2, 8, 1, 0, 0, 0, 1, 7]), "bad magic"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "bad magic"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (b"", "bad magic"),
    ],
)
def test_idx_corrupt_files_are_user_errors(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.idx").write_bytes(content)
    with pytest.raises(LplaError, match=message):
        read_idx(tmp_path / "bad.idx")


def test_idx_truncated_gzip_and_wrong_rank(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", _pixels(50, (28, 28), seed=1))
    data = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LplaError, match="truncated or corrupt gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(LplaError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "x.gz", ndim=1)
    with pytest.raises(LplaError, match="not found"):
        read_idx(tmp_path / "missing.idx")
    # gzip is detected by content: a gzipped file without .gz still reads
    (tmp_path / "nosuffix").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 9, 8])))
    assert read_idx(tmp_path / "nosuffix").tolist() == [9, 8]


# ---- CIFAR ---------------------------------------------------------------------------------------
def test_cifar10_pixels_labels_and_classes(tmp_path: Path) -> None:
    truth = write_cifar10(tmp_path)
    for split in ("train", "test"):
        ds = create_dataset("cifar10", split, root=str(tmp_path))
        images, labels = truth[split]
        assert ds.info.image_shape == (3, 32, 32) and ds.info.num_classes == 10
        assert len(ds) == (15 if split == "train" else 3)
        got = ds.get_images(np.arange(len(ds))).numpy()
        assert np.array_equal(got, images) and np.array_equal(ds.labels, labels)
    # row layout by hand: byte c*1024 + h*32 + w of a record is pixel (c, h, w)
    raw = load_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_2")
    train = create_dataset("cifar10", "train", root=str(tmp_path))
    assert int(train.get_images([4])[0, 2, 5, 7]) == int(raw["data"][1, 2 * 1024 + 5 * 32 + 7])
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    truth = write_cifar100(tmp_path)
    ds = create_dataset("cifar100", "test", root=str(tmp_path))
    assert ds.info.num_classes == 100 and ds.labels.tolist() == [96, 83, 70, 57]
    assert np.array_equal(ds.get_images([0, 1, 2, 3]).numpy(), truth["test"][0])
    assert ds.classes[96] == "c96"


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused_without_running(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path, per_batch=1)
    marker = tmp_path / "pwned"
    _dump(folder / "data_batch_3", {b"data": _RunsShell(marker), b"labels": [0]})
    with pytest.raises(LplaError, match=r"refusing to unpickle (posix|os)\.system: not a CIFAR"):
        create_dataset("cifar10", "train", root=str(tmp_path))
    assert not marker.exists()
    # the same file through plain pickle would have run the command: the test can fail
    pickle.loads((folder / "data_batch_3").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        (eval, ("1+1",)),
        (getattr, (str, "join")),
        (np.load, ("/etc/passwd",)),
        (__import__("codecs").encode, ("abc", "rot13")),
    ],
)
def test_other_globals_are_refused(tmp_path: Path, payload: tuple) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return payload

    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(LplaError, match="refusing to unpickle"):
        load_cifar_batch(tmp_path / "b")


def test_truncated_or_foreign_cifar_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(LplaError, match="truncated or not a CIFAR batch"):
        create_dataset("cifar10", "test", root=str(tmp_path))
    _dump(folder / "test_batch", [1, 2, 3])
    with pytest.raises(LplaError, match="not a dict"):
        create_dataset("cifar10", "test", root=str(tmp_path))
    _dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(LplaError, match=r"uint8 \[N, 3072\]"):
        create_dataset("cifar10", "test", root=str(tmp_path))
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(LplaError, match=r"labels must lie in 0..9"):
        create_dataset("cifar10", "test", root=str(tmp_path))
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(LplaError, match="2 images but 1 labels"):
        create_dataset("cifar10", "test", root=str(tmp_path))


def test_download_uses_the_md5_checked_archive_helper(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.utils as tvu

    calls = []

    def fake_download(url: str, root: str, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        write_cifar10(Path(root), per_batch=1)

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    ds = create_dataset("cifar10", "test", root=str(tmp_path / "new"), download=True)
    assert len(ds) == 1
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        )
    ]
    create_dataset("cifar10", "test", root=str(tmp_path / "new"), download=True)
    assert len(calls) == 1  # present: not fetched again


# ---- STL-10 --------------------------------------------------------------------------------------
def test_stl10_column_major_layout_and_labels(tmp_path: Path) -> None:
    truth = write_stl10(tmp_path)
    for split in ("train", "test"):
        ds = create_dataset("stl10", split, root=str(tmp_path))
        assert ds.info.image_shape == (3, 96, 96)
        assert np.array_equal(ds.get_images([0, 1, 2]).numpy(), truth[split][0])
        assert np.array_equal(ds.labels, truth[split][1])
    # by hand: byte c*9216 + w*96 + h of a record is pixel (c, h, w)
    raw = np.fromfile(tmp_path / "stl10_binary" / "train_X.bin", dtype=np.uint8)
    train = create_dataset("stl10", "train", root=str(tmp_path))
    assert int(train.get_images([1])[0, 2, 10, 70]) == int(raw[27648 + 2 * 9216 + 70 * 96 + 10])
    assert train.classes[7] == "monkey"
    unl = create_dataset("stl10", "unlabeled", root=str(tmp_path))
    assert (unl.labels == -1).all() and len(unl) == 3
    assert np.array_equal(unl.get_images([2, 0]).numpy(), truth["unlabeled"][0][[2, 0]])


def test_stl10_bad_files(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    (folder / "test_X.bin").write_bytes((folder / "test_X.bin").read_bytes()[:-1])
    with pytest.raises(LplaError, match="truncated"):
        create_dataset("stl10", "test", root=str(tmp_path))
    (folder / "train_y.bin").write_bytes(bytes([1, 2, 11]))
    with pytest.raises(LplaError, match=r"labels must lie in 0\.\.9"):
        create_dataset("stl10", "train", root=str(tmp_path))
    (folder / "train_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(LplaError, match="3 images but 2 labels"):
        create_dataset("stl10", "train", root=str(tmp_path))
    with pytest.raises(LplaError, match="no split 'extra'"):
        create_dataset("stl10", "extra", root=str(tmp_path))


# ---- SVHN ----------------------------------------------------------------------------------------
def test_svhn_mat_layout_and_digit_zero(tmp_path: Path) -> None:
    truth = write_svhn(tmp_path)
    ds = create_dataset("svhn", "train", root=str(tmp_path))
    assert np.array_equal(ds.get_images([0, 1, 2, 3]).numpy(), truth["train"][0])
    assert ds.labels.tolist() == [0, 1, 2, 3]  # label 10 on disk is digit 0
    from scipy.io import loadmat

    x = loadmat(tmp_path / "train_32x32.mat")["X"]
    assert int(ds.get_images([3])[0, 1, 4, 9]) == int(x[4, 9, 1, 3])  # X[h, w, c, n]


def test_svhn_bad_files(tmp_path: Path) -> None:
    from scipy.io import savemat

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 nonsense" * 3)
    with pytest.raises(LplaError, match=r"(?i)not .*svhn"):
        create_dataset("svhn", "train", root=str(tmp_path))
    savemat(
        tmp_path / "test_32x32.mat",
        {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]], np.uint8)},
    )
    with pytest.raises(LplaError, match=r"1..10"):
        create_dataset("svhn", "test", root=str(tmp_path))
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": [[1], [2]]})
    with pytest.raises(LplaError, match=r"\[32, 32, 3, N\]"):
        create_dataset("svhn", "test", root=str(tmp_path))
    write_svhn(tmp_path / "cut")
    whole = (tmp_path / "cut" / "train_32x32.mat").read_bytes()
    for keep in (100, len(whole) // 2, len(whole) - 7):
        (tmp_path / "cut" / "train_32x32.mat").write_bytes(whole[:keep])
        with pytest.raises(LplaError, match="SVHN"):
            create_dataset("svhn", "train", root=str(tmp_path / "cut"))


# ---- image folders -------------------------------------------------------------------------------
def test_imagefolder_labels_pixels_and_lazy_decoding(tmp_path: Path, monkeypatch) -> None:
    write_folder(tmp_path, {"zebra": [(10, 20, 30)], "ant": [(200, 0, 0), (0, 200, 0)]})
    ds = create_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert ds.classes == ("ant", "zebra") and ds.labels.tolist() == [0, 0, 1]
    assert ds.info.image_shape == (3, 8, 8) and ds.info.num_classes == 2
    from lpla.data import folder

    decoded: list[Path] = []
    real = folder._decode

    def counting(path: Path, mode: str, size: int) -> np.ndarray:
        decoded.append(path)
        return real(path, mode, size)

    monkeypatch.setattr(folder, "_decode", counting)
    imgs = ds.get_images([2, 0])
    assert len(decoded) == 2  # only the batch is decoded
    assert imgs.dtype == torch.uint8 and imgs.shape == (2, 3, 8, 8)
    assert imgs[0, :, 3, 3].tolist() == [10, 20, 30] and imgs[1, :, 0, 0].tolist() == [200, 0, 0]
    assert not hasattr(ds, "images")


def test_imagefolder_grayscale_and_splits(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"a": [(50, 0, 0)], "b": [(90, 0, 0)]}, mode="L")
    write_folder(tmp_path / "test", {"b": [(90, 0, 0), (91, 0, 0)]}, mode="L")
    train = create_dataset("imagefolder", "train", root=str(tmp_path))
    test = create_dataset("imagefolder", "test", root=str(tmp_path))
    assert train.info.image_shape == (1, 32, 32) and len(train) == 2 and len(test) == 2
    assert test.labels.tolist() == [1, 1]  # "b" keeps label 1 although test lacks "a"
    assert test.get_images([1])[0, 0, 5, 5].item() == 91
    with pytest.raises(LplaError, match="no 'val'"):
        create_dataset("imagefolder", "val", root=str(tmp_path))


def test_imagefolder_errors(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": [(1, 2, 3), (4, 5, 6)]})
    broken = tmp_path / "a" / "img1.png"
    broken.write_bytes(broken.read_bytes()[:30])
    ds = FolderDataset(tmp_path)
    ds.get_images([0])
    with pytest.raises(LplaError, match=r"cannot read image .*img1\.png"):
        ds.get_images([0, 1])
    with pytest.raises(LplaError, match="--data-root"):
        create_dataset("imagefolder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LplaError, match="no class sub-folders"):
        create_dataset("imagefolder", root=str(tmp_path / "empty"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(LplaError, match="has no images"):
        create_dataset("imagefolder", root=str(tmp_path / "noimg"))


# ---- resizing ------------------------------------------------------------------------------------
def test_resize_keeps_constant_images_and_shapes() -> None:
    flat = torch.full((2, 3, 28, 28), 77, dtype=torch.uint8)
    assert (resize_uint8(flat, 32) == 77).all() and (resize_uint8(flat, 14) == 77).all()
    ramp = torch.arange(8, dtype=torch.uint8).repeat(1, 1, 8, 1) * 30  # columns 0..210
    small = resize_uint8(ramp, 4)
    assert small.shape == (1, 1, 4, 4) and small.dtype == torch.uint8
    assert (small[0, 0, 0].diff() > 0).all()  # still increasing left to right
    assert resize_uint8(ramp, 8) is ramp


def test_formats_check_split_message() -> None:
    with pytest.raises(LplaError, match="choose one of: train, test"):
        formats.check_split("x", "dev", ("train", "test"))
