"""Shared plumbing for the benchmarks: machine record, interleaved timing, tables, JSON out.

The machines these run on are shared and noisy, so every comparison is measured side by side in
the same process, repetitions interleaved (A, B, A, B, ...) and summarised by the median: a burst
of load from a neighbour then hits both sides instead of one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Benchmarks default to one torch thread: with neighbours on a small machine, more threads add
# noise, not speed. LPLA_THREADS overrides (recorded in the JSON).
os.environ.setdefault("LPLA_THREADS", "1")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(description: str, default_out: str, argv: Sequence[str] | None = None) -> Any:
    """``--quick`` (tiny sizes, seconds: for the smoke test) and ``--out`` (results JSON)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / default_out, help="results JSON path"
    )
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
    return parser.parse_args(argv)


def setup_threads() -> int:
    """Apply LPLA_THREADS to torch (via lpla.runtime) and return the thread count in use."""
    from lpla.runtime import set_threads

    return set_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a number is only meaningful next to: CPU, cores, threads, versions, date, command."""
    import torch

    from lpla.runtime import versions

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "lpla_threads_env": os.environ.get("LPLA_THREADS"),
        "torch_version": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "versions": versions(),
    }


def interleaved(
    variants: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each variant ``warmup`` times, then ``reps`` rounds of A, B, C, ...; seconds per run.

    The order inside a round rotates so that no variant always follows the same one.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summary(times: Sequence[float], items: float) -> dict[str, Any]:
    """Median seconds, items/s at the median, and the spread (min/max) of the runs."""
    med = median(times)
    return {
        "median_s": med,
        "min_s": float(min(times)),
        "max_s": float(max(times)),
        "runs_s": [float(t) for t in times],
        "items": items,
        "items_per_s": items / med if med > 0 else float("inf"),
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table on stdout (copied as-is into docs/performance.md)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def write_results(path: Path, results: Mapping[str, Any]) -> Path:
    from lpla.io import write_json_atomic

    write_json_atomic(path, dict(results))
    print(f"\nwrote {path}")
    return path


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Peak RSS inside a child: VmHWM, the high-water mark of this process image. (ru_maxrss would
# do on macOS, but on Linux it keeps the pre-exec peak of the forked parent, i.e. the ~0.5 GB of
# a parent that imported torch, which would hide everything the child does below that.)
CHILD_PEAK_RSS = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
"""


def run_child(code: str, payload: Mapping[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter with ``payload`` as JSON on stdin; parse the JSON
    object it prints on its last stdout line. A fresh process is the only honest way to read a
    peak RSS: ru_maxrss never goes down."""
    env = dict(os.environ)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    threads = env.get("LPLA_THREADS", "1")  # numpy-only children: cap BLAS/OpenMP the same way
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(dict(payload)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
