"""Many shadow encoders as independent jobs, merged into one membership matrix.

``lpla train --shadow-index i --num-shadows M`` trains shadow i of a paired-halves design (any job
runner can fan these out: a Slurm array, Ray, plain shell loops). Every job derives the same
design from the split and the seed and saves it beside its weights; :func:`merge_shadows` checks
that the finished jobs agree and writes one boolean (encoders x images) matrix with the
directory of each row, which `lpla attack --shadow ...` and LiRA-style attacks consume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lpla.data.splits import PairedHalves
from lpla.errors import LplaError
from lpla.io import atomic_path, read_json


def merge_shadows(dirs: list[Path], out: Path) -> dict[str, Any]:
    """Merge finished paired-halves shadow jobs into ``out`` (.npz); returns a summary."""
    from lpla.ssl.checkpoint import Checkpoint

    if not dirs:
        raise LplaError("give at least one shadow directory")
    design: PairedHalves | None = None
    rows: dict[int, str] = {}
    unfinished = []
    for d in dirs:
        checkpoint = Checkpoint(Path(d))
        ckpt = read_json(checkpoint.meta_file, what="checkpoint metadata")
        cfg = ckpt.get("config", {})
        if cfg.get("shadow_index") is None:
            raise LplaError(f"{d} is not a paired-halves shadow (trained without --shadow-index)")
        if not ckpt.get("finished", False):
            unfinished.append(str(d))
            continue
        halves = checkpoint.paired_halves()
        if design is None:
            design = halves
        elif not (
            np.array_equal(design.index, halves.index)
            and np.array_equal(design.membership, halves.membership)
        ):
            raise LplaError(
                f"{d} was trained on another paired-halves design (other split or seed)"
            )
        i = int(cfg["shadow_index"])
        if i in rows:
            raise LplaError(f"shadow index {i} appears twice: {rows[i]} and {d}")
        rows[i] = str(d)
    if design is None:
        raise LplaError("none of the shadow jobs has finished yet: " + ", ".join(unfinished))
    order = sorted(rows)
    with atomic_path(out) as tmp:
        np.savez(
            tmp,
            index=design.index,
            membership=design.membership[order],
            shadow_index=np.asarray(order, dtype=np.int64),
            shadow_dirs=np.asarray([rows[i] for i in order]),
        )
    return {
        "finished": len(order),
        "of": design.num_shadows,
        "unfinished": unfinished,
        "missing": sorted(set(range(design.num_shadows)) - set(order)),
        "out": str(out),
    }
