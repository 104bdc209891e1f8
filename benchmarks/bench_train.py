"""SSL training throughput: lpla's loop (``train_encoder``) vs a plain lightly training loop.

Same backbone (cnn-small), same batch (256), SimCLR (NT-Xent, SimCLRProjectionHead), Adam, same
SimCLR recipe for 1x28x28 images (crop 0.2-1, flip, brightness/contrast 0.4 at p=0.8), a fixed
number of steps, runs interleaved (ours, lightly, ours, ...); throughput is measured over the
steps after the first (warm-up) one.

- ``ours``: ``lpla.ssl.train.train_encoder`` on Fashion-MNIST members held as uint8 tensors,
  augmented in batches with kornia; the step times come from its ``on_step`` callback.
- ``lightly``: written the way lightly's examples are: a Dataset returning PIL images (as
  torchvision's FashionMNIST does), ``MultiViewTransform`` of two torchvision transforms,
  a ``torch.utils.data.DataLoader`` (shuffle, drop_last, ``num_workers`` = 0 by default: the
  machine has 2 shared cores), ``SimCLRProjectionHead`` + ``NTXentLoss``.

The phase breakdown (data, augmentation, forward, backward+step) reproduces lpla's loop step by
step with lpla's own modules (``create_backbone``, ``create_framework``, ``create_augmentation``)
because ``train_encoder`` has no per-phase hook; the lightly loop is timed the same way.

Run: ``.venv/bin/python benchmarks/bench_train.py [--quick] [--out results.json]``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
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
    write_results,
)
from torch import nn

TARGET = 1.0
DATASET = "fashion-mnist"
LR = 1e-3
TEMPERATURE = 0.5


def member_images(members: int) -> tuple[np.ndarray, Any]:
    """The uint8 member images train_encoder will use (same split), and the dataset."""
    from lpla.data.registry import create_dataset
    from lpla.data.splits import make_split

    ds = create_dataset(DATASET, "train")
    split = make_split(DATASET, len(ds), members=members, seed=0)
    idx = np.asarray(split.indices("target_member"), dtype=np.int64)
    return ds.get_images(idx).numpy(), ds


# ---- ours: the real loop ----------------------------------------------------------------------
def run_ours(members: int, batch: int, steps: int, workdir: Path) -> list[float]:
    """Run train_encoder for ``steps`` steps; return the wall-clock time of each step's end."""
    from lpla.ssl.train import TrainConfig, train_encoder

    out = Path(tempfile.mkdtemp(prefix="ours-", dir=workdir))
    stamps: list[float] = []
    cfg = TrainConfig(
        out=str(out / "run"),
        dataset=DATASET,
        framework="simclr",
        backbone="cnn-small",
        members=members,
        epochs=1,
        batch_size=batch,
        lr=LR,
        temperature=TEMPERATURE,
        device="cpu",
        utility=False,
        checkpoint_every=0,
        progress=False,
    )
    train_encoder(cfg, on_step=lambda step, loss: stamps.append(time.perf_counter()))
    assert len(stamps) == steps, (len(stamps), steps)
    return stamps


# ---- lightly: the way its examples are written ------------------------------------------------
class PILDataset(torch.utils.data.Dataset[Any]):
    """uint8 [N, 1, H, W] -> PIL image per item (like torchvision.datasets.FashionMNIST)."""

    def __init__(self, images: np.ndarray, transform: Any) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i, 0], mode="L")), 0


class LightlySimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))


def lightly_setup(images: np.ndarray, batch: int, workers: int) -> tuple[Any, Any, Any, Any]:
    from lightly.loss import NTXentLoss
    from lightly.transforms.multi_view_transform import MultiViewTransform
    from torchvision.transforms import v2

    from lpla.ssl.backbones import create_backbone

    size = images.shape[-1]
    view = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    loader = torch.utils.data.DataLoader(
        PILDataset(images, MultiViewTransform([view, view])),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=False,
    )
    backbone = create_backbone("cnn-small", images.shape[1], size)
    model = LightlySimCLR(backbone, backbone.feature_dim)
    criterion = NTXentLoss(temperature=TEMPERATURE)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    return loader, model, criterion, optimizer


def run_lightly(images: np.ndarray, batch: int, steps: int, workers: int) -> list[float]:
    loader, model, criterion, optimizer = lightly_setup(images, batch, workers)
    model.train()
    stamps: list[float] = []
    for (x0, x1), _ in loader:
        z0, z1 = model(x0), model(x1)
        loss = criterion(z0, z1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
        if len(stamps) == steps:
            break
    return stamps


def steady_rate(stamps: list[float], batch: int) -> float:
    """Images per second over the steps after the first (which pays one-off set-up)."""
    return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])


# ---- phase breakdown ----------------------------------------------------------------------------
def phases_ours(images_np: np.ndarray, batch: int, steps: int) -> dict[str, list[float]]:
    """lpla's step, phase by phase, with lpla's modules (mirrors train_encoder's loop body)."""
    from lpla.ssl.augment import create_augmentation
    from lpla.ssl.backbones import create_backbone
    from lpla.ssl.frameworks import create_framework
    from lpla.ssl.train import epoch_permutation

    torch.manual_seed(0)
    images = torch.from_numpy(images_np)
    shape = tuple(images.shape[1:])
    model = create_framework(
        "simclr", create_backbone("cnn-small", shape[0], shape[1]), temperature=TEMPERATURE
    )
    augment = create_augmentation("simclr", shape)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    out: dict[str, list[float]] = {
        "data": [],
        "augmentation": [],
        "forward": [],
        "backward_step": [],
    }
    perm = epoch_permutation(len(images), 0, 0)
    for step in range(steps):
        t0 = time.perf_counter()
        x = images[perm[step * batch : (step + 1) * batch]].float().div_(255.0)
        t1 = time.perf_counter()
        views = [augment.view(v, x) for v in range(2)]
        t2 = time.perf_counter()
        loss = model(views)
        float(loss.detach())
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_step_end(step, steps)
        t4 = time.perf_counter()
        if step:  # the first step pays one-off set-up
            for k, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                out[k].append(dt)
    return out


