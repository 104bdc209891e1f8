"""Query a set of encoders on the images of each role: the one way answers are made.

An :class:`EncoderPlan` names an encoder (an :class:`EncoderRef`: an lpla checkpoint or any
encoder :func:`lpla.encoders.load_any_encoder` takes), where its images come from (an
:class:`ImageSource`: a registered dataset, or the user's image lists) and, per role, the images
to ask it about: ``candidates`` (members and non-members, flagged) and ``reference`` (population
images no encoder trained on). :func:`query_encoders` embeds every (encoder, role) with K views
through the streaming engine into ``<out>/<encoder>_<role>.npz`` and, for a target/shadow pair on
the same images, adds difficulty-calibration baselines: each encoder queried on the other's
candidates.

Three ways to plan: :func:`plan_checkpoint` (a checkpoint's own split), :func:`plan_split` (a
split's roles) and :func:`plan_images` (an encoder of the user's and their member / non-member /
reference image lists, with a seeded reference cut from the non-members when no reference list
is given: :func:`reference_cut`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpla.data.splits import MembershipSplit, labelled
from lpla.embeddings import EmbeddingsFile, open_embeddings
from lpla.errors import LplaError
from lpla.io import file_digest
from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.settings import QuerySettings
from lpla.pipeline.stages import StageCache, digest
from lpla.registry import Registry
from lpla.ssl.checkpoint import Checkpoint

if TYPE_CHECKING:
    from lpla.data.base import ImageDataset
    from lpla.encoders import LoadedEncoder

__all__ = [
    "ANSWER_QUERIES",
    "REFERENCE_MAX",
    "EncoderPlan",
    "EncoderRef",
    "ImageSource",
    "plan_checkpoint",
    "plan_images",
    "plan_split",
    "query_encoders",
    "reference_cut",
]

Images = tuple[np.ndarray, np.ndarray]  # dataset indices, member flags (1/0/-1)

#: Without a reference list, at most this many non-members become the reference set (half of
#: them when there are fewer than 2 * REFERENCE_MAX); the rest are the evaluated non-members.
REFERENCE_MAX = 1000


@dataclass(frozen=True)
class EncoderRef:
    """An encoder to query: a spec :func:`lpla.encoders.load_any_encoder` takes, and its options.

    ``spec`` is an lpla checkpoint directory, a ``.pt2`` / TorchScript file, ``module:factory``,
    ``timm:NAME`` or ``torchvision:NAME``; ``weights`` a ``.safetensors`` file for the last three;
    ``normalize`` and ``pool`` as in ``load_any_encoder``.
    """

    spec: str
    weights: str | None = None
    normalize: str | None = None
    pool: str | None = None

    @classmethod
    def of_checkpoint(cls, checkpoint: Checkpoint) -> EncoderRef:
        return cls(str(checkpoint.path))

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The lpla checkpoint this is, or None for every other kind."""
        return Checkpoint(Path(self.spec)) if Checkpoint.is_checkpoint(self.spec) else None

    def load(self, device: str, layer: str = "backbone") -> LoadedEncoder:
        from lpla.encoders import load_any_encoder

        return load_any_encoder(
            self.spec,
            self.weights,
            device=device,
            layer=layer,
            normalize=self.normalize,
            pool=self.pool,
        )

    def cache_key(self) -> dict[str, Any]:
        """What identifies the encoder's answers: its weights, by content.

        A checkpoint: its split fingerprint and weights digest (a copied run stays cached, a
        retrained one does not). A file (``.pt2``, TorchScript): its content hash. Otherwise the
        spec (a ``module:factory``'s code is not hashed), and the weights file's content hash.
        """
        ckpt = self.checkpoint
        if ckpt is not None:
            key: dict[str, Any] = {
                "encoder": ckpt.meta().get("split_fingerprint"),
                "weights": ckpt.weights_digest(),
            }
        else:
            path = Path(self.spec)
            key = {
                "encoder": {"file": file_digest(path)} if path.is_file() else {"spec": self.spec},
                "weights": file_digest(Path(self.weights)) if self.weights else None,
                "normalize": self.normalize,
            }
        if self.pool is not None:
            key["pool"] = self.pool
        return key


