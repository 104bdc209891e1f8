"""Image lists: a user's own images, named by a folder, a text file or a CSV.

``lpla audit --members M --nonmembers N`` audits an encoder on images that are not a registered
dataset: the ones it was trained on and ones it was not. Each of ``M`` and ``N`` is a *spec*:

- a **folder**: flat (images directly inside, sorted by name, labels -1) or an ImageFolder
  (``<folder>/<class>/<image>``, classes sorted by name give labels 0, 1, ...; each class
  folder is searched recursively);
- a **CSV** (``.csv``): rows ``path[,label]``; an optional header row starts with ``path``
  (or ``file``, ``filename``, ``image``) and may name a ``label`` column; an empty label is -1;
- any other **text file**: one image path per line; blank lines and ``#`` comments are skipped.

Relative paths are resolved against the list file's folder. Row ``i`` of the list is dataset
index ``i`` and ``paths[i]`` its absolute path: the identity results are reported under.

Pixels are read lazily (:class:`lpla.data.folder.ImageFiles`): building a list only checks that
every file exists and reads the first image's header. All images decode to one shape so that
batches stack: ``image_size`` x ``image_size`` when given, else the first image's H x W
(bilinear resize); ``channels`` 1 (grey ``L``) or 3 (``RGB``) when given, else the first
image's (grey modes -> 1 channel, anything else -> RGB, an alpha channel dropped).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lpla.data.base import ImageDataset
from lpla.data.folder import (
    IMAGE_EXTENSIONS,
    SPLIT_FOLDERS,
    ImageFiles,
    _subdirs,
    image_mode_and_size,
)
from lpla.errors import LplaError

PATH_HEADERS = frozenset({"path", "file", "filename", "image", "image_path", "filepath"})
LABEL_HEADERS = frozenset({"label", "class", "target", "y"})
_MODES = {1: "L", 3: "RGB"}


class ImageList(ImageFiles):
    """Images named by a spec (see the module docstring); ``paths[i]`` identifies row ``i``."""

    paths: tuple[str, ...]
    spec: str
    list_format: str  # folder | imagefolder | text | csv | combined
    # (spec, first row, row after the last) of each list a combined list was made of
    parts: tuple[tuple[str, int, int], ...] = ()


def load_image_list(
    spec: str | Path,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
) -> ImageList:
    """The images ``spec`` names, as a lazily decoded dataset (see the module docstring).

    ``image_size`` is N (N x N) or (H, W). ``classes`` fixes the label of each class-folder
    name, so that a test ImageFolder's labels mean the train folder's classes; a class folder
    not among them is an error.
    """
    path = Path(spec)
    if not path.exists():
        raise LplaError(f"image list not found: {spec}; give a folder, a .txt or a .csv file")
    if channels is not None and channels not in _MODES:
        raise LplaError(f"images must have 1 (grey) or 3 (RGB) channels, not {channels}")
    size = _size(image_size)
    label_names: tuple[str, ...] = ()
    if path.is_dir():
        files, labels, label_names, fmt = _scan_folder(path, classes)
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        raise LplaError(f"{spec} is one image; give a folder of images, a .txt or a .csv list")
    elif path.suffix.lower() == ".csv":
        (files, labels), fmt = _read_csv(path), "csv"
    else:
        files, fmt = _read_text(path), "text"
        labels = [-1] * len(files)
    if not files:
        raise LplaError(f"{spec} lists no images")
    _check_files(files, spec)
    first_mode, first_size = image_mode_and_size(files[0])
    mode = _MODES[channels] if channels is not None else first_mode
    ds = ImageList(
        files,
        np.asarray(labels, dtype=np.int64),
        mode=mode,
        size=size or first_size,
        name="images",
        split=path.name,
        classes=label_names,
        source=str(path.resolve()),
        extra={
            "list_format": fmt,
            "size_from": "image_size" if size else f"first image {files[0].name}",
        },
    )
    ds.paths = tuple(str(f) for f in files)
    ds.spec = str(spec)
    ds.list_format = fmt
    ds.parts = ((str(spec), 0, len(files)),)
    return ds


def combine_image_lists(
    specs: Sequence[str | Path],
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    flags: Sequence[str] | None = None,
    name: str = "images",
) -> ImageList:
    """Several image lists as one dataset: rows run on from one list to the next.

    ``lpla audit --encoder`` queries the members and the non-members (and the reference images)
    as one dataset, so that an embeddings file's ``index`` is a row of it and
    ``paths[index]`` names the image. ``parts`` gives each list's rows. Every image decodes to
    ``image_size`` / ``channels`` when given, else to the first list's first image's size and
    mode. Class folders are matched by name across lists (labels index the sorted union of the
    class names), CSV labels are kept as written. An image listed in two lists is an error
    naming both (``flags``, e.g. ``--members``, name the lists in messages).
    """
    if not specs:
        raise ValueError("combine_image_lists needs at least one list")
    labels_of = list(flags) if flags is not None else [str(s) for s in specs]
    lists = []
    for flag, spec in zip(labels_of, specs, strict=True):
        try:
            lists.append(load_image_list(spec, image_size=image_size, channels=channels))
        except LplaError as exc:
            if flags is None:
                raise
            raise LplaError(f"{flag}: {exc}") from None
    first = lists[0]
    names = tuple(sorted({c for ds in lists for c in ds.classes}))
    files: list[Path] = []
    labels: list[np.ndarray] = []
    owner: dict[Path, int] = {}
    parts = []
    for i, ds in enumerate(lists):
        for f in ds.files:
            if f in owner:
                raise LplaError(
                    f"{f} is listed in both {labels_of[owner[f]]} and {labels_of[i]}; an image "
                    "is either a member or not (and a reference image is neither)"
                )
            owner[f] = i
        lab = np.asarray(ds.labels, np.int64)
        if ds.classes:  # class folders: the label of a class name is the same in every list
            lab = np.asarray([names.index(ds.classes[int(v)]) for v in lab], np.int64)
        parts.append((ds.spec, len(files), len(files) + len(ds.files)))
        files.extend(ds.files)
        labels.append(lab)
    combined = ImageList(
        files,
        np.concatenate(labels),
        mode=first.mode,
        size=first.size,
        name=name,
        split="+".join(ds.info.split for ds in lists),
        classes=names,
        source=" + ".join(ds.info.source for ds in lists),
        extra={"list_format": "combined", "size_from": first.info.extra["size_from"]},
    )
    combined.paths = tuple(str(f) for f in files)
    combined.spec = " + ".join(ds.spec for ds in lists)
    combined.list_format = "combined"
    combined.parts = tuple(parts)
    return combined


def _size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if int(h) < 1 or int(w) < 1:
        raise LplaError(f"--image-size must be a positive number of pixels, got {image_size}")
    return int(h), int(w)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        f
        for f in found
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith(".")
    )


def _scan_folder(
    root: Path, classes: tuple[str, ...] | list[str] | None
) -> tuple[list[Path], list[int], tuple[str, ...], str]:
    """(files, labels, class names, format) of a flat folder or an ImageFolder."""
    top = _images_in(root, recursive=False)
    per_class = {name: _images_in(root / name, recursive=True) for name in _subdirs(root)}
    per_class = {name: files for name, files in per_class.items() if files}
    if top and per_class:
        raise LplaError(
            f"{root} has images both directly inside and in sub-folders "
            f"({', '.join(list(per_class)[:3])}); use a flat folder or one folder per class"
        )
    if not per_class:
        if classes:
            raise LplaError(f"{root} has no class sub-folders, but classes {list(classes)} are set")
        if not top:
            raise LplaError(
                f"{root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it or in "
                "class sub-folders"
            )
        return [f.resolve() for f in top], [-1] * len(top), (), "folder"
    if set(per_class) <= set(SPLIT_FOLDERS):
        first = sorted(per_class)[0]
        raise LplaError(
            f"{root} holds split folders ({', '.join(sorted(per_class))}), not classes; "
            f"pass one split, e.g. {root / first}"
        )
    names = tuple(classes) if classes else tuple(sorted(per_class))
    unknown = sorted(set(per_class) - set(names))
    if unknown:
        raise LplaError(
            f"{root} has class folder {unknown[0]!r}, which is not among the classes "
            f"{list(names)[:8]} (of the probe-train images)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        found = per_class.get(name, [])
        files.extend(f.resolve() for f in found)
        labels.extend([label] * len(found))
    return files, labels, names, "imagefolder"


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise LplaError(
            f"cannot read {path} as UTF-8 text; give a folder, a .txt or a .csv list"
        ) from None
    except OSError as exc:
        raise LplaError(f"cannot read image list {path}: {exc.strerror or exc}") from None


def _read_text(path: Path) -> list[Path]:
    base = path.resolve().parent
    files = []
    for line in _read_lines(path):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            files.append(_resolve(entry, base))
    return files


def _resolve(entry: str, base: Path) -> Path:
    p = Path(entry).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _read_csv(path: Path) -> tuple[list[Path], list[int]]:
    """Rows ``path[,label]``; a first row starting with a path header names the columns."""
    base = path.resolve().parent
    rows = [
        (n, [cell.strip() for cell in row])
        for n, row in enumerate(csv.reader(_read_lines(path)), start=1)
        if row and any(c.strip() for c in row) and not row[0].strip().startswith("#")
    ]
    path_col, label_col = 0, 1
    if rows and rows[0][1][0].lower() in PATH_HEADERS:
        header = [c.lower() for c in rows.pop(0)[1]]
        path_col = next(i for i, c in enumerate(header) if c in PATH_HEADERS)
        label_col = next((i for i, c in enumerate(header) if c in LABEL_HEADERS), -1)
    elif rows and len(rows[0][1]) > 2:
        raise LplaError(
            f"{path} line {rows[0][0]}: {len(rows[0][1])} columns; expected path[,label] "
            "(or a header row naming a 'path' and a 'label' column)"
        )
    files, labels = [], []
    for line, cells in rows:
        if path_col >= len(cells) or not cells[path_col]:
            raise LplaError(f"{path} line {line}: no image path")
        files.append(_resolve(cells[path_col], base))
        text = cells[label_col] if 0 <= label_col < len(cells) else ""
        labels.append(_label(text, path, line))
    return files, labels


def _label(text: str, path: Path, line: int) -> int:
    if not text:
        return -1
    try:
        label = int(text)
    except ValueError:
        raise LplaError(
            f"{path} line {line}: label {text!r} is not an integer (a header row must start "
            "with 'path')"
        ) from None
    if label < -1:
        raise LplaError(f"{path} line {line}: label {label} < -1 (-1 means no label)")
    return label


def _check_files(files: list[Path], spec: str | Path) -> None:
    """Every listed path once, and every one an existing file (before any pixel is read)."""
    seen: dict[Path, int] = {}
    for row, f in enumerate(files):
        if f in seen:
            raise LplaError(
                f"{spec} lists {f} twice (rows {seen[f]} and {row}); each image may appear once"
            )
        seen[f] = row
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise LplaError(
            f"{len(missing)} of the {len(files)} images listed in {spec} are missing, "
            f"e.g. {missing[0]}"
        )


# ------------------------------------------------------------------ selections of a dataset


class SubsetDataset(ImageDataset):
    """Rows ``indices`` of ``dataset``; row ``i`` here is row ``indices[i]`` there."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, split: str) -> None:
        self.base = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.labels = dataset.labels[self.indices]
        self.classes = dataset.classes
        extra = {**dataset.info.extra, "rows_of": dataset.info.split}
        self.info = replace(dataset.info, split=split, num_images=len(self.indices), extra=extra)
        paths = getattr(dataset, "paths", None)
        if paths is not None:
            self.paths = tuple(paths[int(i)] for i in self.indices)

    def _load(self, indices: np.ndarray) -> torch.Tensor:
        return self.base._load(self.indices[indices])


