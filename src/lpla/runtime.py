"""Process-level set-up shared by every entry point: seeds, threads, devices, versions."""

from __future__ import annotations

import os
import platform
import random
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a CPU run is repeatable."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_budget() -> int:
    """Cores this process may use: ``LPLA_THREADS`` when set, else the CPU affinity's size."""
    env = os.environ.get("LPLA_THREADS")
    return max(1, int(env) if env else len(os.sched_getaffinity(0)))


def set_threads(num_threads: int | None = None) -> int:
    """Use the free cores, not more: oversubscribed torch and BLAS threads thrash on small machines.

    ``LPLA_THREADS`` overrides; the default is the number of cores this process may use.
    """
    import torch

    num_threads = max(1, cpu_budget() if num_threads is None else num_threads)
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    # numpy/scikit-learn's BLAS pools too: two processes sharing 2 cores with 2 BLAS threads
    # each made the MLP attacks several times slower than with one thread each
    from threadpoolctl import threadpool_limits

    threadpool_limits(num_threads)
    return num_threads


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    from lpla.errors import LplaError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LplaError(
            f"device {device!r} asked for, but no CUDA GPU is visible; use --device cpu"
        )
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise LplaError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    return device


def versions() -> dict[str, Any]:
    """Library versions recorded beside every output, for reproducibility."""
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("lpla", "torch", "torchvision", "lightly", "kornia", "numpy", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
