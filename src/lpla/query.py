"""The query engine: encoder x images x K augmented views -> embeddings ``[N, K, D]``, streamed.

This is the attacker's only access to the target (black-box queries returning embeddings). Per
batch of B images: load uint8 from the dataset, move to the device, convert to float in [0, 1],
repeat the batch K times and augment all B*K rows in ONE kornia call, run ONE forward pass, and
hand the ``[B, K, D]`` rows to the writer. Memory is bounded by the batch, never by N.

Determinism: before each batch the global torch RNG is seeded from ``(seed, batch_number)``
(the caller's RNG state is restored afterwards), so the same call gives the same views, an
interrupted run resumes with exactly the views it would have drawn, and different seeds give
different views. The views of an image depend on ``(seed, batch_size)`` and the image's position:
embedding the same images with another batch size draws other (equally valid) views.

Rows inside a batch are view-major (row ``v * B + i`` is view ``v`` of image ``i``); with
``clean_view0`` the first B rows skip the augmentation, so view 0 is the plain image.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lpla
from lpla.data.base import ImageDataset
from lpla.embeddings import (
    STORAGE_DTYPES,
    EmbeddingsFile,
    EmbeddingsWriter,
    validate_member_index,
)
from lpla.encoders import LoadedEncoder, module_fingerprint, probe_encoder
from lpla.errors import LplaError
from lpla.runtime import resolve_device

FORMAT = "lpla-embeddings/1"


def batch_seed(seed: int, batch_number: int) -> int:
    """Seed for one batch's views: decorrelated across (seed, batch) pairs, unlike seed + b."""
    return int(np.random.SeedSequence([int(seed), int(batch_number)]).generate_state(1)[0])


@dataclass
class QueryPlan:
    """Everything a run needs, resolved once (module on device, augmentation, shapes)."""

    module: nn.Module
    augmentation: nn.Module | None
    augmentation_name: str
    views: int
    clean_view0: bool
    device: torch.device
    storage_dtype: torch.dtype
    amp: bool
    channels_last: bool
    forward_rows: int | None = None  # rows per forward call (None: the whole B*K batch)


#: Rows per forward call on a CPU. The B*K rows of a batch go through the encoder in chunks of
#: this size: activations of ~256 small images stay in cache, 2560 do not; measured ~2x faster
#: for cnn-small at 28x28 (benchmarks/bench_query.py). Per-row outputs do not depend on it.
CPU_FORWARD_ROWS = 256


class _ArraySink:
    """In-memory counterpart of :class:`EmbeddingsWriter` (for ``out=None``)."""

    def __init__(self, n: int, k: int, d: int, dtype: str) -> None:
        self.array = np.empty((n, k, d), dtype=dtype)
        self.rows_done = 0

    def write(self, rows: np.ndarray) -> None:
        self.array[self.rows_done : self.rows_done + rows.shape[0]] = rows
        self.rows_done += rows.shape[0]


def embed_dataset(
    encoder: LoadedEncoder | nn.Module,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    *,
    member: np.ndarray | None = None,
    views: int = 10,
    augmentation: str | nn.Module | None = "weak",
    clean_view0: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    resume: bool = False,
    amp: bool = False,
    compile_model: bool = False,
) -> Path | EmbeddingsFile:
    """Embed ``dataset[indices]`` with K views each; write ``out`` or return the arrays.

    Args:
        encoder: a :class:`LoadedEncoder` or any module mapping float [B,C,H,W] in [0,1] to [B,D].
        indices: dataset indices (default: all images), stored as ``index``.
        member: 1/0/-1 per image (default all -1, unknown).
        views: K, views per image.
        augmentation: a name for ``lpla.ssl.augment.create_augmentation``, a module
            (float [B,C,H,W] -> same, randomness from torch's global RNG), or None for the
            encoder's own training augmentation (``weak`` when unknown).
        clean_view0: view 0 is the un-augmented image.
        seed: views are a function of (seed, batch_size); see the module docstring.
        dtype: storage dtype, ``float32`` or ``float16``.
        out: path of the ``.npz`` to stream into; None returns an in-memory EmbeddingsFile.
        resume: continue an interrupted run of the same call from ``<out>.partial/``.
        amp: bfloat16 autocast on CUDA (faster; bfloat16 keeps ~3 significant digits).
        compile_model: ``torch.compile`` the encoder (pays off only for long runs on a GPU).
    """
    if views < 1:
        raise LplaError(f"views must be >= 1, got {views}")
    if batch_size < 1:
        raise LplaError(f"batch size must be >= 1, got {batch_size}")
    if dtype not in STORAGE_DTYPES:
        raise LplaError(f"unknown dtype {dtype!r}; use one of {', '.join(STORAGE_DTYPES)}")
    if resume and out is None:
        raise LplaError("resume needs an output file (out=...)")
    enc = _as_loaded(encoder)
    idx = _as_indices(indices, dataset)
    member_arr = np.full(len(idx), -1, np.int8) if member is None else np.asarray(member)
    plan = _plan(enc, dataset, augmentation, views, clean_view0, device, dtype, amp)
    dim = probe_encoder(plan.module, dataset.info.image_shape, str(plan.device), name=enc.name)
    if plan.channels_last:
        plan.channels_last = _channels_last_works(plan.module, dataset, plan.device)
    if compile_model:
        plan.module = torch.compile(plan.module, dynamic=True)  # type: ignore[assignment]
    full_meta = _meta(enc, dataset, plan, dim, seed, batch_size, dtype, len(idx))
    full_meta.update(meta or {})

    if out is None:
        member_arr, idx = validate_member_index(member_arr, idx, len(idx), "embed_dataset")
        sink = _ArraySink(len(idx), views, dim, dtype)
        _run(plan, dataset, idx, sink, seed, batch_size, progress)
        return EmbeddingsFile(sink.array, member_arr, idx, full_meta, None)

    with EmbeddingsWriter(
        out, len(idx), views, dim, dtype, member_arr, idx, full_meta, resume=resume
    ) as writer:
        _run(plan, dataset, idx, writer, seed, batch_size, progress)
        return writer.close()


