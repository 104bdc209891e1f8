"""Write a run: ``results.json``, ``scores.npz``, ``norms.npz`` and (for audits) ``report.html``.

Every file goes through a temporary file and a rename, and :func:`run_directory` removes an
output directory that a failed command created, so bad input never leaves a half-written run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lpla.attacks.features import p_label
from lpla.io import atomic_path, write_json_atomic
from lpla.pipeline.attacking import AttackRun
from lpla.pipeline.settings import AttackSettings, QuerySettings

__all__ = [
    "RESULTS_FORMAT",
    "current_command",
    "run_config",
    "run_directory",
    "save_norms",
    "save_scores",
    "write_run",
]

RESULTS_FORMAT = 1


@contextlib.contextmanager
def run_directory(out: Path) -> Iterator[Path]:
    """``out``, created if missing, and removed again if the block fails before it finishes.

    A directory that existed before (a cached audit being resumed) is left alone: its finished
    stages are what make the next run cheap.
    """
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise


def current_command() -> str:
    """The command line that made this run, for the report's "reproduce" line."""
    return "lpla " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def save_scores(path: Path, member: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        arrays: dict[str, Any] = {k: np.asarray(v, np.float64) for k, v in scores.items()}
        np.savez(tmp, member=member, **arrays)


def save_norms(path: Path, run: AttackRun) -> None:
    """Per-image norms and view similarity of the target, for the report's histograms."""
    stats = run.target_stats
    arrays: dict[str, Any] = {
        "p": np.asarray(stats.p, np.float64),
        "mean_norm": stats.norms.mean(axis=1),
        "member": run.target_member,
    }
    if stats.clean_view0:
        arrays["clean_norm"] = stats.norms[:, 0, :]
    if "cosine" in stats.sims and stats.sims["cosine"].shape[1]:
        arrays["view_cosine"] = stats.sims["cosine"].mean(axis=1)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def run_config(
    attack: AttackSettings, run: AttackRun, clean_view0: bool, query: QuerySettings | None = None
) -> dict[str, Any]:
    """The ``config`` entries every run records: how it attacked (and queried, if it did)."""
    config: dict[str, Any] = {
        "p": [p_label(v) for v in attack.p],
        "attacks": list(run.scores),
        "views": run.results["views"],
        "clean_view0": clean_view0,
        "seed": attack.seed,
        "n_bootstrap": attack.n_bootstrap,
    }
    if attack.attack_params:
        config["attack_params"] = attack.attack_params
    if query is not None:
        config["query"] = dataclasses.asdict(query)
    return config


def write_run(
    out: Path, run: AttackRun, extra: dict[str, Any], *, report: bool = True
) -> dict[str, Any]:
    """The run's files, results.json last but the report; returns the results document."""
    from lpla.runtime import versions

    results = (
        run.results
        | {
            "format": RESULTS_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions(),
        }
        | extra
    )
    results["lpla_version"] = results["versions"].get("lpla")
    save_scores(out / "scores.npz", run.target_member, run.scores)
    save_norms(out / "norms.npz", run)
    write_json_atomic(out / "results.json", results)
    if report:
        from lpla.report.html import build_report

        build_report(out)
    return results
