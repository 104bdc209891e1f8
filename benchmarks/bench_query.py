"""Query-engine throughput: ``lpla.query.embed_dataset`` vs the raw forward pass vs a naive loop.

For each backbone, N Fashion-MNIST images x K views are embedded three ways, interleaved in the
same process (medians of repeated runs):

- ``ours``: ``embed_dataset(..., augmentation="weak")`` (uint8 batches -> one kornia call on all
  B*K rows -> one forward -> [B, K, D] rows);
- ``raw``: only ``encoder(x)`` on pre-made float tensors of the same N*K rows, in the same
  forward calls (B*K rows per batch, split into ``CPU_FORWARD_ROWS`` chunks on a CPU, as the
  engine does), under ``inference_mode``: the physical limit of the forward pass;
- ``naive``: per image and per view, torchvision.transforms.v2 on a PIL image (the ``weak``
  recipe: RandomResizedCrop(0.8-1), flip, ColorJitter(0.1, 0.1)), then the encoder on a batch
  of 1 - how the query is usually written. Run on a subset; its per-image rate is reported.

Also: the engine without augmentation (``augmentation="none"``: what the augmentation costs),
the engine's batch size, and ``compile_model=True`` (torch.compile) against eager.

Run: ``.venv/bin/python benchmarks/bench_query.py [--quick] [--out results.json]``
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from _common import (
    interleaved,
    machine_info,
    median,
    parse_args,
    print_table,
    setup_threads,
    summary,
    write_results,
)
from torch import nn

from lpla.data.base import ArrayDataset, ImageDataset
from lpla.query import CPU_FORWARD_ROWS, embed_dataset
from lpla.ssl.backbones import create_backbone

TARGET_RAW = 0.7
TARGET_NAIVE = 5.0


def load_images() -> tuple[ImageDataset, str]:
    """Fashion-MNIST (the embedded subset); random uint8 images of its shape if unavailable."""
    try:
        from lpla.data.registry import create_dataset

        return create_dataset("fashion-mnist"), "fashion-mnist (embedded subset)"
    except Exception as exc:  # the data layer is optional for this benchmark
        g = np.random.default_rng(0)
        imgs = g.integers(0, 256, size=(2000, 1, 28, 28), dtype=np.uint8)
        labels = np.zeros(2000, dtype=np.int64)
        name = f"random uint8 1x28x28 (fashion-mnist unavailable: {type(exc).__name__})"
        return ArrayDataset(imgs, labels, name="random", split="train"), name


def naive_transform() -> Any:
    """The ``weak`` query recipe written with torchvision.transforms.v2 on PIL images."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(28, scale=(0.8, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def make_naive(encoder: nn.Module, pil_images: list[Any], views: int) -> Any:
    transform = naive_transform()

    def run() -> None:
        out = []
        with torch.no_grad():
            for img in pil_images:
                out.append([encoder(transform(img)[None])[0] for _ in range(views)])

    return run


def make_raw(encoder: nn.Module, rows: torch.Tensor, row_batch: int) -> Any:
    def run() -> None:
        with torch.inference_mode():
            for chunk in rows.split(row_batch):
                encoder(chunk)

    return run


def make_ours(
    encoder: nn.Module, ds: ImageDataset, idx: np.ndarray, views: int, batch: int, **kw: Any
) -> Any:
    def run() -> None:
        embed_dataset(encoder, ds, idx, views=views, batch_size=batch, progress=False, **kw)

    return run


