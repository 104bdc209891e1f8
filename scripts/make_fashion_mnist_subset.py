"""Build lpla's embedded Fashion-MNIST subset from the IDX files (reproducible, seeded).

    python scripts/make_fashion_mnist_subset.py [/usr/share/datasets/fashion-mnist]

Takes 1,000 train and 200 test images per class (stratified, seed 0) and writes
src/lpla/data/assets/fashion_mnist_subset.npz (compressed). Source: Debian's dataset-fashion-mnist
package (Zalando Research, MIT licence).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lpla.data.idx import read_idx

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "src/lpla/data/assets/fashion_mnist_subset.npz"


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    rng = np.random.default_rng(0)
    tr_x, tr_y = read_idx(ROOT / "train-images-idx3-ubyte.gz"), read_idx(ROOT / "train-labels-idx1-ubyte.gz")
    te_x, te_y = read_idx(ROOT / "t10k-images-idx3-ubyte.gz"), read_idx(ROOT / "t10k-labels-idx1-ubyte.gz")
    tr_i, te_i = stratified(tr_y, 1000, rng), stratified(te_y, 200, rng)
    np.savez_compressed(
        OUT, train_images=tr_x[tr_i], train_labels=tr_y[tr_i].astype(np.uint8), train_source_index=tr_i,
        test_images=te_x[te_i], test_labels=te_y[te_i].astype(np.uint8), test_source_index=te_i,
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB): {len(tr_i)} train, {len(te_i)} test")


if __name__ == "__main__":
    main()