# ------------------------------------------------------------------------------------ set-up


def _as_loaded(encoder: LoadedEncoder | nn.Module) -> LoadedEncoder:
    if isinstance(encoder, LoadedEncoder):
        return encoder
    if isinstance(encoder, nn.Module):
        return LoadedEncoder(module=encoder, name=type(encoder).__name__, kind="module")
    raise LplaError(f"encoder must be an nn.Module or LoadedEncoder, got {type(encoder).__name__}")


def _as_indices(indices: np.ndarray | None, dataset: ImageDataset) -> np.ndarray:
    if indices is None:
        return np.arange(len(dataset), dtype=np.int64)
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise LplaError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
        raise LplaError(
            f"indices {int(idx.min())}..{int(idx.max())} out of range for "
            f"{dataset.info.name}/{dataset.info.split} ({len(dataset)} images)"
        )
    return idx.astype(np.int64, copy=False)


def _plan(
    enc: LoadedEncoder,
    dataset: ImageDataset,
    augmentation: str | nn.Module | None,
    views: int,
    clean_view0: bool,
    device: str,
    dtype: str,
    amp: bool,
) -> QueryPlan:
    dev = torch.device(resolve_device(device))
    shape = tuple(dataset.info.image_shape)
    if enc.image_shape is not None and tuple(enc.image_shape) != shape:
        raise LplaError(
            f"encoder {enc.name} expects images {tuple(enc.image_shape)} but "
            f"{dataset.info.name} gives {shape}",
            hint="load the dataset at the encoder's image size (--image-shape C,H,W)",
        )
    module = enc.module.to(dev)
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):  # exported GraphModules refuse eval()
        pass
    aug_module, aug_name = _resolve_augmentation(augmentation, enc, shape)  # type: ignore[arg-type]
    if aug_module is not None:
        aug_module = aug_module.to(dev)
    cuda = dev.type == "cuda"
    channels_last = cuda and any(isinstance(m, nn.Conv2d) for m in module.modules())
    return QueryPlan(
        module=module,
        augmentation=aug_module,
        augmentation_name=aug_name,
        views=views,
        clean_view0=clean_view0,
        device=dev,
        storage_dtype=torch.float16 if dtype == "float16" else torch.float32,
        amp=amp and cuda,
        channels_last=channels_last,
        forward_rows=None if cuda else CPU_FORWARD_ROWS,
    )


def _resolve_augmentation(
    augmentation: str | nn.Module | None,
    enc: LoadedEncoder,
    image_shape: tuple[int, int, int],
) -> tuple[nn.Module | None, str]:
    """(module or None for no augmentation, the name recorded in meta)."""
    if isinstance(augmentation, nn.Module):
        return augmentation, getattr(augmentation, "name", None) or type(augmentation).__name__
    if augmentation is None:  # the encoder's exact training recipe, overrides included
        from lpla.encoders import training_augmentation

        own = training_augmentation(enc)
        if isinstance(own, nn.Module):
            return own, str(getattr(own, "name", "training"))
    name = augmentation if augmentation is not None else (enc.augmentation or "weak")
    if name == "none":
        return None, "none"
    from lpla.ssl.augment import create_augmentation

    return create_augmentation(name, image_shape), name


