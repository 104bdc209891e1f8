"""Reference encoders for per-image calibration (``lpla audit --reference-models M``).

LiRA and RMIA calibrate each image on encoders that did and did not train on it. The audit's
candidates (the target's members and non-members) become one pool; a :class:`KeepMatrix` gives
each of M reference encoders a random member set of the target's size (balanced: every candidate
is IN for as many references as the others, give or take one), stored as ``references/
keep_matrix.npz``. The references are trained together as one batched ensemble
(:func:`lpla.ssl.ensemble.train_ensemble`) with the attacker's recipe (the target's, or another
framework or backbone under limited knowledge), queried on every candidate and on the reference
images (members of no encoder), and handed to the attacks as shadows: population attacks fit on
all of them, per-image attacks look each candidate up in each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpla.audit.config import AuditConfig, EncoderSpec
from lpla.audit.training import train_config, train_settings
from lpla.data.splits import KeepMatrix, MembershipSplit, make_keep_matrix
from lpla.pipeline.querying import EncoderPlan, plan_checkpoint
from lpla.pipeline.stages import StageCache
from lpla.ssl.checkpoint import Checkpoint

__all__ = ["KEEP_FILE", "REFERENCES_DIR", "keep_matrix", "plan_references", "train_references"]

REFERENCES_DIR = "references"
#: references trained per ensemble: 8 batched mlps ran 1.36x faster than one after another on 2
#: CPU cores, 32 (stacked activations out of cache) 0.93x (docs/performance.md §5)
ENSEMBLE_SIZE = 8
KEEP_FILE = "keep_matrix.npz"


def reference_name(i: int) -> str:
    return f"ref{i:02d}"


def _ckpt(out: Path, i: int) -> Checkpoint:
    return Checkpoint(out / REFERENCES_DIR / reference_name(i))


def _split_file(out: Path, i: int) -> Path:
    return out / REFERENCES_DIR / f"split_{reference_name(i)}.json"


def keep_matrix(cfg: AuditConfig, split: MembershipSplit) -> KeepMatrix:
    """The design over the target's candidates: a pure function of the split and the seed (the
    same in every ``--seeds`` replicate, like the split)."""
    members = split.indices("target_member")
    candidates = np.union1d(members, split.indices("target_nonmember"))
    return make_keep_matrix(candidates, members, num_references=cfg.reference_models, seed=cfg.seed)


def _reference_split(split: MembershipSplit, keep: KeepMatrix, i: int) -> MembershipSplit:
    """Reference ``i``'s own split: its IN candidates as shadow members, the other candidates
    as its non-members, and the audit's reference images."""
    return MembershipSplit(
        dataset=split.dataset,
        pool_size=split.pool_size,
        seed=split.seed,
        roles={
            "shadow_member": keep.members_of(i),
            "shadow_nonmember": keep.nonmembers_of(i),
            "reference": split.indices("reference"),
        },
    )


def train_references(
    cfg: AuditConfig,
    spec: EncoderSpec,
    split: MembershipSplit,
    out: Path,
    stages: StageCache,
    device: str,
) -> KeepMatrix:
    """Draw the keep matrix and train the M reference encoders (one cached stage).

    References whose directory already holds their finished run are not retrained; the others
    train together as one batched ensemble.
    """
    from lpla.ssl.ensemble import train_ensemble

    keep = keep_matrix(cfg, split)
    root = out / REFERENCES_DIR
    root.mkdir(parents=True, exist_ok=True)
    keep_path = root / KEEP_FILE
    keep.save(keep_path)
    cfgs, fingerprints = [], []
    for i in range(keep.num_references):
        ref_split = _reference_split(split, keep, i)
        ref_split.save(_split_file(out, i))
        # seeds: target + 0, population shadow + 1, reference i + 2 + i
        cfgs.append(
            train_config(
                cfg, spec, "shadow", _split_file(out, i), _ckpt(out, i).path, device, offset=2 + i
            )
        )
        fingerprints.append(ref_split.fingerprint())
    key = {
        "train": [train_settings(c) for c in cfgs],
        "splits": fingerprints,
    }
    outputs = [keep_path] + [
        f for i in range(len(cfgs)) for f in (_ckpt(out, i).model_file, _ckpt(out, i).meta_file)
    ]

    def train() -> None:
        todo = [
            c
            for c, fp in zip(cfgs, fingerprints, strict=True)
            if not Checkpoint(Path(c.out)).finished_with(train_settings(c), fp)
        ]
        if len(todo) < len(cfgs):
            stages.log(f"[reused] {len(cfgs) - len(todo)} finished reference encoder(s)")
        for start in range(0, len(todo), ENSEMBLE_SIZE):
            train_ensemble(todo[start : start + ENSEMBLE_SIZE], log=stages.log)

    stages.run("train_references", key, outputs, train)
    return keep


def plan_references(keep: KeepMatrix, out: Path) -> list[EncoderPlan]:
    """Each reference queried on every candidate (IN where its row says so) and on the audit's
    reference images, as its checkpoint's own split describes."""
    return [
        plan_checkpoint(reference_name(i), _ckpt(out, i).path) for i in range(keep.num_references)
    ]
