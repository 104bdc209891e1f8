"""`lpla utility`: linear-probe and kNN accuracy of an encoder's frozen features."""

from __future__ import annotations

from pathlib import Path

import typer

from lpla.cli._common import user_errors
from lpla.errors import LplaError


@user_errors
def utility_command(
    encoder: str = typer.Option(
        ...,
        help="checkpoint directory from lpla train (or any encoder spec lpla.encoders understands)",
    ),
    dataset: str | None = typer.Option(None, help="dataset (default: the encoder's own)"),
    data_root: str | None = typer.Option(None, help="dataset directory"),
    image_size: int | None = typer.Option(None, help="resize images to N x N"),
    layer: str = typer.Option("backbone", help="backbone or projection"),
    train_limit: int = typer.Option(10000, help="probe-train images (seeded random subset)"),
    test_limit: int | None = typer.Option(None, help="test images (default: all)"),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels", help="also probe raw pixels"),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    seed: int = typer.Option(0),
    threads: int | None = typer.Option(None, help="torch CPU threads"),
    out: Path | None = typer.Option(None, help="utility.json path (default: ENCODER/utility.json)"),
) -> None:
    """Print and save the linear-probe and weighted-kNN accuracy of ENCODER's features."""
    from lpla.data.registry import create_dataset
    from lpla.io import write_json_atomic
    from lpla.runtime import resolve_device, set_threads
    from lpla.utility import evaluate_utility

    set_threads(threads)
    dev = resolve_device(device)
    enc_path = Path(encoder)
    meta: dict = {}
    if (enc_path / "checkpoint.json").is_file():
        from lpla.ssl.checkpoint import load_encoder

        module, meta = load_encoder(enc_path, layer=layer, device=dev)
        config = meta.get("config", {})
        dataset = dataset or meta.get("dataset")
        data_root = data_root or config.get("data_root")
        image_size = image_size or config.get("image_size")
        default_out = enc_path / "utility.json"
    else:
        from lpla.encoders import load_any_encoder

        module = load_any_encoder(encoder, device=dev, layer=layer).module
        default_out = Path("utility.json")
    if dataset is None:
        raise LplaError(f"{encoder} does not say which dataset it was trained on; pass --dataset")
    train_ds = create_dataset(dataset, "train", root=data_root, image_size=image_size)
    test_ds = create_dataset(dataset, "test", root=data_root, image_size=image_size)
    result = evaluate_utility(
        module,
        train_ds,
        test_ds,
        train_limit=train_limit,
        test_limit=test_limit,
        batch_size=batch_size,
        device=dev,
        seed=seed,
        pixel_baseline=pixels,
    )
    result.update({"encoder": str(encoder), "layer": layer, "dataset": dataset})
    target = out or default_out
    write_json_atomic(target, result)
    for key in (
        "linear_probe_acc",
        "knn_acc",
        "knn_acc_k200",
        "linear_probe_acc_pixels",
        "knn_acc_pixels",
        "chance",
    ):
        if result.get(key) is not None:
            typer.echo(f"{key}: {result[key]:.4f}")
    typer.echo(f"written: {target}")


def register(app: typer.Typer) -> None:
    app.command("utility")(utility_command)
