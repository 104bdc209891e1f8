"""Reference-encoder training: ``train_ensemble`` (M encoders batched) vs ``train_encoder`` x M.

The question of ``lpla audit --reference-models M``: how many encoder training steps per second
the machine delivers when M small encoders train with the audit's recipe (``AUDIT_RECIPE``: mlp,
SimCLR, batch 128, temperature 0.5, the weak crop/jitter; 128 members each, so one step per
epoch) on the embedded Fashion-MNIST, each with its own seed and members, for a fixed number of
steps. Both sides run the whole job, as an audit does: set-up, the loop, the intermediate and
final checkpoints (``checkpoint_every`` = 10), no utility probe. Runs are interleaved
(sequential, ensemble, sequential, ...); throughput = M x steps / wall seconds, median of the
repetitions.

Three sides: ``train_encoder`` one after another (every core's threads), one ensemble process
(every core's threads), and the audit's way: ``workers=None``, one single-threaded process per core,
each an ensemble of its share of the members.

Equal results: the largest weight difference between ensemble member 0 and its solo run, next
to the noise floor of ``train_encoder`` itself (the same run with 1 thread instead of all).

Threads: unlike the other benchmarks this one uses every core by default (the 2-core question);
``LPLA_THREADS`` overrides.

Plan: mlp at M = 8 and 32 (``--steps``, default 20), cnn-small at M = 8 (``--cnn-steps``,
default 5: a conv step costs several mlp steps here; 0 skips it).

Run: ``.venv/bin/python benchmarks/bench_references.py [--quick] [--steps N] [--sizes 8,32]
[--cnn-steps N] [--out results.json]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LPLA_THREADS", str(len(os.sched_getaffinity(0))))  # before _common

import torch
from _common import (
    RESULTS_DIR,
    interleaved,
    machine_info,
    median,
    print_table,
    setup_threads,
    write_results,
)

TARGET = 3.0  # audit's training (workers) / sequential model-steps per second, mlp, M = 8, 2 cores
DATASET = "fashion-mnist"


def parse(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_references.json")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
    parser.add_argument("--steps", type=int, default=None, help="training steps per encoder")
    parser.add_argument("--sizes", default=None, help="mlp ensemble sizes M (default 8,32)")
    parser.add_argument(
        "--cnn-steps", type=int, default=None, help="cnn-small steps at M = 8 (default 5; 0: skip)"
    )
    return parser.parse_args(argv)


def configs(root: Path, backbone: str, size: int, steps: int, members: int) -> list[Any]:
    """M audit-recipe configs that differ only in seed (so in members, init, order, views)."""
    from lpla.audit.config import AUDIT_RECIPE
    from lpla.ssl.config import TrainConfig

    recipe = {**AUDIT_RECIPE, "backbone": backbone, "epochs": steps}
    recipe["batch_size"] = min(recipe["batch_size"], members)
    return [
        TrainConfig(
            out=str(root / f"enc{i}"),
            dataset=DATASET,
            members=members,
            seed=i,
            device="cpu",
            utility=False,
            progress=False,
            **recipe,
        )
        for i in range(size)
    ]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from lpla.ssl.checkpoint import Checkpoint

    return load_file(str(Checkpoint(path).model_file))


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def loss_difference(a: Path, b: Path) -> float:
    from lpla.ssl.checkpoint import Checkpoint

    ca, cb = (Checkpoint(p).meta()["loss_curve"] for p in (a, b))
    return max(abs(x - y) / abs(y) for x, y in zip(ca, cb, strict=True))


def measure(
    backbone: str, size: int, steps: int, members: int, reps: int, work: Path, dataset: Any
) -> dict[str, Any]:
    """Sequential vs ensemble for one (backbone, M). A conv backbone is batched by force
    (``batched=True``): by default train_ensemble runs those one after another on a CPU, and
    this row is the measurement behind that rule."""
    batched = True if backbone != "mlp" else None
    from lpla.ssl.ensemble import train_ensemble
    from lpla.ssl.train import train_encoder

    runs = {"sequential": 0, "ensemble": 0, "workers": 0}
    last: dict[str, list[Path]] = {}

    def fresh(kind: str) -> list[Any]:
        runs[kind] += 1
        root = work / f"{backbone}-m{size}-{kind}-{runs[kind]}"
        return configs(root, backbone, size, steps, members)

    def sequential() -> None:
        last["sequential"] = [train_encoder(c, dataset=dataset) for c in fresh("sequential")]

    def ensemble() -> None:
        last["ensemble"] = train_ensemble(
            fresh("ensemble"), dataset=dataset, log=print, batched=batched
        )

    def workers() -> None:  # the audit's way: one single-threaded process per core
        last["workers"] = train_ensemble(
            fresh("workers"), dataset=dataset, log=print, batched=batched, workers=None
        )

    # warm-up (first kornia/vmap calls), one step each, then the timed runs
    warm = configs(work / f"{backbone}-m{size}-warm-up", backbone, 2, 1, members)
    train_encoder(warm[0], dataset=dataset)
    train_ensemble(
        [c.replace(out=c.out + "-e") for c in warm], dataset=dataset, log=print, batched=batched
    )
    times = interleaved(
        {"sequential": sequential, "ensemble": ensemble, "workers": workers}, reps=reps, warmup=0
    )
    # the noise floor of the solo run itself: member 0 again, with one thread
    solo = configs(work / f"{backbone}-m{size}-one-thread", backbone, 1, steps, members)[0]
    one_thread = train_encoder(solo.replace(threads=1), dataset=dataset)
    setup_threads()  # back to the benchmark's threads
    seq_rate = size * steps / median(times["sequential"])
    ens_rate = size * steps / median(times["ensemble"])
    work_rate = size * steps / median(times["workers"])
    return {
        "backbone": backbone,
        "ensemble_size": size,
        "batched": "forced (batched=True)" if batched else "auto",
        "steps": steps,
        "sequential_s": times["sequential"],
        "ensemble_s": times["ensemble"],
        "sequential_model_steps_per_s": seq_rate,
        "ensemble_model_steps_per_s": ens_rate,
        "ratio_ensemble_over_sequential": ens_rate / seq_rate,
        "workers_s": times["workers"],
        "workers_model_steps_per_s": work_rate,
        "ratio_workers_over_sequential": work_rate / seq_rate,
        "max_weight_diff_member0_workers": max_difference(
            last["workers"][0], last["sequential"][0]
        ),
        "max_weight_diff_member0": max_difference(last["ensemble"][0], last["sequential"][0]),
        "max_loss_curve_rel_diff_member0": loss_difference(
            last["ensemble"][0], last["sequential"][0]
        ),
        "noise_floor_max_weight_diff_threads": max_difference(one_thread, last["sequential"][0]),
    }


def main() -> None:
    args = parse()
    threads = setup_threads()
    from lpla.data.registry import create_dataset

    if args.quick:
        sizes, steps, cnn_steps, members, reps = [2], 2, 0, 32, 1
    else:  # ~3 minutes on 2 shared cores
        sizes, steps, cnn_steps, members, reps = [8, 32], 20, 5, 128, 1
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes
    steps = args.steps or steps
    cnn_steps = cnn_steps if args.cnn_steps is None else args.cnn_steps
    reps = args.reps or reps
    plan = [("mlp", size, steps) for size in sizes]
    if cnn_steps:  # conv steps cost ~5x the mlp's on a CPU: fewer of them
        plan.append(("cnn-small", 8, cnn_steps))
    dataset = create_dataset(DATASET, "train")
    machine = machine_info()  # the load average before our own runs
    results: list[dict[str, Any]] = []

    def save(complete: bool) -> None:
        """Rewritten after every row: a run cut short keeps what it measured."""
        target = next(
            (r for r in results if r["backbone"] == "mlp" and r["ensemble_size"] == 8), None
        )
        ratio = None if target is None else target["ratio_workers_over_sequential"]
        write_results(
            args.out,
            {
                "benchmark": "bench_references",
                "machine": machine,
                "config": {
                    "dataset": DATASET,
                    "members": members,
                    "steps": {f"{b}-m{m}": n for b, m, n in plan},
                    "reps": reps,
                    "recipe": "lpla.audit.config.AUDIT_RECIPE (backbone as listed)",
                    "checkpoint_every": 10,
                    "utility": False,
                },
                "complete": complete,
                "results": results,
                "target_ratio_mlp_m8": TARGET,
                "met": None if ratio is None else ratio >= TARGET,
            },
        )

    with tempfile.TemporaryDirectory(prefix="lpla-bench-refs-") as tmp:
        for backbone, size, n_steps in plan:
            results.append(measure(backbone, size, n_steps, members, reps, Path(tmp), dataset))
            save(complete=False)
    print_table(
        f"reference encoders, audit recipe (model-steps/s, {threads} torch thread(s), "
        f"median of {reps})",
        [
            "backbone",
            "M",
            "steps",
            "sequential",
            "ensemble",
            "ratio",
            "workers",
            "ratio",
            "max |dw| member 0",
            "1 vs N thr",
        ],
        [
            [
                r["backbone"],
                r["ensemble_size"],
                r["steps"],
                r["sequential_model_steps_per_s"],
                r["ensemble_model_steps_per_s"],
                r["ratio_ensemble_over_sequential"],
                r["workers_model_steps_per_s"],
                r["ratio_workers_over_sequential"],
                f"{r['max_weight_diff_member0']:.1e}",
                f"{r['noise_floor_max_weight_diff_threads']:.1e}",
            ]
            for r in results
        ],
    )
    save(complete=True)


if __name__ == "__main__":
    main()
