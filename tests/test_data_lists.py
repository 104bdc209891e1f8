"""Image lists (lpla.data.lists): folders, ImageFolders, text and CSV lists of tiny PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpla.data.lists import load_image_list, probe_images, stratified_split
from lpla.errors import LplaError


def _png(path: Path, value: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> Path:
    """A constant image of ``value`` (size = (W, H)), so each file is recognisable by its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


def test_flat_folder_lazily_in_name_order_with_unknown_labels(tmp_path, monkeypatch) -> None:
    for name, value in (("b.png", 20), ("a.png", 10), ("c.png", 30)):
        _png(tmp_path / "imgs" / name, value)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    ds = load_image_list(tmp_path / "imgs")
    assert len(ds) == 3 and ds.list_format == "folder"
    assert [Path(p).name for p in ds.paths] == ["a.png", "b.png", "c.png"]
    assert ds.info.image_shape == (1, 5, 6) and ds.labels.tolist() == [-1, -1, -1]
    assert ds.info.num_classes == 0 and ds.paths[0] == str((tmp_path / "imgs/a.png").resolve())
    # lazy: only the requested rows are decoded
    import lpla.data.folder as folder

    decoded: list[str] = []
    real = folder._decode
    monkeypatch.setattr(folder, "_decode", lambda p, m, s: decoded.append(p.name) or real(p, m, s))
    batch = ds.get_images([2, 0])
    assert decoded == ["c.png", "a.png"]
    assert batch.dtype.is_floating_point is False and batch.shape == (2, 1, 5, 6)
    assert batch[:, 0, 0, 0].tolist() == [30, 10]


def test_imagefolder_labels_from_sorted_class_folders(tmp_path) -> None:
    _png(tmp_path / "dog" / "x.png", 40)
    _png(tmp_path / "cat" / "deep" / "y.png", 50)  # class folders are searched recursively
    _png(tmp_path / "cat" / "z.png", 60)
    ds = load_image_list(tmp_path)
    assert ds.list_format == "imagefolder" and ds.classes == ("cat", "dog")
    assert [Path(p).name for p in ds.paths] == ["y.png", "z.png", "x.png"]
    assert ds.labels.tolist() == [0, 0, 1] and ds.info.num_classes == 2
    # fixed classes (a test folder matching a train folder): labels follow them
    again = load_image_list(tmp_path, classes=("ant", "cat", "dog"))
    assert again.labels.tolist() == [1, 1, 2]
    with pytest.raises(LplaError, match=r"class folder 'dog', which is not among"):
        load_image_list(tmp_path, classes=("cat",))


def test_text_list_relative_paths_comments_and_shape_rules(tmp_path) -> None:
    _png(tmp_path / "data" / "one.png", 10, size=(8, 4))
    _png(tmp_path / "data" / "two.png", 200, size=(3, 3), mode="RGB")
    _png(tmp_path / "elsewhere" / "three.png", 90, size=(8, 4))
    listing = tmp_path / "lists" / "members.txt"
    listing.parent.mkdir()
    listing.write_text(
        "# my members\n\n../data/one.png\n  ../data/two.png  \n"
        f"{(tmp_path / 'elsewhere' / 'three.png').resolve()}\n"
    )
    ds = load_image_list(listing)
    assert ds.list_format == "text" and len(ds) == 3 and ds.labels.tolist() == [-1] * 3
    # first image decides: grey, H x W = 4 x 8; the RGB 3x3 one is converted and resized
    assert ds.info.image_shape == (1, 4, 8)
    assert ds.get_images(np.arange(3)).shape == (3, 1, 4, 8)
    rgb = load_image_list(listing, image_size=5, channels=3)
    assert rgb.info.image_shape == (3, 5, 5) and rgb.get_images([1]).shape == (1, 3, 5, 5)
    assert load_image_list(listing, image_size=(2, 7)).get_images([0]).shape == (1, 1, 2, 7)


@pytest.mark.parametrize("header", ["", "path,label\n", "Filename,Label\n"])
def test_csv_with_and_without_header(tmp_path, header) -> None:
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b b.png", 2)
    (tmp_path / "l.csv").write_text(f'{header}a.png,3\n\n"b b.png",\n')
    ds = load_image_list(tmp_path / "l.csv")
    assert ds.list_format == "csv" and ds.labels.tolist() == [3, -1]
    assert ds.info.num_classes == 4 and Path(ds.paths[1]).name == "b b.png"


def test_csv_header_picks_columns_by_name(tmp_path) -> None:
    _png(tmp_path / "a.png", 1)
    (tmp_path / "l.csv").write_text("split,image,class\ntrain,a.png,2\n")
    with pytest.raises(LplaError, match=r"line 1: 3 columns; expected path\[,label\]"):
        load_image_list(tmp_path / "l.csv")
    (tmp_path / "m.csv").write_text("image,split,class\na.png,train,2\n")
    assert load_image_list(tmp_path / "m.csv").labels.tolist() == [2]


