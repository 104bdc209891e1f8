"""Query one of our checkpoints on the images its own split manifest names.

A checkpoint directory carries its membership split, so the attacker-side images are known:
a target is queried on its members, held-out non-members and the reference set; a shadow on
its own members and non-members (``shadow_*`` roles when it was trained as a shadow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpla.data.splits import MembershipSplit, labelled
from lpla.errors import LplaError
from lpla.evaluate import EncoderAnswers
from lpla.io import read_json


def query_checkpoint(
    enc_dir: Path,
    name: str,
    out_dir: Path,
    *,
    views: int,
    seed: int,
    device: str,
    clean_view0: bool,
    augmentation: str | None = None,
    layer: str = "backbone",
    data_root: str | None = None,
) -> EncoderAnswers:
    from lpla.data.registry import create_dataset
    from lpla.embeddings import EmbeddingsFile, open_embeddings
    from lpla.encoders import load_any_encoder, training_augmentation
    from lpla.query import embed_dataset
    from lpla.runtime import resolve_device

    enc_dir = Path(enc_dir)
    ckpt = read_json(enc_dir / "checkpoint.json", what="checkpoint metadata")
    split_path = enc_dir / "split.json"
    if not split_path.is_file():
        raise LplaError(
            f"{enc_dir} has no split.json; attack its embeddings with --target-embeddings instead"
        )
    split = MembershipSplit.load(split_path)
    config = ckpt.get("config", {})
    role = config.get("role", "target")
    prefix = "shadow" if role == "shadow" else "target"
    if config.get("shadow_index") is not None:
        # One shadow of a paired-halves design: its candidates are the whole population (which
        # contains the target's candidates), IN where its row of the membership matrix says so.
        from lpla.data.splits import PairedHalves
        from lpla.ssl.train import PAIRED_HALVES_FILE

        halves = PairedHalves.load(enc_dir / PAIRED_HALVES_FILE)
        row = halves.membership[int(config["shadow_index"])]
        members, nonmembers = halves.index[row], halves.index[~row]
    else:
        members, nonmembers = (
            split.indices(f"{prefix}_member"),
            split.indices(f"{prefix}_nonmember"),
        )
    if len(members) == 0 or len(nonmembers) == 0:
        raise LplaError(f"{enc_dir}: its split has no {prefix} members or non-members to query")
    device = resolve_device(device)
    enc = load_any_encoder(str(enc_dir), device=device, layer=layer)
    ds = create_dataset(
        config.get("dataset", split.dataset),
        split="train",
        root=data_root or config.get("data_root"),
    )
    aug = augmentation or training_augmentation(enc)

    def query(indices: np.ndarray, member: np.ndarray, stem: str) -> EmbeddingsFile:
        path = embed_dataset(
            enc,
            ds,
            indices,
            member=member,
            views=views,
            augmentation=aug,
            clean_view0=clean_view0,
            seed=seed,
            device=device,
            out=out_dir / f"{name}_{stem}.npz",
            progress=True,
        )
        return open_embeddings(Path(str(path)))

    ref_idx = split.indices("reference")
    return EncoderAnswers(
        name,
        query(*labelled(members, nonmembers), "candidates"),
        query(ref_idx, np.zeros(len(ref_idx), np.int8), "reference") if len(ref_idx) else None,
    )


def add_cross_baselines(
    target_dir: Path,
    shadow_dir: Path,
    target: EncoderAnswers,
    shadow: EncoderAnswers,
    out_dir: Path,
    *,
    views: int,
    seed: int,
    device: str,
    clean_view0: bool,
) -> bool:
    """Difficulty calibration for one target and one shadow: query each on the other's candidates.

    Returns False (and changes nothing) when the two encoders were trained on different datasets
    or either has no reference set: then `lpla-diff` is simply not applicable.
    """
    from lpla.data.registry import create_dataset
    from lpla.embeddings import open_embeddings
    from lpla.encoders import load_any_encoder, training_augmentation
    from lpla.query import embed_dataset
    from lpla.runtime import resolve_device

    cfgs = [read_json(d / "checkpoint.json").get("config", {}) for d in (target_dir, shadow_dir)]
    if cfgs[0].get("dataset") != cfgs[1].get("dataset") or None in (
        target.reference,
        shadow.reference,
    ):
        return False
    device = resolve_device(device)
    ds = create_dataset(cfgs[0]["dataset"], split="train", root=cfgs[0].get("data_root"))
    for own, other_dir, other in ((target, shadow_dir, shadow), (shadow, target_dir, target)):
        enc = load_any_encoder(str(other_dir), device=device)
        path = embed_dataset(
            enc,
            ds,
            np.asarray(own.candidates.index),
            member=np.asarray(own.candidates.member),
            views=views,
            augmentation=training_augmentation(enc),
            clean_view0=clean_view0,
            seed=seed,
            device=device,
            out=out_dir / f"{other.name}_on_{own.name}_candidates.npz",
            progress=False,
        )
        own.baseline = open_embeddings(Path(str(path)))
        own.baseline_reference = other.reference
    return True
