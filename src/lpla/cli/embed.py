"""``lpla embed``: query an encoder with K augmented views per image and save the embeddings.

Example::

    lpla embed --encoder runs/simclr --dataset fashion-mnist --split test --limit 2000 \\
        --views 10 --out emb.npz
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from lpla.cli._common import parse_csv, user_errors
from lpla.errors import LplaError

MEMBER_ROLES = ("target_member", "shadow_member")
NONMEMBER_ROLES = ("target_nonmember", "shadow_nonmember", "reference")


def open_dataset(
    name: str, split: str, root: Path | None, image_size: int | None, download: bool
) -> Any:
    """The dataset to embed (a seam the CLI tests replace with an in-memory one)."""
    from lpla.data.registry import create_dataset

    return create_dataset(
        name,
        split=split,
        root=None if root is None else str(root),
        download=download,
        image_size=image_size,
    )


def role_membership(role: str) -> int:
    """1 for the member roles, 0 for the others (relative to the encoder trained on the split)."""
    if role in MEMBER_ROLES:
        return 1
    if role in NONMEMBER_ROLES:
        return 0
    raise LplaError(
        f"unknown role {role!r}; choose one of: {', '.join(MEMBER_ROLES + NONMEMBER_ROLES)}"
    )


def select_indices(
    indices: np.ndarray, member: np.ndarray, limit: int | None, sample: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images, or a seeded sample of ``limit`` (kept in dataset order)."""
    if limit is None or limit >= len(indices):
        return indices, member
    if limit < 1:
        raise LplaError(f"--limit must be >= 1, got {limit}")
    if sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(indices), limit, replace=False))
    else:
        rows = np.arange(limit)
    return indices[rows], member[rows]


def _image_shape(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    dims = parse_csv(value, int)
    if len(dims) != 3 or min(dims) < 1:
        raise LplaError(f"--image-shape must be C,H,W (e.g. 3,32,32), got {value!r}")
    return (dims[0], dims[1], dims[2])


@user_errors
def embed(
    encoder: str = typer.Option(
        ...,
        "--encoder",
        "-e",
        help="lpla checkpoint dir, .pt2 (torch.export), TorchScript .pt, or package.module:factory",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output .npz (embeddings [N, K, D])"),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="dataset name (lpla list)"),
    split: str | None = typer.Option(
        None, "--split", help="dataset split (default: test; the split file's pool with --role)"
    ),
    limit: int | None = typer.Option(None, "--limit", help="embed only the first N images"),
    sample: bool = typer.Option(False, "--sample", help="with --limit: a seeded random sample"),
    views: int = typer.Option(10, "--views", "-k", help="augmented views per image (K)"),
    weights: str | None = typer.Option(
        None, "--weights", help=".safetensors weights for a module:factory encoder"
    ),
    layer: str = typer.Option("backbone", "--layer", help="backbone | projection (checkpoints)"),
    augmentation: str | None = typer.Option(
        None,
        "--augmentation",
        "-a",
        help="query augmentation (default: the encoder's training one when known, else weak)",
    ),
    clean_view0: bool = typer.Option(False, "--clean-view0", help="view 0 is the plain image"),
    seed: int = typer.Option(0, "--seed", help="views depend on (seed, batch size)"),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="images per batch"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("float32", "--dtype", help="storage dtype: float32 | float16"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
    data_root: Path | None = typer.Option(None, "--data-root", help="where datasets live"),
    download: bool = typer.Option(False, "--download", help="download the dataset if missing"),
    role: str | None = typer.Option(
        None, "--role", help="embed one role of a membership split (fills 'member')"
    ),
    split_file: Path | None = typer.Option(
        None, "--split-file", help="split.json (default with --role: the checkpoint's own)"
    ),
    image_shape: str | None = typer.Option(
        None, "--image-shape", help="C,H,W the encoder expects (images are resized to H)"
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="turn a feature-map output into [B, D]: avg | flatten | cls"
    ),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast on CUDA"),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the encoder"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Query an encoder with K augmented views per image; write embeddings [N, K, D] (.npz)."""
    from lpla.encoders import load_any_encoder
    from lpla.query import embed_dataset
    from lpla.runtime import resolve_device, set_threads

    set_threads(threads)
    dev = resolve_device(device)
    enc = load_any_encoder(
        encoder, weights, device=dev, layer=layer, image_shape=_image_shape(image_shape), pool=pool
    )
    extra_meta: dict[str, Any] = {}
    indices: np.ndarray | None = None
    member: np.ndarray | None = None
    if role is not None:
        role_membership(role)  # unknown role: fail before reading anything
        mship = _load_split(split_file, encoder)
        ds_name, split_name = mship.dataset, mship.pool_split
        if dataset is not None and dataset != ds_name:
            raise LplaError(f"--dataset {dataset} differs from the split file's {ds_name}")
        if split is not None and split != split_name:
            raise LplaError(
                f"--split {split} differs from the split file's pool split {split_name}"
            )
        indices = np.asarray(mship.indices(role), dtype=np.int64)
        member = np.full(len(indices), role_membership(role), np.int8)
        extra_meta.update(role=role, split_fingerprint=mship.fingerprint())
    elif split_file is not None:
        raise LplaError("--split-file needs --role (which of its roles to embed)")
    else:
        if dataset is None:
            raise LplaError("--dataset is required (or --role with a split file)")
        ds_name, split_name = dataset, split or "test"
    image_size = None
    if enc.image_shape is not None:
        _, h, w = enc.image_shape
        if h != w:
            raise LplaError(
                f"only square images are supported, got --image-shape {enc.image_shape}"
            )
        image_size = h
    data = open_dataset(ds_name, split_name, data_root, image_size, download)
    if indices is None or member is None:
        indices = np.arange(len(data), dtype=np.int64)
        member = np.full(len(data), -1, np.int8)
    indices, member = select_indices(indices, member, limit, sample, seed)
    started = time.perf_counter()
    try:
        path = embed_dataset(
            enc,
            data,
            indices,
            member=member,
            views=views,
            augmentation=augmentation,
            clean_view0=clean_view0,
            seed=seed,
            batch_size=batch_size,
            device=dev,
            dtype=dtype,
            out=out,
            progress=progress,
            meta=extra_meta,
            resume=resume,
            amp=amp,
            compile_model=compile_model,
        )
    except KeyboardInterrupt:
        typer.echo(
            f"lpla: progress kept in {out}.partial; re-run the same call with --resume", err=True
        )
        raise
    seconds = time.perf_counter() - started
    rate = len(indices) / seconds if seconds > 0 else float("inf")
    typer.echo(
        f"wrote {path}: {len(indices)} images x {views} views ({dtype}) "
        f"in {seconds:.1f} s ({rate:.0f} images/s)"
    )


def _load_split(split_file: Path | None, encoder: str) -> Any:
    from lpla.data.splits import MembershipSplit

    if split_file is None:
        from lpla.ssl.checkpoint import Checkpoint

        own = Checkpoint(Path(encoder)).split_file
        if not own.is_file():
            raise LplaError("--role needs --split-file split.json (the encoder has no split.json)")
        split_file = own
    if not split_file.is_file():
        raise LplaError(f"split file not found: {split_file}")
    return MembershipSplit.load(split_file)


def register(app: typer.Typer) -> None:
    """Add ``lpla embed``."""
    app.command("embed")(embed)
