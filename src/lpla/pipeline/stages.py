"""A run directory's cache of finished stages (``stages.json``), keyed by a hash of their inputs.

A stage is skipped when it finished with the same key and its outputs still exist, so a re-run
after a crash, or with other attacks, never retrains or re-queries. Keys hold no paths, so a
moved or copied run directory stays cached.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lpla.io import read_json, write_json_atomic

T = TypeVar("T")

__all__ = ["StageCache", "Timings", "digest"]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """Which stages of one run directory are done."""

    def __init__(self, out: Path, log: Callable[[str], None] = print) -> None:
        self.out = out
        self.path = out / "stages.json"
        self.log = log
        self.done: dict[str, str] = read_json(self.path) if self.path.exists() else {}

    def run(self, name: str, key: Any, outputs: list[Path], fn: Callable[[], None]) -> bool:
        """Run ``fn`` unless ``name`` was completed with the same key and its outputs exist."""
        key_digest = digest(key)
        if self.done.get(name) == key_digest and all(p.exists() for p in outputs):
            self.log(f"[cached] {name}")
            return False
        self.log(f"[run] {name}")
        fn()
        self.done[name] = key_digest
        write_json_atomic(self.path, self.done)
        return True


class Timings(dict[str, float]):
    """Wall-clock seconds per stage of a run, as results.json's ``timing_s`` records them."""

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, record how long it took under ``name``, return its result."""
        t0 = time.perf_counter()
        result = fn()
        self[name] = round(time.perf_counter() - t0, 2)
        return result
