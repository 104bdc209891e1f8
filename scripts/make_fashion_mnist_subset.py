"""Build lpla's embedded Fashion-MNIST subset from the IDX files (reproducible, seeded).

    apt-get install dataset-fashion-mnist      # Debian/Ubuntu: the IDX files, MIT licence
    python scripts/make_fashion_mnist_subset.py [IDX_DIR] [--out PATH] [--seed 0]

Takes 1,000 train and 200 test images per class (stratified: for each class in label order,
``rng.choice`` without replacement from one ``numpy.random.default_rng(seed)``, train classes
first, then test classes) and writes src/lpla/data/assets/fashion_mnist_subset.npz
(compressed) with ``train_images`` uint8 [10000, 28, 28], ``train_labels``, ``train_source_index``
(rows taken from the original train file), the same three for ``test``, the ``seed`` and a
``provenance`` JSON string (sha256 of each uncompressed source file). Source: Zalando Research,
https://github.com/zalandoresearch/fashion-mnist (MIT licence, see LICENSES/fashion-mnist.txt).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from lpla.data.idx import read_idx
from lpla.io import atomic_path

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/lpla/data/assets/fashion_mnist_subset.npz"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_file(root: Path, stem: str) -> Path:
    """``stem.gz`` or ``stem`` under ``root`` (Debian ships gzipped files)."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{stem}[.gz] not found under {root}; apt-get install dataset-fashion-mnist")


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` distinct rows of every class 0..9, sorted (original file order)."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def _sha256_idx(path: Path) -> str:
    """Hash of the uncompressed IDX bytes: the same for a plain or a gzipped copy."""
    raw = path.read_bytes()
    return hashlib.sha256(gzip.decompress(raw) if path.suffix == ".gz" else raw).hexdigest()


def build_subset(root: Path, out: Path, *, train_per_class: int = 1000, test_per_class: int = 200,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Write the subset to ``out`` atomically and return its arrays."""
    paths = {key: find_file(root, stem) for key, stem in FILES.items()}
    data = {key: read_idx(path) for key, path in paths.items()}
    rng = np.random.default_rng(seed)
    train_idx = stratified(data["train_labels"], train_per_class, rng)
    test_idx = stratified(data["test_labels"], test_per_class, rng)
    provenance = {
        "source": "https://github.com/zalandoresearch/fashion-mnist (MIT licence)",
        "sha256_uncompressed": {p.name.removesuffix(".gz"): _sha256_idx(p) for p in paths.values()},
        "rule": f"stratified, {train_per_class}/{test_per_class} per class, default_rng({seed})",
    }
    arrays = {
        "train_images": data["train_images"][train_idx],
        "train_labels": data["train_labels"][train_idx].astype(np.uint8),
        "train_source_index": train_idx.astype(np.int64),
        "test_images": data["test_images"][test_idx],
        "test_labels": data["test_labels"][test_idx].astype(np.uint8),
        "test_source_index": test_idx.astype(np.int64),
        "seed": np.int64(seed),
        "provenance": np.array(json.dumps(provenance, sort_keys=True)),
    }
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEBIAN_DIR, help="IDX directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = build_subset(args.root, args.out, seed=args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
          f"{len(arrays['train_labels'])} train, {len(arrays['test_labels'])} test")


if __name__ == "__main__":
    main()
