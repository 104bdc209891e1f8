"""Query a set of encoders on the images of each role: the one way answers are made.

An :class:`EncoderPlan` names an encoder (an lpla checkpoint) and, per role, the images to ask it
about: ``candidates`` (members and non-members, flagged) and ``reference`` (population images no
encoder trained on). :func:`query_encoders` embeds every (encoder, role) with K views through the
streaming engine into ``<out>/<encoder>_<role>.npz`` and, for a target/shadow pair on one dataset,
adds difficulty-calibration baselines: each encoder queried on the other's candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpla.data.splits import MembershipSplit, labelled
from lpla.embeddings import EmbeddingsFile, open_embeddings
from lpla.errors import LplaError
from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.settings import QuerySettings
from lpla.pipeline.stages import StageCache
from lpla.ssl.checkpoint import Checkpoint

__all__ = ["EncoderPlan", "plan_checkpoint", "plan_split", "query_encoders"]

Images = tuple[np.ndarray, np.ndarray]  # dataset indices, member flags (1/0/-1)


@dataclass
class EncoderPlan:
    """One encoder and the images to query it on, by role (dataset indices + member flags)."""

    name: str
    checkpoint: Checkpoint
    dataset: str
    data_root: str | None = None
    images: dict[str, Images] = field(default_factory=dict)

    def trained_on(self) -> np.ndarray:
        """The indices of this encoder's members among its candidates."""
        idx, flag = self.images[CANDIDATES]
        return np.asarray(idx)[np.asarray(flag) == 1]


def plan_split(
    name: str,
    checkpoint: Checkpoint,
    split: MembershipSplit,
    prefix: str,
    *,
    data_root: str | None = None,
) -> EncoderPlan:
    """Candidates = the split's ``{prefix}_member`` + ``{prefix}_nonmember``; its reference set."""
    members, nonmembers = split.indices(f"{prefix}_member"), split.indices(f"{prefix}_nonmember")
    if len(members) == 0 or len(nonmembers) == 0:
        raise LplaError(
            f"{checkpoint.path}: its split has no {prefix} members or non-members to query"
        )
    images = {CANDIDATES: labelled(members, nonmembers)}
    ref = split.indices("reference")
    if len(ref):
        images["reference"] = (ref, np.zeros(len(ref), np.int8))
    return EncoderPlan(name, checkpoint, split.dataset, data_root, images)


def plan_checkpoint(name: str, path: str | Path, data_root: str | None = None) -> EncoderPlan:
    """The plan a checkpoint describes itself: its own split, as a target or as a shadow.

    A target is queried on its members, held-out non-members and the reference set; a shadow on
    its own members and non-members; one shadow of a paired-halves design on the whole population,
    IN where its row of the membership matrix says so.
    """
    ckpt = Checkpoint.open(path)
    config = ckpt.config()
    split = ckpt.split()
    if split is None:
        raise LplaError(
            f"{ckpt.path} has no split.json, so the images it was trained on are unknown; "
            "audit its embeddings with --target-embeddings instead"
        )
    root = data_root or config.get("data_root")
    dataset = str(config.get("dataset", split.dataset))
    if config.get("shadow_index") is not None:
        halves = ckpt.paired_halves()
        row = halves.membership[int(config["shadow_index"])]
        plan = plan_split(name, ckpt, split, "shadow", data_root=root)
        plan.images[CANDIDATES] = labelled(halves.index[row], halves.index[~row])
    else:
        prefix = "shadow" if config.get("role") == "shadow" else "target"
        plan = plan_split(name, ckpt, split, prefix, data_root=root)
    plan.dataset = dataset
    return plan


def query_encoders(
    plans: Sequence[EncoderPlan],
    settings: QuerySettings,
    out_dir: Path,
    *,
    cache: StageCache | None = None,
    baselines: bool = True,
    progress: bool = False,
) -> list[EncoderAnswers]:
    """Every plan's answers, written to ``out_dir``; cached stages are skipped.

    With ``baselines`` and exactly two encoders on one dataset that each have a reference set and
    never trained on the other's candidates, each is also queried on the other's candidates
    (``baseline``) and gets the other's reference answers (``baseline_reference``): the per-image
    difficulty calibration of ``lpla-diff``, at no extra training.
    """
    settings.validate()
    answers = []
    for plan in plans:
        files = {
            role: _embed(plan, plan, role, idx, flag, settings, out_dir, cache, progress)
            for role, (idx, flag) in plan.images.items()
        }
        answers.append(EncoderAnswers(plan.name, files))
    if baselines and _cross_queryable(plans, answers):
        for own, other, own_ans, other_ans in (
            (plans[0], plans[1], answers[0], answers[1]),
            (plans[1], plans[0], answers[1], answers[0]),
        ):
            idx, flag = own.images[CANDIDATES]
            own_ans.add(
                "baseline",
                _embed(
                    other,
                    own,
                    f"on_{own.name}_candidates",
                    idx,
                    flag,
                    settings,
                    out_dir,
                    cache,
                    progress,
                ),
            )
            assert other_ans.reference is not None
            own_ans.add("baseline_reference", other_ans.reference)
    return answers


def _cross_queryable(plans: Sequence[EncoderPlan], answers: list[EncoderAnswers]) -> bool:
    if len(plans) != 2 or plans[0].dataset != plans[1].dataset:
        return False
    if any(a.reference is None for a in answers):
        return False
    a, b = plans
    # a baseline must never have seen the images it calibrates
    return not (
        np.intersect1d(a.trained_on(), b.images[CANDIDATES][0]).size
        or np.intersect1d(b.trained_on(), a.images[CANDIDATES][0]).size
    )


def _embed(
    encoder: EncoderPlan,
    images_of: EncoderPlan,
    role: str,
    indices: np.ndarray,
    member: np.ndarray,
    settings: QuerySettings,
    out_dir: Path,
    cache: StageCache | None,
    progress: bool,
) -> EmbeddingsFile:
    """``encoder`` on ``indices`` of ``images_of``'s dataset, saved as ``<encoder>_<role>.npz``."""
    stem = f"{encoder.name}_{role}"
    out_file = out_dir / f"{stem}.npz"

    def run() -> None:
        from lpla.data.registry import create_dataset
        from lpla.encoders import load_any_encoder, training_augmentation
        from lpla.query import embed_dataset
        from lpla.runtime import resolve_device

        device = resolve_device(settings.device)
        enc = load_any_encoder(str(encoder.checkpoint.path), device=device, layer=settings.layer)
        ds = create_dataset(images_of.dataset, split="train", root=images_of.data_root)
        embed_dataset(
            enc,
            ds,
            np.asarray(indices, np.int64),
            member=np.asarray(member, np.int8),
            views=settings.views,
            augmentation=settings.augmentation or training_augmentation(enc),
            clean_view0=settings.clean_view0,
            seed=settings.seed,
            batch_size=settings.batch_size,
            device=device,
            dtype=settings.dtype,
            out=out_file,
            progress=progress,
            meta={"role": stem},
        )

    if cache is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        run()
    else:
        key = {
            "encoder": encoder.checkpoint.meta().get("split_fingerprint"),
            "weights": encoder.checkpoint.weights_digest(),
            "dataset": images_of.dataset,
            "indices": np.asarray(indices).tolist(),
            "member": np.asarray(member).tolist(),
            "query": settings.cache_key(),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        cache.run(f"embed_{stem}", key, [out_file], run)
    return open_embeddings(out_file)
