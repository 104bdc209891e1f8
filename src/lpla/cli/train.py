"""`lpla train`: train a self-supervised encoder on a membership split's members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lpla.cli._common import user_errors
from lpla.errors import LplaError


def _framework_params(items: list[str]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LplaError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            params[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LplaError(f"--param {key.strip()}: cannot read {value!r} ({first})") from None
    return params


@user_errors
def train_command(
    dataset: str | None = typer.Option(None, help="dataset name (lpla list datasets)"),
    framework: str | None = typer.Option(None, help="SSL framework (lpla list frameworks)"),
    backbone: str | None = typer.Option(None, help="backbone (lpla list backbones)"),
    members: int | None = typer.Option(None, help="number of member (training) images"),
    epochs: int | None = typer.Option(None, help="training epochs"),
    seed: int | None = typer.Option(None, help="seed of the split and of training"),
    out: Path | None = typer.Option(None, help="checkpoint directory to write"),
    config: str | None = typer.Option(
        None, help="YAML/JSON config file or shipped config name; flags override it"
    ),
    batch_size: int | None = typer.Option(None, help="global batch size (all devices)"),
    lr: float | None = typer.Option(None, help="peak learning rate"),
    weight_decay: float | None = typer.Option(None),
    optimizer: str | None = typer.Option(None, help="adam, adamw or sgd"),
    lr_schedule: str | None = typer.Option(None, help="cosine or constant"),
    warmup_epochs: float | None = typer.Option(None, help="linear LR warm-up length"),
    temperature: float | None = typer.Option(None, help="contrastive temperature"),
    param: list[str] = typer.Option(
        [], help="framework parameter KEY=VALUE (e.g. output_dim=64); repeatable"
    ),
    augmentation: str | None = typer.Option(
        None, help="training augmentation recipe (default: the framework's; 'weak' leaks more)"
    ),
    aug_strength: float | None = typer.Option(None, help="scale of crop range and jitter"),
    crop_scale_min: float | None = typer.Option(None, help="smallest random-crop area fraction"),
    jitter: float | None = typer.Option(None, help="brightness/contrast/saturation jitter"),
    num_views: int | None = typer.Option(None, help="augmented views per image and step"),
    role: str | None = typer.Option(None, help="target (target_member) or shadow"),
    split: Path | None = typer.Option(None, help="a split.json to take members from"),
    shadow_index: int | None = typer.Option(None, help="paired-halves shadow i (--num-shadows)"),
    num_shadows: int | None = typer.Option(None, help="paired-halves design size M (even)"),
    image_size: int | None = typer.Option(None, help="resize images to N x N"),
    data_root: str | None = typer.Option(None, help="dataset directory"),
    download: bool | None = typer.Option(None, "--download/--no-download"),
    device: str | None = typer.Option(None, help="auto, cpu or cuda[:N]"),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="mixed precision on CUDA"),
    amp_dtype: str | None = typer.Option(None, help="bf16 or fp16"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: LPLA_THREADS)"),
    checkpoint_every: int | None = typer.Option(None, help="checkpoint every N epochs (0: end)"),
    devices: int | None = typer.Option(None, help="processes/GPUs per node (DDP via Fabric)"),
    num_nodes: int | None = typer.Option(None, help="nodes (DDP via Fabric)"),
    strategy: str | None = typer.Option(None, help="distributed strategy (ddp)"),
    utility: bool | None = typer.Option(
        None, "--utility/--no-utility", help="linear probe + kNN at the end"
    ),
    utility_train_limit: int | None = typer.Option(None, help="probe-train images (default 10k)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run saved in --out"),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Train an SSL encoder on members of a membership split; write a resumable checkpoint."""
    from lpla.ssl.checkpoint import META_FILE, read_meta
    from lpla.ssl.config import TrainConfig, load_config_dict
    from lpla.ssl.train import train_encoder

    flags: dict[str, Any] = {
        "dataset": dataset,
        "framework": framework,
        "backbone": backbone,
        "members": members,
        "epochs": epochs,
        "seed": seed,
        "out": str(out) if out else None,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "lr_schedule": lr_schedule,
        "warmup_epochs": warmup_epochs,
        "temperature": temperature,
        "augmentation": augmentation,
        "aug_strength": aug_strength,
        "crop_scale_min": crop_scale_min,
        "jitter": jitter,
        "num_views": num_views,
        "role": role,
        "split": str(split) if split else None,
        "shadow_index": shadow_index,
        "num_shadows": num_shadows,
        "image_size": image_size,
        "data_root": data_root,
        "download": download,
        "device": device,
        "amp": amp,
        "amp_dtype": amp_dtype,
        "threads": threads,
        "checkpoint_every": checkpoint_every,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "utility": utility,
        "utility_train_limit": utility_train_limit,
        "progress": progress,
    }
    base: dict[str, Any] = {}
    if config is not None:
        base = load_config_dict(config)
    elif resume and out is not None and (out / META_FILE).is_file():
        base = dict(read_meta(out)["config"])  # resume repeats the saved settings
    if resume and out is not None and not (out / META_FILE).is_file():
        raise LplaError(
            f"nothing to resume in {out} (no {META_FILE}); drop --resume to start a new run"
        )
    settings = {**base, **{k: v for k, v in flags.items() if v is not None}, "resume": resume}
    if param:
        settings["framework_params"] = {
            **base.get("framework_params", {}),
            **_framework_params(param),
        }
    if "out" not in settings:
        raise LplaError("give --out DIR (where the checkpoint goes)")
    cfg = TrainConfig.from_dict(settings, source=config or "command line")

    path = train_encoder(cfg)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return  # DDP: rank 0 reports
    meta = read_meta(path)
    curve = meta.get("loss_curve") or []
    typer.echo(f"encoder: {path}")
    typer.echo(
        f"epochs: {meta['epoch']}/{meta['epochs']}  members: {meta['num_members']}  "
        f"feature_dim: {meta['feature_dim']}  seconds: {meta['elapsed_s']}"
    )
    if curve:
        typer.echo(f"loss: {curve[0]:.4f} (epoch 1) -> {curve[-1]:.4f} (epoch {len(curve)})")
    util = meta.get("utility")
    if util and "linear_probe_acc" in util:
        typer.echo(
            f"utility: linear probe {util['linear_probe_acc']:.4f} "
            f"(pixels {util.get('linear_probe_acc_pixels', float('nan')):.4f}), "
            f"kNN k=20 {util['knn_acc']:.4f}, k=200 {util.get('knn_acc_k200', float('nan')):.4f}"
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