@dataclass(frozen=True)
class ImageSource:
    """Where a plan's images come from: a registered dataset's train split, or image lists.

    Image lists (``lists``: folders, ``.txt`` or ``.csv`` specs, see :mod:`lpla.data.lists`) are
    read as one dataset whose rows run on from one list to the next
    (:func:`lpla.data.lists.combine_image_lists`): an embeddings file's ``index`` is a row and
    ``paths[index]`` the image. They decode to ``image_size`` when given, else to the querying
    encoder's image shape when it is known (lpla checkpoints), else to the first image's.
    """

    dataset: str | None = None
    root: str | None = None
    lists: tuple[str, ...] = ()
    image_size: int | None = None
    flags: tuple[str, ...] = field(default=(), compare=False)  # the lists' names in messages

    def __post_init__(self) -> None:
        if (self.dataset is None) == (not self.lists):
            raise ValueError("an ImageSource is a dataset or image lists (exactly one)")

    def name(self) -> str:
        """The dataset name recorded in embeddings files: image lists get one of their own.

        Two files with the same name index the same rows (``overlap_notes`` relies on it), so
        the name of image lists is a digest of which lists, in which order.
        """
        if self.dataset is not None:
            return self.dataset
        return "images-" + digest([str(Path(s).resolve()) for s in self.lists])[:8]

    def open(self, image_shape: tuple[int, int, int] | None = None) -> ImageDataset:
        """The dataset, decoded for an encoder expecting ``image_shape`` (C, H, W) when known."""
        if self.dataset is not None:
            from lpla.data.registry import create_dataset

            return create_dataset(self.dataset, split="train", root=self.root)
        from lpla.data.lists import combine_image_lists

        size: int | tuple[int, int] | None = self.image_size
        channels = None
        if image_shape is not None:
            channels, h, w = (int(v) for v in image_shape)
            size = size or (h, w)
        return combine_image_lists(
            self.lists,
            image_size=size,
            channels=channels,
            flags=self.flags or None,
            name=self.name(),
        )

    def cache_key(self) -> dict[str, Any]:
        if self.dataset is not None:
            return {"dataset": self.dataset}
        ds = self.open()
        stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in getattr(ds, "paths", ())]
        return {"dataset": self.name(), "files": digest(stats), "image_size": self.image_size}

    def identities(self, indices: np.ndarray) -> np.ndarray:
        """What names the images at ``indices`` across sources: an index, or an image's path."""
        idx = np.asarray(indices, np.int64)
        if self.dataset is not None:
            return idx
        paths = self.open().paths  # type: ignore[attr-defined]
        return np.asarray([paths[int(i)] for i in idx], dtype=str)

    def comparable(self, other: ImageSource) -> bool:
        """Images of both can be compared by :meth:`identities` and fed to either encoder."""
        if self.dataset is not None or other.dataset is not None:
            return self.dataset == other.dataset
        return (
            self.image_size == other.image_size
            and self.open().info.image_shape == other.open().info.image_shape
        )


@dataclass
class EncoderPlan:
    """One encoder, where its images come from, and the images to query it on, by role."""

    name: str
    encoder: EncoderRef
    source: ImageSource
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
    source = ImageSource(dataset=split.dataset, root=data_root)
    return EncoderPlan(name, EncoderRef.of_checkpoint(checkpoint), source, images)


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
    plan.source = ImageSource(dataset=dataset, root=root)
    return plan


