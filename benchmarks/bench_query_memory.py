"""Query-engine memory: peak RSS of ``embed_dataset(out=file)`` as N grows, vs collecting a list.

Each (approach, N) runs in a fresh child process that embeds N synthetic 1x28x28 images (made
on the fly from their index, so the dataset itself costs no memory) with K = 10 views and a tiny
encoder (Flatten -> Linear(784, 128)), and reports its peak RSS (VmHWM) above the RSS it had
after imports and set-up. No augmentation on either side (``augmentation="none"``): augmenting
costs time, not memory, and this benchmark is about memory.

- ``ours-file``: ``embed_dataset(..., out=path)`` streams [B, K, D] batches into the file:
  memory bounded by the batch, whatever N is;
- ``ours-memory``: ``embed_dataset(..., out=None)``: one preallocated [N, K, D] array (linear,
  1x the embeddings);
- ``naive``: per batch, encode each view, append the numpy [B, K, D] block to a Python list, then
  ``np.concatenate`` and ``np.savez`` at the end (linear, ~2x the embeddings at the peak).

Run: ``.venv/bin/python benchmarks/bench_query_memory.py [--quick] [--out results.json]``
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    CHILD_PEAK_RSS,
    machine_info,
    parse_args,
    print_table,
    run_child,
    setup_threads,
    write_results,
)

K, D = 10, 128
APPROACHES = ("ours-file", "ours-memory", "naive")

CHILD = (
    CHILD_PEAK_RSS
    + r"""
import json, sys, time
import numpy as np
import torch
from torch import nn
cfg = json.load(sys.stdin)
from lpla.runtime import set_threads
set_threads()
from lpla.data.base import DatasetInfo, ImageDataset
from lpla.query import embed_dataset

class Synthetic(ImageDataset):
    # images made from their index: the dataset holds nothing, so only the query engine counts
    def __init__(self, n):
        self.info = DatasetInfo("synthetic", "train", n, 1, (1, 28, 28))
        self.labels = np.zeros(0, dtype=np.int64)
    def _load(self, indices):
        g = np.random.default_rng(int(indices[0]) if len(indices) else 0)
        return torch.from_numpy(g.integers(0, 256, (len(indices), 1, 28, 28), dtype=np.uint8))

n, k, mode, batch = cfg["n"], cfg["k"], cfg["mode"], cfg["batch"]
torch.manual_seed(0)
encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, cfg["d"])).eval()
ds = Synthetic(n)
idx = np.arange(n, dtype=np.int64)
before = peak_rss_mb()
t0 = time.perf_counter()
if mode == "ours-file":
    embed_dataset(encoder, ds, idx, views=k, augmentation="none", batch_size=batch,
                  out=cfg["path"], progress=False)
elif mode == "ours-memory":
    res = embed_dataset(encoder, ds, idx, views=k, augmentation="none", batch_size=batch,
                        progress=False)
else:
    blocks = []
    with torch.inference_mode():
        for _, images in ds.iter_batches(idx, batch):
            x = images.float().div(255.0)
            blocks.append(torch.stack([encoder(x) for _ in range(k)], dim=1).numpy())
    emb = np.concatenate(blocks)
    np.savez(cfg["path"], embeddings=emb, member=np.full(n, -1, np.int8), index=idx)
seconds = time.perf_counter() - t0
peak = peak_rss_mb()
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak,
                  "growth_mb": peak - before}))
"""
)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "bench_query_memory.json")
    threads = setup_threads()
    sizes = [200, 2000] if args.quick else [1_000, 10_000, 50_000]
    batch = 256
    work = Path(tempfile.mkdtemp(prefix="lpla-bench-qmem-"))
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            for mode in APPROACHES:
                path = work / f"{mode}-{n}.npz"
                r = run_child(
                    CHILD, {"n": n, "k": K, "d": D, "mode": mode, "batch": batch, "path": str(path)}
                )
                path.unlink(missing_ok=True)
                rows.append({"n": n, "mode": mode, "embeddings_mb": n * K * D * 4 / 1e6, **r})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    by = {(r["n"], r["mode"]): r for r in rows}
    print_table(
        f"peak RSS growth during the query (MB above the child's post-setup RSS; K={K}, D={D}, "
        f"float32, batch {batch}; {threads} torch thread(s))",
        ["N", "embeddings MB", *(f"{m} MB" for m in APPROACHES), *(f"{m} s" for m in APPROACHES)],
        [
            [
                f"{n:,}",
                n * K * D * 4 / 1e6,
                *(by[n, m]["growth_mb"] for m in APPROACHES),
                *(by[n, m]["seconds"] for m in APPROACHES),
            ]
            for n in sizes
        ],
    )
    write_results(
        args.out,
        {
            "benchmark": "query_memory",
            "machine": machine_info(),
            "threads": threads,
            "quick": bool(args.quick),
            "config": {
                "views": K,
                "dim": D,
                "dtype": "float32",
                "batch_size": batch,
                "encoder": "Flatten -> Linear(784, 128)",
                "augmentation": "none",
                "images": "synthetic 1x28x28 uint8, generated per batch from the index",
            },
            "runs": rows,
        },
    )


if __name__ == "__main__":
    main()
