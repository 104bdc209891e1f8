"""``train_encoder(cfg)``: the SSL training loop, readable top to bottom (nanoGPT style).

Members come from a :class:`~lpla.data.splits.MembershipSplit` (target or shadow role, or one
shadow of a paired-halves design) and are held as ``uint8`` tensors; each step takes a slice of a
per-epoch permutation drawn from a seeded generator and augments it on the device. The torch RNG
is re-seeded from (seed, step, rank) before every step, so a run interrupted anywhere and resumed
reaches bit-identical weights on the CPU, on every DDP rank. Devices, AMP, DDP (Lightning Fabric),
checkpoints and signals are all handled here, in the open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lpla.data.base import ImageDataset
from lpla.errors import LplaError
from lpla.runtime import resolve_device, seed_everything, set_threads, versions
from lpla.ssl.augment import create_augmentation
from lpla.ssl.backbones import create_backbone
from lpla.ssl.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    PAIRED_HALVES_FILE,
    SPLIT_FILE,
    STATE_FILE,
    load_model_state,
    load_train_state,
    read_meta,
    save_model,
    save_train_state,
    write_meta,
)
from lpla.ssl.config import TrainConfig
from lpla.ssl.frameworks import SSLMethod, create_framework

__all__ = ["PAIRED_HALVES_FILE", "TrainConfig", "TrainingInterrupted", "train_encoder"]


class TrainingInterrupted(LplaError):
    """SIGINT/SIGTERM arrived; the last completed step was checkpointed."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (no collisions between (1, 10) and (11, 0))."""
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & (2**63 - 1)


def training_seed(cfg: TrainConfig) -> int:
    """Target encoders use ``seed``; shadows get their own init, not the target's."""
    if cfg.role == "target":
        return cfg.seed
    return derive_seed(cfg.seed, 1, 0 if cfg.shadow_index is None else cfg.shadow_index + 1)


def epoch_permutation(num_members: int, seed: int, epoch: int) -> Tensor:
    """The order of members in ``epoch``: a function of (seed, epoch) only, so resume is exact."""
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch))
    return torch.randperm(num_members, generator=gen)


