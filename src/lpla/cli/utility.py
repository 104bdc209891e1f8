"""`lpla utility`: linear-probe and kNN accuracy of an encoder's frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lpla.cli._common import user_errors
from lpla.errors import LplaError

_ROWS = (
    ("linear probe", "linear_probe_acc", "linear_probe_acc_pixels"),
    ("kNN k=20", "knn_acc", "knn_acc_pixels"),
    ("kNN k=200", "knn_acc_k200", None),
)


@user_errors
def utility_command(
    encoder: str = typer.Option(
        ...,
        help="lpla checkpoint directory, .pt2 (torch.export), TorchScript .pt, "
        "package.module:factory, timm:NAME or torchvision:NAME",
    ),
    weights: str | None = typer.Option(
        None, help=".safetensors weights for module:factory, timm:NAME, torchvision:NAME"
    ),
    dataset: str | None = typer.Option(None, help="registered dataset (default: the encoder's)"),
    images: Path | None = typer.Option(
        None,
        help="your labelled images: an ImageFolder (FOLDER/<class>/<image>) or a CSV path,label; "
        "split into probe train/test unless --test-images is given",
    ),
    test_images: Path | None = typer.Option(
        None, help="held-out labelled images (same classes) to test the probe on"
    ),
    test_fraction: float = typer.Option(
        0.2, help="share of --images held out to test the probe (stratified, seeded)"
    ),
    data_root: str | None = typer.Option(None, help="dataset directory"),
    image_size: int | None = typer.Option(
        None, help="resize images to N x N (default: the encoder's size, else the data's)"
    ),
    layer: str = typer.Option("backbone", help="backbone or projection (lpla checkpoints)"),
    normalize: str | None = typer.Option(
        None,
        help="input normalisation: auto (timm/torchvision: the model's mean/std), imagenet, "
        "none, or MEAN/STD like 0.5,0.5,0.5/0.5,0.5,0.5",
    ),
    pool: str | None = typer.Option(None, help="feature map -> [B, D]: avg | flatten | cls"),
    train_limit: int = typer.Option(10000, help="probe-train images (seeded random subset)"),
    test_limit: int | None = typer.Option(None, help="test images (default: all)"),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels", help="also probe raw pixels"),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    seed: int = typer.Option(0, help="probe subset, --images split and probe seed"),
    threads: int | None = typer.Option(None, help="torch CPU threads"),
    out: Path | None = typer.Option(
        None, help="utility.json path (default: ENCODER/utility.json for a checkpoint, else ./)"
    ),
) -> None:
    """Print and save the linear-probe and weighted-kNN accuracy of ENCODER's features."""
    from lpla.encoders import load_any_encoder, probe_encoder
    from lpla.io import write_json_atomic
    from lpla.runtime import resolve_device, set_threads
    from lpla.utility import evaluate_utility

    if images is not None and dataset is not None:
        raise LplaError("give --dataset or --images, not both")
    if test_images is not None and images is None:
        raise LplaError("--test-images needs --images (the probe-train images)")
    set_threads(threads)
    dev = resolve_device(device)
    enc = load_any_encoder(
        encoder, weights, device=dev, layer=layer, normalize=normalize, pool=pool
    )
    train_ds, test_ds, source = _probe_data(
        enc, dataset, data_root, image_size, images, test_images, test_fraction, seed
    )
    # one dummy forward at the data's shape: a model exported for another image size fails
    # here with one line naming the shape, not with a traceback from inside its graph
    probe_encoder(enc.module, train_ds.info.image_shape, dev, name=enc.name)
    result = evaluate_utility(
        enc.module,
        train_ds,
        test_ds,
        train_limit=train_limit,
        test_limit=test_limit,
        batch_size=batch_size,
        device=dev,
        seed=seed,
        pixel_baseline=pixels,
    )
    result.update(
        {
            "encoder": str(encoder),
            "encoder_kind": enc.kind,
            "layer": layer,
            "weights": enc.meta.get("weights"),
            "normalize": enc.meta.get("normalize"),
            **source,
        }
    )
    if enc.meta.get("warning"):
        result["warning"] = enc.meta["warning"]
    checkpoint_dir = Path(encoder) if enc.kind == "checkpoint" else None
    target = out or (checkpoint_dir / "utility.json" if checkpoint_dir else Path("utility.json"))
    write_json_atomic(target, result)
    _print_table(result)
    if result.get("warning"):
        typer.echo(f"warning: {result['warning']}", err=True)
    typer.echo(f"written: {target}")


def _probe_data(
    enc: Any,
    dataset: str | None,
    data_root: str | None,
    image_size: int | None,
    images: Path | None,
    test_images: Path | None,
    test_fraction: float,
    seed: int,
) -> tuple[Any, Any, dict[str, Any]]:
    """(probe-train, probe-test, what they are) from --images or a registered dataset."""
    from lpla.data.lists import probe_images
    from lpla.data.registry import create_dataset

    channels = None
    if enc.image_shape is not None:  # the encoder's own input: resize (and convert) to it
        channels, h, w = enc.image_shape
        image_size = image_size or (h if h == w else None)
    if images is not None:
        train, test = probe_images(
            images,
            test_images,
            image_size=image_size,
            channels=channels,
            test_fraction=test_fraction,
            seed=seed,
        )
        source: dict[str, Any] = {"images": str(images)}
        if test_images is not None:
            source["test_images"] = str(test_images)
        else:
            source.update(test_fraction=test_fraction, split_seed=seed)
        return train, test, source
    info = enc.meta.get("checkpoint") or {}
    config = info.get("config") or {}
    dataset = dataset or info.get("dataset") or config.get("dataset")
    if dataset is None:
        raise LplaError(
            f"{enc.name} does not say which images to probe on; pass --dataset NAME or "
            "--images FOLDER"
        )
    root = data_root or (config.get("data_root") if enc.kind == "checkpoint" else None)
    size = image_size or (config.get("image_size") if enc.kind == "checkpoint" else None)
    train = create_dataset(dataset, "train", root=root, image_size=size)
    test = create_dataset(dataset, "test", root=root, image_size=size)
    return train, test, {"dataset": dataset}


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(key: str | None) -> str:
        value = result.get(key) if key else None
        return "" if value is None else f"{value:.4f}"

    table = Table(title="utility (top-1 accuracy)", title_justify="left")
    for col in ("read-out", "encoder", "raw pixels"):
        table.add_column(col, justify="left" if col == "read-out" else "right")
    for label, enc_key, pixel_key in _ROWS:
        if result.get(enc_key) is not None:
            table.add_row(label, fmt(enc_key), fmt(pixel_key))
    console = Console(width=None if Console().is_terminal else 100)
    console.print(table)
    console.print(
        f"chance {fmt('chance')}; {result['num_train']} train / {result['num_test']} test "
        f"images; {result['feature_dim']}-d features"
    )


def register(app: typer.Typer) -> None:
    app.command("utility")(utility_command)