def phases_lightly(images: np.ndarray, batch: int, steps: int) -> dict[str, list[float]]:
    loader, model, criterion, optimizer = lightly_setup(images, batch, 0)
    model.train()
    out: dict[str, list[float]] = {"data_and_augmentation": [], "forward": [], "backward_step": []}
    it = iter(loader)
    for step in range(steps):
        t0 = time.perf_counter()
        (x0, x1), _ = next(it)
        t1 = time.perf_counter()
        loss = criterion(model(x0), model(x1))
        float(loss.detach())
        t2 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        t3 = time.perf_counter()
        if step:
            for k, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                out[k].append(dt)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "bench_train.json")
    threads = setup_threads()
    if args.quick:
        batch, steps, reps, workers = 16, 3, args.reps or 1, 0
    else:
        batch, steps, reps, workers = 256, 9, args.reps or 3, 0
    members = batch * steps  # one epoch of exactly `steps` steps (the split needs 4x members)
    images, _ = member_images(members)
    rates: dict[str, list[float]] = {"ours": [], "lightly": []}
    with tempfile.TemporaryDirectory(prefix="lpla-bench-train-") as tmp:
        work = Path(tmp)
        times = interleaved(
            {
                "ours": lambda: rates["ours"].append(
                    steady_rate(run_ours(members, batch, steps, work), batch)
                ),
                "lightly": lambda: rates["lightly"].append(
                    steady_rate(run_lightly(images, batch, steps, workers), batch)
                ),
            },
            reps=reps,
            warmup=0,
        )
    ours, light = median(rates["ours"]), median(rates["lightly"])
    ratio = ours / light
    print_table(
        f"SimCLR training, cnn-small, batch {batch}, {steps} steps/run (images/s over steps "
        f"2..{steps}; {threads} torch thread(s), median of {reps} interleaved runs)",
        ["loop", "images/s", "steps/s", "runs (images/s)"],
        [
            [
                "lpla train_encoder",
                ours,
                ours / batch,
                ", ".join(f"{r:.0f}" for r in rates["ours"]),
            ],
            [
                f"lightly example (workers={workers})",
                light,
                light / batch,
                ", ".join(f"{r:.0f}" for r in rates["lightly"]),
            ],
            [
                "ratio ours/lightly",
                ratio,
                f"target >= {TARGET}",
                "met" if ratio >= TARGET else "NOT met",
            ],
        ],
    )

    p_ours = phases_ours(images, batch, steps)
    p_light = phases_lightly(images, batch, steps)
    med_ours = {k: median(v) * 1e3 for k, v in p_ours.items()}
    med_light = {k: median(v) * 1e3 for k, v in p_light.items()}
    total_ours, total_light = sum(med_ours.values()), sum(med_light.values())
    print_table(
        "where a step's time goes (ms per step, median over steps 2..; manual perf_counter)",
        ["phase", "lpla (ms)", "lpla %", "lightly (ms)", "lightly %"],
        [
            [
                "data (index uint8 / DataLoader)",
                med_ours["data"],
                100 * med_ours["data"] / total_ours,
                med_light["data_and_augmentation"],
                100 * med_light["data_and_augmentation"] / total_light,
            ],
            [
                "augmentation (2 views)",
                med_ours["augmentation"],
                100 * med_ours["augmentation"] / total_ours,
                "(in DataLoader)",
                "",
            ],
            [
                "forward (2 views + loss)",
                med_ours["forward"],
                100 * med_ours["forward"] / total_ours,
                med_light["forward"],
                100 * med_light["forward"] / total_light,
            ],
            [
                "backward + optimizer step",
                med_ours["backward_step"],
                100 * med_ours["backward_step"] / total_ours,
                med_light["backward_step"],
                100 * med_light["backward_step"] / total_light,
            ],
            ["total", total_ours, 100.0, total_light, 100.0],
        ],
    )
    write_results(
        args.out,
        {
            "benchmark": "train",
            "machine": machine_info(),
            "threads": threads,
            "quick": bool(args.quick),
            "config": {
                "backbone": "cnn-small",
                "framework": "simclr",
                "batch_size": batch,
                "steps_per_run": steps,
                "members": members,
                "optimizer": "adam",
                "lr": LR,
                "temperature": TEMPERATURE,
                "dataset": DATASET,
                "reps": reps,
                "lightly_num_workers": workers,
                "augmentation": "simclr recipe at 28x28",
            },
            "ours_images_per_s": ours,
            "lightly_images_per_s": light,
            "ours_runs_images_per_s": rates["ours"],
            "lightly_runs_images_per_s": rates["lightly"],
            "run_wall_s": times,
            "ratio_ours_over_lightly": ratio,
            "target_ours_over_lightly": TARGET,
            "met": ratio >= TARGET,
            "phases_ms": {"ours": med_ours, "lightly": med_light},
            "phases_note": "ours' phases reproduce train_encoder's loop body with lpla's modules "
            "(train_encoder has no per-phase hook)",
        },
    )


if __name__ == "__main__":
    main()