def shard_batch(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's part of a global batch (strided, equal sizes when world_size divides it)."""
    return batch[rank::world_size]


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to 0 (or constant)."""
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    cfg: TrainConfig, params: Sequence[Tensor], **options: Any
) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` (shared with lpla.ssl.ensemble, which passes
    implementation ``options`` such as ``fused``)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay, **options
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)


# ---- data --------------------------------------------------------------------------------------
def _load_split(cfg: TrainConfig, pool_size: int) -> Any:
    from lpla.data.splits import MembershipSplit, make_split

    if cfg.split is None:
        return make_split(cfg.dataset, pool_size, members=cfg.members, seed=cfg.seed)
    path = Path(cfg.split)
    if not path.is_file():
        raise LplaError(f"split file not found: {path}; create one with lpla audit or drop --split")
    split = MembershipSplit.load(path)
    if split.dataset != cfg.dataset:
        raise LplaError(
            f"split {path} is for dataset {split.dataset!r}, not {cfg.dataset!r}; "
            f"pass --dataset {split.dataset}"
        )
    if int(split.pool_size) != pool_size:
        raise LplaError(
            f"split {path} indexes a pool of {split.pool_size} images but {cfg.dataset} has "
            f"{pool_size}; check --image-size/--data-root or re-create the split"
        )
    return split


def _member_indices(cfg: TrainConfig, split: Any, out: Path, write: bool) -> np.ndarray:
    if cfg.shadow_index is not None and cfg.num_shadows is not None:
        from lpla.data.splits import make_paired_halves

        halves = make_paired_halves(split.population(), cfg.num_shadows, seed=cfg.seed)
        if write:  # every shadow job writes the same file: jobs can be merged by any one of them
            halves.save(out / PAIRED_HALVES_FILE)
        return np.asarray(halves.members_of(cfg.shadow_index), dtype=np.int64)
    role = "target_member" if cfg.role == "target" else "shadow_member"
    return np.asarray(split.indices(role), dtype=np.int64)


# ---- output directory --------------------------------------------------------------------------
def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _check_out_dir(cfg: TrainConfig, out: Path, resume: bool) -> dict[str, Any] | None:
    """Return the saved checkpoint.json to resume from, None for a fresh start, or raise."""
    if not (out / META_FILE).is_file():
        if (out / MODEL_FILE).exists():
            raise LplaError(
                f"{out} holds {MODEL_FILE} without {META_FILE}; it is not a complete lpla "
                "checkpoint: choose another --out or delete it"
            )
        return None
    meta = read_meta(out)
    saved = TrainConfig.from_dict(meta["config"], source=str(out / META_FILE))
    ours, theirs = _canonical(cfg.identity()), _canonical(saved.identity())
    if ours != theirs:
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        shown = ", ".join(f"{k}={theirs.get(k)!r} (now {ours.get(k)!r})" for k in diff[:4])
        raise LplaError(
            f"{out} already holds a run with other settings: {shown}; "
            "choose another --out, or repeat the saved settings (--resume uses them by default)"
        )
    if meta.get("finished") or resume:
        return meta
    raise LplaError(
        f"{out} holds an unfinished run of this config (epoch {meta.get('epoch')} of "
        f"{cfg.epochs}); pass --resume to continue it"
    )


# ---- signals -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _stop_on_signals(flag: dict[str, int]) -> Iterator[None]:
    """SIGINT/SIGTERM set ``flag['signum']``; the loop finishes its step and checkpoints."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        flag["signum"] = signum
        signal.signal(signum, previous[signum])  # a second signal acts at once

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---- distributed -------------------------------------------------------------------------------
def _launch_fabric(cfg: TrainConfig, device: str) -> Any:
    try:
        from lightning.fabric import Fabric
    except ImportError:
        raise LplaError("multi-device training needs lightning: pip install lpla[dist]") from None
    fabric = Fabric(
        accelerator="cpu" if device == "cpu" else "cuda",
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision="32-true",  # AMP is done below, identically with and without Fabric
    )
    fabric.launch()
    return fabric


def _parameter_digest(model: nn.Module) -> Tensor:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


def training_pool(
    cfg: TrainConfig, dataset: ImageDataset | None
) -> tuple[ImageDataset, tuple[int, ...]]:
    """The pool the members are drawn from (``cfg.dataset``'s train split unless given) and its
    image shape, which must be square."""
    if dataset is None:
        from lpla.data.registry import create_dataset

        dataset = create_dataset(
            cfg.dataset,
            "train",
            root=cfg.data_root,
            download=cfg.download,
            image_size=cfg.image_size,
        )
    image_shape = tuple(int(v) for v in dataset.info.image_shape)
    if image_shape[1] != image_shape[2]:
        raise LplaError(
            f"{cfg.dataset} images are {image_shape[1]}x{image_shape[2]}; "
            "pass --image-size N to make them square"
        )
    return dataset, image_shape


def step_schedule(cfg: TrainConfig, num_members: int, world_size: int) -> tuple[int, int, int, int]:
    """Global batch (a multiple of the processes), steps per epoch, total and warm-up steps."""
    global_batch = min(cfg.batch_size, num_members)
    global_batch -= global_batch % world_size
    if global_batch // world_size < 2:
        raise LplaError(
            f"{num_members} members over {world_size} processes leave fewer than 2 "
            "images per process and step; use more members or fewer --devices"
        )
    steps_per_epoch = num_members // global_batch
    total_steps = steps_per_epoch * cfg.epochs
    return global_batch, steps_per_epoch, total_steps, round(cfg.warmup_epochs * steps_per_epoch)


# ---- the loop ----------------------------------------------------------------------------------
def train_encoder(
    cfg: TrainConfig,
    *,
    dataset: ImageDataset | None = None,
    test_dataset: ImageDataset | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Train an SSL encoder on the members ``cfg`` selects; return the checkpoint directory.

    With ``cfg.resume`` an unfinished run in ``cfg.out`` continues where it stopped; a finished
    run with the same settings is returned as is. ``dataset``/``test_dataset`` replace the
    registry's ``cfg.dataset`` train/test splits (in-memory data; the split is still drawn from
    ``cfg.dataset``'s name and ``cfg.seed``). ``on_step(step, loss)`` is called after every
    optimizer step (for callers that report progress).
    """
    cfg.validate()
    out = Path(cfg.out)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    fabric = _launch_fabric(cfg, device) if cfg.devices * cfg.num_nodes > 1 else None
    rank, world_size = (fabric.global_rank, fabric.world_size) if fabric else (0, 1)
    if fabric is not None:
        device = str(fabric.device)
    is_main = rank == 0

    saved_meta = _check_out_dir(cfg, out, cfg.resume)
    if saved_meta is not None and saved_meta.get("finished"):
        return out  # the same run is already complete: nothing to do

    # data: the members of this encoder, as uint8 images held in memory (on the device)
    dataset, image_shape = training_pool(cfg, dataset)
    split = _load_split(cfg, len(dataset))
    if saved_meta is not None and saved_meta.get("split_fingerprint") != split.fingerprint():
        raise LplaError(
            f"the split rebuilt for {out} differs from the saved one; the dataset "
            "changed since the run started: start a new run in another --out"
        )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        split.save(out / SPLIT_FILE)
    member_idx = _member_indices(cfg, split, out, write=is_main)
    images = dataset.get_images(member_idx).to(device)
    num_members = len(member_idx)

    # model, augmentation, optimizer: all from the seed, identical on every rank
    seed = training_seed(cfg)
    seed_everything(seed)
    backbone = create_backbone(cfg.backbone, image_shape[0], image_shape[1])
    fparams = dict(cfg.framework_params)
    if cfg.temperature is not None:
        fparams["temperature"] = cfg.temperature
    model: SSLMethod = create_framework(cfg.framework, backbone, **fparams)
    aug_name = cfg.augmentation or model.augmentation
    augment = create_augmentation(
        aug_name,
        image_shape,  # type: ignore[arg-type]
        cfg.aug_strength,
        crop_scale_min=cfg.crop_scale_min,
        jitter=cfg.jitter,
    )
    num_views = cfg.num_views or model.num_views
    model.to(device)
    on_cuda = device.startswith("cuda")
    if on_cuda:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, trainable)
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    if on_cuda and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16
    use_amp = on_cuda and cfg.amp
    scaler = torch.amp.GradScaler(
        "cuda" if on_cuda else "cpu", enabled=use_amp and amp_dtype == torch.float16
    )

    # batches: a global batch per step, each rank takes its strided share
    global_batch, steps_per_epoch, total_steps, warmup_steps = step_schedule(
        cfg, num_members, world_size
    )

    counters: dict[str, Any] = {
        "step": 0,
        "epoch_loss_sum": 0.0,
        "epoch_steps": 0,
        "loss_curve": [],
        "elapsed_s": 0.0,
    }
    if saved_meta is not None:  # resume: weights, optimizer, buffers, RNG, counters
        load_model_state(out / MODEL_FILE, model)
        counters, scaler_state = load_train_state(
            out / STATE_FILE, model=model, optimizer=optimizer
        )
        if scaler_state:
            scaler.load_state_dict(scaler_state)
    train_model: nn.Module = fabric.setup_module(model) if fabric else model

    def meta(finished: bool, utility: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "seed": cfg.seed,
            "train_seed": seed,
            "epoch": counters["step"] // steps_per_epoch,
            "epochs": cfg.epochs,
            "step": counters["step"],
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "finished": finished,
            "loss_curve": counters["loss_curve"],
            "elapsed_s": round(counters["elapsed_s"], 3),
            "dataset": cfg.dataset,
            "role": cfg.role,
            "num_members": num_members,
            "shadow_index": cfg.shadow_index,
            "num_shadows": cfg.num_shadows,
            "split_file": SPLIT_FILE,
            "split_fingerprint": split.fingerprint(),
            "framework": cfg.framework,
            "framework_params": model.params,
            "backbone": cfg.backbone,
            "feature_dim": int(backbone.feature_dim),
            "image_shape": list(image_shape),
            "augmentation": aug_name,
            "augmentation_params": augment.describe(),
            "num_views": num_views,
            "batch_size": global_batch,
            "device": device,
            "amp": str(amp_dtype).removeprefix("torch.") if use_amp else None,
            "world_size": world_size,
            "versions": versions(),
            "utility": utility,
        }

    def save_checkpoint(finished: bool) -> None:
        if not is_main:
            return
        save_model(out / MODEL_FILE, model)
        save_train_state(
            out / STATE_FILE,
            model=model,
            optimizer=optimizer,
            scaler_state=scaler.state_dict(),
            counters=counters,
        )
        write_meta(out, meta(finished))  # last: its presence means the tensors are complete

    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
    stop: dict[str, int] = {}
    start = time.perf_counter() - counters["elapsed_s"]
    bar = _progress_bar(
        enabled=cfg.progress and is_main,
        total=total_steps,
        done=counters["step"],
        label=f"{cfg.framework}/{cfg.backbone}",
    )
    model.train()
    with _stop_on_signals(stop), bar as advance:
        while counters["step"] < total_steps:
            step = counters["step"]
            epoch, position = divmod(step, steps_per_epoch)
            batch = epoch_permutation(num_members, seed, epoch)[
                position * global_batch : (position + 1) * global_batch
            ]
            local = shard_batch(batch, rank, world_size).to(images.device)
            torch.manual_seed(derive_seed(seed, step, rank))  # augmentation randomness
            x = images[local].float().div_(255.0)
            views = [augment.view(v, x) for v in range(num_views)]
            if on_cuda:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_steps, warmup_steps)

            with autocast:
                loss = train_model(views)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise LplaError(
                    f"training loss became {loss_value} at step {step} (epoch "
                    f"{epoch}); lower --lr, or pass --no-amp"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            model.on_step_end(step, total_steps)

            counters["step"] = step + 1
            counters["epoch_loss_sum"] += loss_value
            counters["epoch_steps"] += 1
            counters["elapsed_s"] = time.perf_counter() - start
            if counters["step"] % steps_per_epoch == 0:  # an epoch ended
                counters["loss_curve"].append(counters["epoch_loss_sum"] / counters["epoch_steps"])
                counters["epoch_loss_sum"], counters["epoch_steps"] = 0.0, 0
                done_epochs = counters["step"] // steps_per_epoch
                if cfg.checkpoint_every and done_epochs % cfg.checkpoint_every == 0:
                    save_checkpoint(finished=False)
            advance(loss_value, counters["step"] // steps_per_epoch)
            if on_step is not None:
                on_step(step, loss_value)

            signum = stop.get("signum", 0)
            if fabric is not None:  # every rank must stop at the same step
                flag = torch.tensor([signum], device=device)
                signum = int(fabric.all_reduce(flag, reduce_op="max").item())
            if signum and counters["step"] < total_steps:
                save_checkpoint(finished=False)
                raise TrainingInterrupted(
                    f"{signal.Signals(signum).name} received: stopped after step "
                    f"{counters['step']} of {total_steps} and saved {out}; continue with "
                    f"--resume --out {out}",
                    signum,
                )

    distributed = None
    if fabric is not None:
        digests = fabric.all_gather(_parameter_digest(model).to(device)).reshape(world_size, -1)
        distributed = {
            "world_size": world_size,
            "per_rank_batch": global_batch // world_size,
            "weights_identical_across_ranks": bool((digests == digests[0]).all()),
        }
    save_checkpoint(finished=True)
    if is_main and (cfg.utility or distributed):
        final = meta(True)
        final["distributed"] = distributed
        if cfg.utility:
            final["utility"] = _utility(cfg, model.backbone, dataset, test_dataset, device)
        write_meta(out, final)
    if fabric is not None:
        fabric.barrier()
    return out


def _utility(
    cfg: TrainConfig,
    encoder: nn.Module,
    train_ds: ImageDataset,
    test_ds: ImageDataset | None,
    device: str,
) -> dict[str, Any]:
    """Linear-probe and kNN accuracy on the dataset's test split, or why it was skipped."""
    from lpla.utility import dataset_utility

    return dataset_utility(
        encoder,
        cfg.dataset,
        data_root=cfg.data_root,
        image_size=cfg.image_size,
        download=cfg.download,
        train_ds=train_ds,
        test_ds=test_ds,
        train_limit=cfg.utility_train_limit,
        device=device,
        seed=cfg.seed,
    )


@contextlib.contextmanager
def _progress_bar(
    *, enabled: bool, total: int, done: int, label: str
) -> Iterator[Callable[[float, int], None]]:
    """A rich progress bar with the running loss (on stderr; a no-op when disabled)."""
    if not enabled:
        yield lambda loss, epoch: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epoch {task.fields[epoch]} loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as prog:
        task = prog.add_task(label, total=total, completed=done, loss=float("nan"), epoch=0)

        def advance(loss: float, epoch: int) -> None:
            prog.update(task, advance=1, loss=loss, epoch=epoch)

        yield advance