def reference_cut(
    n: int, seed: int, *, what: str = "--nonmembers"
) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated, reference) rows of ``n`` non-members when no reference images are given.

    A seeded random half, at most :data:`REFERENCE_MAX`, becomes the reference set (images the
    encoder did not train on, that calibrate ``lpla-ref``); the rest are evaluated. Both sorted.
    """
    if n < 2:
        raise LplaError(
            f"{what} has {n} image(s); without a reference list at least 2 are needed (half of "
            "them become the reference set); give more non-members or --reference"
        )
    size = min(n // 2, REFERENCE_MAX)
    order = np.random.default_rng(np.random.SeedSequence([seed, n])).permutation(n)
    return np.sort(order[size:]).astype(np.int64), np.sort(order[:size]).astype(np.int64)


def plan_images(
    name: str,
    encoder: EncoderRef,
    members: str | Path,
    nonmembers: str | Path,
    reference: str | Path | None = None,
    *,
    image_size: int | None = None,
    seed: int = 0,
    flags: tuple[str, str, str] = ("--members", "--nonmembers", "--reference"),
) -> EncoderPlan:
    """An encoder of the user's on their own images: member, non-member (and reference) lists.

    The lists are one :class:`ImageSource` (rows: members, then non-members, then reference
    images). Candidates are every member and every non-member not in the reference set; the
    reference set is the reference list or, without one, :func:`reference_cut` of the
    non-members (seeded by ``seed``).
    """
    specs = [str(members), str(nonmembers)] + ([str(reference)] if reference is not None else [])
    source = ImageSource(
        lists=tuple(specs), image_size=image_size, flags=tuple(flags[: len(specs)])
    )
    ds = source.open()
    (_, m0, m1), (_, n0, n1), *rest = ds.parts  # type: ignore[attr-defined]
    member_rows, nonmember_rows = np.arange(m0, m1), np.arange(n0, n1)
    if rest:
        ref_rows = np.arange(rest[0][1], rest[0][2])
    else:
        keep, cut = reference_cut(len(nonmember_rows), seed, what=flags[1])
        nonmember_rows, ref_rows = nonmember_rows[keep], nonmember_rows[cut]
    images = {
        CANDIDATES: labelled(member_rows, nonmember_rows),
        "reference": (ref_rows.astype(np.int64), np.zeros(len(ref_rows), np.int8)),
    }
    return EncoderPlan(name, encoder, source, images)


def query_encoders(
    plans: Sequence[EncoderPlan],
    settings: QuerySettings,
    out_dir: Path,
    *,
    cache: StageCache | None = None,
    baselines: bool = True,
    progress: bool = False,
    roles: Sequence[str] = (),
) -> list[EncoderAnswers]:
    """Every plan's answers, written to ``out_dir``; cached stages are skipped.

    ``roles`` names answers of their own that some attacks need (``partcrop``, from
    :func:`lpla.attacks.base.answers_needed`): each plan's candidates are queried for each of
    them too (:data:`ANSWER_QUERIES`), into ``<encoder>_<role>.npz``.

    With ``baselines`` and exactly two encoders on comparable images (one dataset, or image
    lists of one shape) that each have a reference set and never trained on the other's
    candidates, each is also queried on the other's candidates (``baseline``) and gets the
    other's reference answers (``baseline_reference``): the per-image difficulty calibration of
    ``lpla-diff``, at no extra training.
    """
    settings.validate()
    for role in roles:
        ANSWER_QUERIES.get(role)  # an unknown role fails before anything is queried
    opened = _Opened(settings)
    answers = []
    for plan in plans:
        files = {
            role: _embed(plan, plan, role, idx, flag, settings, out_dir, cache, progress, opened)
            for role, (idx, flag) in plan.images.items()
        }
        for role in roles:
            query = ANSWER_QUERIES.get(role)
            files[role] = query(plan, settings, out_dir, cache, progress, opened)
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
                    opened,
                ),
            )
            assert other_ans.reference is not None
            own_ans.add("baseline_reference", other_ans.reference)
    return answers


def _cross_queryable(plans: Sequence[EncoderPlan], answers: list[EncoderAnswers]) -> bool:
    if len(plans) != 2 or any(a.reference is None for a in answers):
        return False
    a, b = plans
    if not a.source.comparable(b.source):
        return False
    # a baseline must never have seen the images it calibrates
    a_cand, b_cand = (p.source.identities(p.images[CANDIDATES][0]) for p in plans)
    return not (
        np.intersect1d(a.source.identities(a.trained_on()), b_cand).size
        or np.intersect1d(b.source.identities(b.trained_on()), a_cand).size
    )


class _Opened:
    """Encoders and datasets opened at most once per :func:`query_encoders` call, when needed."""

    def __init__(self, settings: QuerySettings) -> None:
        self.settings = settings
        self._encoders: dict[EncoderRef, LoadedEncoder] = {}
        self._datasets: dict[tuple[ImageSource, Any], ImageDataset] = {}

    @functools.cached_property
    def device(self) -> str:
        from lpla.runtime import resolve_device

        return resolve_device(self.settings.device)

    def encoder(self, ref: EncoderRef) -> LoadedEncoder:
        if ref not in self._encoders:
            self._encoders[ref] = ref.load(self.device, self.settings.layer)
        return self._encoders[ref]

    def dataset(self, source: ImageSource, image_shape: Any) -> ImageDataset:
        key = (source, tuple(image_shape) if image_shape is not None else None)
        if key not in self._datasets:
            self._datasets[key] = source.open(image_shape)
        return self._datasets[key]


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
    opened: _Opened,
) -> EmbeddingsFile:
    """``encoder`` on ``indices`` of ``images_of``'s images, saved as ``<encoder>_<role>.npz``."""
    stem = f"{encoder.name}_{role}"
    out_file = out_dir / f"{stem}.npz"

    def run() -> None:
        from lpla.encoders import training_augmentation
        from lpla.query import embed_dataset

        enc = opened.encoder(encoder.encoder)
        ds = opened.dataset(images_of.source, enc.image_shape)
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
            device=opened.device,
            dtype=settings.dtype,
            out=out_file,
            progress=progress,
            meta={"role": stem},
        )

    return _cached(
        cache,
        stem,
        out_file,
        run,
        lambda: {
            **encoder.encoder.cache_key(),
            **images_of.source.cache_key(),
            "indices": np.asarray(indices).tolist(),
            "member": np.asarray(member).tolist(),
            "query": settings.cache_key(),
        },
    )