def bench_backbone(
    name: str, ds: ImageDataset, n: int, n_naive: int, views: int, batch: int, reps: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    c, h, _ = ds.info.image_shape
    encoder = create_backbone(name, c, h).eval()
    idx = np.arange(n, dtype=np.int64)
    images = ds.get_images(idx)
    rows = images.float().div(255.0).repeat(views, 1, 1, 1).contiguous()  # the same N*K rows
    from PIL import Image

    pil = [Image.fromarray(images[i, 0].numpy(), mode="L") for i in range(n_naive)]
    # raw makes the same forward calls as the engine: B*K rows, in CPU_FORWARD_ROWS chunks
    raw_rows = min(batch * views, CPU_FORWARD_ROWS)
    t_naive_scale = n / n_naive  # naive runs on a subset; times are scaled to N images
    times = interleaved(
        {
            "ours": make_ours(encoder, ds, idx, views, batch),
            "ours_no_aug": make_ours(encoder, ds, idx, views, batch, augmentation="none"),
            "raw": make_raw(encoder, rows, raw_rows),
            "naive": make_naive(encoder, pil, views),
        },
        reps=reps,
    )
    times["naive"] = [t * t_naive_scale for t in times["naive"]]
    res = {k: summary(v, float(n)) for k, v in times.items()}
    res["naive"]["measured_on_images"] = n_naive
    res["naive"]["note"] = f"timed on {n_naive} images, seconds scaled by N/{n_naive}"
    ours = res["ours"]["items_per_s"]
    return {
        "backbone": name,
        "images": n,
        "views": views,
        "batch_size_images": batch,
        "rows_per_batch": batch * views,
        "rows_per_forward_call": raw_rows,
        "feature_dim": int(encoder.feature_dim),
        "variants": res,
        "ratio_ours_over_raw": ours / res["raw"]["items_per_s"],
        "ratio_ours_over_naive": ours / res["naive"]["items_per_s"],
        "ratio_no_aug_over_raw": res["ours_no_aug"]["items_per_s"] / res["raw"]["items_per_s"],
        "target_ours_over_raw": TARGET_RAW,
        "target_ours_over_naive": TARGET_NAIVE,
        "met_raw": ours / res["raw"]["items_per_s"] >= TARGET_RAW,
        "met_naive": ours / res["naive"]["items_per_s"] >= TARGET_NAIVE,
    }


def bench_batch_sizes(
    ds: ImageDataset, n: int, views: int, sizes: list[int], reps: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    encoder = create_backbone("cnn-small", *ds.info.image_shape[:2]).eval()
    idx = np.arange(n, dtype=np.int64)
    times = interleaved(
        {f"batch_{b}": make_ours(encoder, ds, idx, views, b) for b in sizes}, reps=reps
    )
    return {
        "backbone": "cnn-small",
        "images": n,
        "views": views,
        "by_batch_size": {k: summary(v, float(n)) for k, v in times.items()},
    }


def bench_compile(ds: ImageDataset, n: int, views: int, batch: int, reps: int) -> dict[str, Any]:
    """torch.compile (inductor) vs eager, cnn-small: first call (compiles) and steady state."""
    torch.manual_seed(0)
    encoder = create_backbone("cnn-small", *ds.info.image_shape[:2]).eval()
    idx = np.arange(n, dtype=np.int64)
    compiled = make_ours(encoder, ds, idx, views, batch, compile_model=True)
    t0 = time.perf_counter()
    try:
        compiled()
    except Exception as exc:  # no compiler toolchain, unsupported platform, ...
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    first_call = time.perf_counter() - t0
    times = interleaved(
        {"eager": make_ours(encoder, ds, idx, views, batch), "compiled": compiled}, reps=reps
    )
    res = {k: summary(v, float(n)) for k, v in times.items()}
    return {
        "backbone": "cnn-small",
        "images": n,
        "views": views,
        "first_call_s_including_compile": first_call,
        "variants": res,
        "ratio_compiled_over_eager": median(times["eager"]) / median(times["compiled"]),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "bench_query.json")
    threads = setup_threads()
    ds, data_name = load_images()
    views = 10
    if args.quick:
        plan = [("cnn-small", 16, 2, 8), ("resnet18", 4, 1, 4)]
        reps, sizes, compile_n = args.reps or 1, [4, 16], 0
    else:
        plan = [("cnn-small", 500, 50, 64), ("resnet18", 32, 4, 8)]
        reps, sizes, compile_n = args.reps or 5, [8, 32, 64, 256], 500
    results: dict[str, Any] = {
        "benchmark": "query",
        "machine": machine_info(),
        "dataset": data_name,
        "threads": threads,
        "quick": bool(args.quick),
        "backbones": [],
    }
    table = []
    for name, n, n_naive, batch in plan:
        r = bench_backbone(name, ds, n, n_naive, views, batch, reps)
        results["backbones"].append(r)
        v = r["variants"]
        table.append(
            [
                name,
                f"{n}x{views}",
                v["ours"]["items_per_s"],
                v["ours_no_aug"]["items_per_s"],
                v["raw"]["items_per_s"],
                v["naive"]["items_per_s"],
                f"{r['ratio_ours_over_raw']:.2f} (>= {TARGET_RAW})",
                f"{r['ratio_ours_over_naive']:.1f} (>= {TARGET_NAIVE:g})",
            ]
        )
    print_table(
        f"embed_dataset vs raw forward vs naive loop (images/s, K={views} views; "
        f"{threads} torch thread(s), median of {reps})",
        ["backbone", "N x K", "ours", "ours no-aug", "raw fwd", "naive", "ours/raw", "ours/naive"],
        table,
    )

    bs = bench_batch_sizes(ds, plan[0][1], views, sizes, reps)
    results["batch_sizes"] = bs
    print_table(
        "engine batch size (cnn-small, images/s)",
        ["batch (images)", "rows/batch", "images/s"],
        [
            [k.split("_")[1], int(k.split("_")[1]) * views, v["items_per_s"]]
            for k, v in bs["by_batch_size"].items()
        ],
    )

    if compile_n:
        comp = bench_compile(ds, compile_n, views, plan[0][3], reps)
        results["torch_compile"] = comp
        if "error" in comp:
            print(f"\ntorch.compile failed: {comp['error']}")
        else:
            print_table(
                "torch.compile (compile_model=True) vs eager, cnn-small",
                ["variant", "images/s", "first call s"],
                [
                    ["eager", comp["variants"]["eager"]["items_per_s"], ""],
                    [
                        "compiled",
                        comp["variants"]["compiled"]["items_per_s"],
                        comp["first_call_s_including_compile"],
                    ],
                ],
            )
    else:
        results["torch_compile"] = {"skipped": "quick mode"}
    results["untested_here"] = [
        "amp (bfloat16 autocast, CUDA only)",
        "channels_last (CUDA only, automatic for conv models)",
        "pinned-memory prefetch thread (CUDA only)",
    ]
    write_results(args.out, results)


if __name__ == "__main__":
    main()