def _channels_last_works(module: nn.Module, dataset: ImageDataset, device: torch.device) -> bool:
    """channels_last speeds up convolutions on GPUs, but a model that calls ``.view`` on its
    input breaks with it; try once and fall back."""
    x = torch.rand((2, *dataset.info.image_shape), device=device)
    try:
        with torch.inference_mode():
            module.to(memory_format=torch.channels_last)
            module(x.contiguous(memory_format=torch.channels_last))
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        try:
            module.to(memory_format=torch.contiguous_format)
        except (RuntimeError, TypeError, NotImplementedError):
            pass
        return False


def _meta(
    enc: LoadedEncoder,
    dataset: ImageDataset,
    plan: QueryPlan,
    dim: int,
    seed: int,
    batch_size: int,
    dtype: str,
    n: int,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "encoder": enc.name,
        "encoder_kind": enc.kind,
        "encoder_fingerprint": module_fingerprint(enc.module),
        "layer": enc.layer,
        "dataset": dataset.info.name,
        "split": dataset.info.split,
        "image_shape": list(dataset.info.image_shape),
        "num_images": n,
        "views": plan.views,
        "dim": dim,
        "augmentation": plan.augmentation_name,
        "clean_view0": plan.clean_view0,
        "seed": seed,
        "batch_size": batch_size,
        "view_order": "views depend on (seed, batch_size); view 0 clean when clean_view0",
        "dtype": dtype,
        "amp": plan.amp,
        "lpla_version": lpla.__version__,
    }


# ---------------------------------------------------------------------------------- the loop


def _run(
    plan: QueryPlan,
    dataset: ImageDataset,
    indices: np.ndarray,
    sink: EmbeddingsWriter | _ArraySink,
    seed: int,
    batch_size: int,
    progress: bool,
) -> None:
    """Fill ``sink`` from its first missing row; batches are fixed by ``batch_size``."""
    n = len(indices)
    start_row = sink.rows_done
    if start_row % batch_size and start_row < n:
        raise LplaError(
            f"cannot resume: {start_row} rows done is not a whole number of batches of "
            f"{batch_size}; use the original --batch-size"
        )
    first_batch = start_row // batch_size
    batches = dataset.iter_batches(indices[start_row:], batch_size)
    if plan.device.type == "cuda":
        batches = _prefetch(batches, pin=True)
    devices = [plan.device.index or 0] if plan.device.type == "cuda" else []
    with _ProgressBar(progress, n, start_row, dataset.info.name) as advance:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            for b, (_, images) in enumerate(batches, start=first_batch):
                torch.manual_seed(batch_seed(seed, b))
                rows = embed_batch(plan, images)
                sink.write(rows.numpy())
                advance(images.shape[0])


def embed_batch(plan: QueryPlan, images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,C,H,W] -> [B,K,D] on the CPU in the storage dtype; the caller seeds the RNG."""
    x = images.to(plan.device, non_blocking=True).float().div_(255.0)
    b = x.shape[0]
    rows = x.repeat(plan.views, 1, 1, 1)  # view-major: row v*B + i is view v of image i
    if plan.augmentation is not None:
        first = b if plan.clean_view0 else 0
        if rows.shape[0] > first:
            augmented = plan.augmentation(rows[first:])
            if not isinstance(augmented, torch.Tensor) or augmented.shape != rows[first:].shape:
                raise LplaError(
                    "the augmentation must map float [B,C,H,W] to a tensor of the same shape"
                )
            rows[first:] = augmented
    if plan.channels_last:
        rows = rows.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=plan.amp):
        step = plan.forward_rows
        if step and rows.shape[0] > step:
            z = torch.cat([plan.module(chunk) for chunk in rows.split(step)])
        else:
            z = plan.module(rows)
    z = z.to(plan.storage_dtype)
    out = z.reshape(plan.views, b, -1).transpose(0, 1)
    return out.to("cpu").contiguous()


def _prefetch(
    batches: Iterator[tuple[np.ndarray, torch.Tensor]], *, pin: bool, depth: int = 2
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Load (and pin) the next batches in a thread while the GPU works on the current one."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for idx, images in batches:
                if stop.is_set():
                    return
                q.put((idx, images.pin_memory() if pin else images))
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():  # unblock a worker waiting on a full queue
            q.get_nowait()


class _ProgressBar:
    """A rich progress bar on stderr (or nothing); yields ``advance(n_images)``."""

    def __init__(self, enabled: bool, total: int, done: int, label: str) -> None:
        self.enabled = enabled
        self.total, self.done, self.label = total, done, label
        self._progress: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("embed {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress.__enter__()
        task = self._progress.add_task(self.label, total=self.total, completed=self.done)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