def _cached(
    cache: StageCache | None,
    stem: str,
    out_file: Path,
    run: Callable[[], None],
    key: Callable[[], dict[str, Any]],
) -> EmbeddingsFile:
    """Run one query (as the stage ``embed_<stem>`` when cached) and open what it wrote."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if cache is None:
        run()
    else:
        cache.run(f"embed_{stem}", key(), [out_file], run)
    return open_embeddings(out_file)


def _partcrop(
    plan: EncoderPlan,
    settings: QuerySettings,
    out_dir: Path,
    cache: StageCache | None,
    progress: bool,
    opened: _Opened,
) -> EmbeddingsFile:
    """PartCrop's membership features of ``plan``'s candidates (:mod:`lpla.partcrop`, the
    paper's recipe), saved as ``<encoder>_partcrop.npz``; crops are seeded by the query seed."""
    from lpla.partcrop import PartCropRecipe, query_partcrop

    idx, flag = (np.asarray(a) for a in plan.images[CANDIDATES])
    stem = f"{plan.name}_partcrop"
    out_file = out_dir / f"{stem}.npz"
    recipe = PartCropRecipe()

    def run() -> None:
        enc = opened.encoder(plan.encoder)
        query_partcrop(
            enc,
            opened.dataset(plan.source, enc.image_shape),
            idx.astype(np.int64),
            member=flag.astype(np.int8),
            recipe=recipe,
            seed=settings.seed,
            batch_size=settings.batch_size,
            device=opened.device,
            dtype=settings.dtype,
            out=out_file,
            progress=progress,
            meta={"role": stem},
        )

    return _cached(
        cache,
        stem,
        out_file,
        run,
        lambda: {
            **plan.encoder.cache_key(),
            **plan.source.cache_key(),
            "indices": idx.tolist(),
            "member": flag.tolist(),
            "partcrop": recipe.to_dict(),
            "query": {k: settings.cache_key()[k] for k in ("layer", "seed", "dtype")},
        },
    )


AnswerQuery = Callable[
    [EncoderPlan, QuerySettings, Path, "StageCache | None", bool, _Opened], EmbeddingsFile
]
#: The queries of their own that attacks ask for (``Attack.needs_answer``), by answer role.
ANSWER_QUERIES: Registry[AnswerQuery] = Registry("answer query")
ANSWER_QUERIES.add("partcrop", _partcrop, "crops of each candidate vs its feature map (PartCrop)")