def stratified_split(
    dataset: ImageDataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[SubsetDataset, SubsetDataset]:
    """Seeded split of a labelled dataset into (train, test) keeping its class proportions.

    The linear probe and kNN of ``lpla utility --images`` need held-out images of the same
    classes; ``sklearn.model_selection.train_test_split(stratify=labels)``, indices sorted.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise LplaError(f"--test-fraction must lie strictly between 0 and 1, got {test_fraction}")
    require_labels(dataset)
    labels = np.asarray(dataset.labels)
    name = dataset.info.source or dataset.info.split
    values, counts = np.unique(labels, return_counts=True)
    if len(values) < 2:
        raise LplaError(f"{name} has a single class; a probe needs at least 2")
    if counts.min() < 2:
        rare = int(values[counts.argmin()])
        cls = dataset.classes[rare] if rare < len(dataset.classes) else str(rare)
        raise LplaError(
            f"class {cls!r} of {name} has 1 image; a stratified probe split needs 2 per class "
            "(or give --test-images)"
        )
    try:
        train, test = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise LplaError(f"cannot split {name} into probe train/test: {exc}") from None
    return (
        SubsetDataset(dataset, np.sort(train), "probe-train"),
        SubsetDataset(dataset, np.sort(test), "probe-test"),
    )


def require_labels(dataset: ImageDataset) -> None:
    """A clear error for unlabelled images where classes are needed (a probe, a split)."""
    if len(dataset.labels) == 0 or (np.asarray(dataset.labels) < 0).any():
        name = dataset.info.source or dataset.info.split
        raise LplaError(
            f"{name} has no class labels; put the images in class sub-folders "
            "(<folder>/<class>/<image>) or list them in a CSV path,label"
        )


def probe_images(
    images: str | Path,
    test_images: str | Path | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ImageDataset, ImageDataset]:
    """(probe-train, probe-test) labelled images for ``lpla utility --images``.

    Without ``test_images``, a seeded stratified split of ``images``; with it, the test images
    are decoded to the train images' shape, and an ImageFolder's class names keep their labels.
    """
    train = load_image_list(images, image_size=image_size, channels=channels)
    require_labels(train)
    if test_images is None:
        return stratified_split(train, test_fraction, seed)
    test = load_image_list(
        test_images,
        image_size=train.size,
        channels=train.info.image_shape[0],
        classes=train.classes or None,
    )
    require_labels(test)
    return train, test


__all__ = [
    "ImageList",
    "SubsetDataset",
    "combine_image_lists",
    "load_image_list",
    "probe_images",
    "require_labels",
    "stratified_split",
]
