"""Reading an audit run directory back: ``results.json`` plus the optional ``norms.npz`` and
``scores.npz``, validated once here so the report code can trust what it renders."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpla.errors import LplaError

__all__ = ["RunData", "load_run"]


@dataclass
class RunData:
    """What a report needs from one run directory."""

    path: Path
    results: dict[str, Any]
    norms: dict[str, np.ndarray] | None
    scores: dict[str, np.ndarray] | None

    @property
    def attacks(self) -> dict[str, dict[str, Any]]:
        return self.results["attacks"]


def _not_a_run(run_dir: Path, why: str) -> LplaError:
    return LplaError(
        f"not an lpla run directory: {run_dir} ({why})",
        hint="give a directory written by `lpla audit --out DIR` or `lpla attack --out DIR`",
    )


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LplaError(f"{path} is unreadable ({exc}); delete it or re-run the audit") from None


def _check_norms(path: Path, norms: dict[str, np.ndarray]) -> None:
    missing = [k for k in ("p", "mean_norm", "member") if k not in norms]
    if missing:
        raise LplaError(f"{path} lacks {', '.join(missing)}; delete it or re-run the audit")
    n, n_p = norms["member"].shape[0], norms["p"].reshape(-1).shape[0]
    for key in ("mean_norm", "clean_norm"):
        if key in norms and norms[key].size != n * n_p:
            raise LplaError(f"{path}: {key} has shape {norms[key].shape}, expected [{n}, {n_p}]")
    if "view_cosine" in norms and norms["view_cosine"].reshape(-1).shape[0] != n:
        raise LplaError(f"{path}: view_cosine has {norms['view_cosine'].size} values, expected {n}")


def _check_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    if "member" not in scores:
        raise LplaError(f"{path} lacks the member array; delete it or re-run the audit")
    n = scores["member"].reshape(-1).shape[0]
    for name, arr in scores.items():
        if arr.reshape(-1).shape[0] != n:
            raise LplaError(f"{path}: {name} has {arr.size} scores but member has {n}")


def load_run(run_dir: str | Path) -> RunData:
    """Load and validate a run directory; a clear :class:`LplaError` when it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise _not_a_run(path, "no such directory")
    results_path = path / "results.json"
    if not results_path.is_file():
        raise _not_a_run(path, "no results.json")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _not_a_run(path, f"results.json is not valid JSON: {exc}") from None
    if not isinstance(results, dict) or not isinstance(results.get("attacks"), dict):
        raise _not_a_run(path, 'results.json has no "attacks" table')
    if not results["attacks"]:
        raise _not_a_run(path, 'results.json has an empty "attacks" table')
    for name, entry in results["attacks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("auc"), int | float):
            raise _not_a_run(path, f'attack {name!r} in results.json has no numeric "auc"')
    norms = _read_npz(path / "norms.npz")
    if norms is not None:
        _check_norms(path / "norms.npz", norms)
    scores = _read_npz(path / "scores.npz")
    if scores is not None:
        _check_scores(path / "scores.npz", scores)
    return RunData(path=path, results=results, norms=norms, scores=scores)