def test_errors_are_one_clear_line(tmp_path) -> None:
    good = _png(tmp_path / "ok.png", 5)
    with pytest.raises(LplaError, match=r"image list not found: .*nope\.txt"):
        load_image_list(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(LplaError, match=r"empty\.txt lists no images"):
        load_image_list(tmp_path / "empty.txt")
    (tmp_path / "missing.txt").write_text("ok.png\ngone.png\n")
    with pytest.raises(
        LplaError, match=r"1 of the 2 images listed in .* are missing, e\.g\. .*gone"
    ):
        load_image_list(tmp_path / "missing.txt")
    (tmp_path / "bad.csv").write_text("ok.png,cat\n")
    with pytest.raises(LplaError, match=r"bad\.csv line 1: label 'cat' is not an integer"):
        load_image_list(tmp_path / "bad.csv")
    (tmp_path / "dup.txt").write_text(f"ok.png\n./ok.png\n{good.resolve()}\n")
    with pytest.raises(LplaError, match=r"lists .*ok\.png twice \(rows 0 and 1\)"):
        load_image_list(tmp_path / "dup.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "corrupt.txt").write_text("ok.png\nbroken.png\n")
    ds = load_image_list(tmp_path / "corrupt.txt")  # lazy: found when the file is read
    with pytest.raises(LplaError, match=r"cannot read image .*broken\.png"):
        ds.get_images([1])
    (tmp_path / "first.txt").write_text("broken.png\n")
    with pytest.raises(LplaError, match=r"cannot read image .*broken\.png"):
        load_image_list(tmp_path / "first.txt")  # the first image's header is read up front
    with pytest.raises(LplaError, match=r"is one image"):
        load_image_list(good)
    with pytest.raises(LplaError, match=r"1 \(grey\) or 3 \(RGB\) channels, not 4"):
        load_image_list(tmp_path / "corrupt.txt", channels=4)


def test_folder_layout_errors(tmp_path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(LplaError, match=r"has no images"):
        load_image_list(tmp_path / "none")
    _png(tmp_path / "mixed" / "top.png", 1)
    _png(tmp_path / "mixed" / "cls" / "a.png", 1)
    with pytest.raises(LplaError, match=r"both directly inside and in sub-folders"):
        load_image_list(tmp_path / "mixed")
    _png(tmp_path / "splits" / "train" / "cat" / "a.png", 1)
    _png(tmp_path / "splits" / "test" / "cat" / "b.png", 1)
    with pytest.raises(LplaError, match=r"holds split folders \(test, train\).*splits/test"):
        load_image_list(tmp_path / "splits")


def _imagefolder(root: Path, per_class: int, classes: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 40 * k + i)
    return root


def test_stratified_split_is_seeded_disjoint_and_keeps_proportions(tmp_path) -> None:
    ds = load_image_list(_imagefolder(tmp_path / "f", 5))
    train, test = stratified_split(ds, 0.4, seed=3)
    assert len(train) == 9 and len(test) == 6
    assert sorted(np.bincount(test.labels).tolist()) == [2, 2, 2]
    assert not set(train.paths) & set(test.paths) and set(train.paths) | set(test.paths) == set(
        ds.paths
    )
    again, _ = stratified_split(ds, 0.4, seed=3)
    assert again.paths == train.paths
    other, _ = stratified_split(ds, 0.4, seed=4)
    assert other.paths != train.paths
    # rows map back to the list's images
    row = int(np.flatnonzero(np.asarray(ds.paths) == test.paths[0])[0])
    assert (test.get_images([0]) == ds.get_images([row])).all()
    assert test.info.split == "probe-test" and test.info.image_shape == ds.info.image_shape


def test_probe_images_errors_and_test_folder(tmp_path) -> None:
    flat = tmp_path / "flat"
    for i in range(4):
        _png(flat / f"{i}.png", i)
    with pytest.raises(LplaError, match=r"has no class labels; put the images in class sub"):
        probe_images(flat)
    one = _imagefolder(tmp_path / "one", 3, ("a", "b"))
    (one / "b" / "1.png").unlink()
    (one / "b" / "2.png").unlink()
    with pytest.raises(LplaError, match=r"class 'b' of .* has 1 image"):
        probe_images(one)
    train_dir = _imagefolder(tmp_path / "tr", 2)
    test_dir = _imagefolder(tmp_path / "te", 1, ("c", "a"))  # other order, a class missing
    _png(test_dir / "c" / "big.png", 9, size=(20, 20), mode="RGB")
    train, test = probe_images(train_dir, test_dir)
    assert len(train) == 6 and len(test) == 3
    assert test.labels.tolist() == [0, 2, 2]  # a -> 0, c -> 2 as in the train folder
    assert test.get_images(np.arange(3)).shape == (3, *train.info.image_shape)
