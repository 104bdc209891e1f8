"""Audit an encoder of the user's on their own images: ``lpla audit --encoder E --members M ...``.

The user brings an encoder (any kind :func:`lpla.encoders.load_any_encoder` takes) and two image
lists: the images it was trained on (members) and images it was not (non-members); optionally a
reference list (more images it was not trained on, that calibrate the attacks). Without one, a
seeded cut of the non-members is the reference set (:func:`lpla.pipeline.querying.reference_cut`:
half, at most 1000; the rest are evaluated).

The audit is shadow-free by default: only attacks that need no shadow encoder run (``lpla-ref``,
and whatever else :func:`lpla.attacks.applicable_attacks` allows with 0 shadows), and the run's
notes say which figures would need one. ``shadow`` adds an encoder of the user's, trained like
the target on other images, with its own member / non-member lists: the shadow-fitted attacks
and thresholds then run too. Without a shadow of the user's, ``shadow_recipe`` has lpla train
K shadow encoders itself, with one of its recipes, on the user's images
(:class:`ShadowRecipe`, ``lpla audit --encoder ... --train-shadows simclr/mlp``): one on a seeded
half of the evaluated non-members, or K (even) on paired halves of every candidate; they are
lpla checkpoints in ``<out>/shadows/shadow{i}/``, reused by a re-run. Querying, attacking and
writing are the shared pipeline's (:func:`query_encoders`, :func:`run_attacks`,
:func:`write_run`); this module adds the plans of image lists, ``images.json`` (which file each
candidate row is) and utility on the user's labels.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpla.attacks import applicable_attacks
from lpla.attacks.base import answers_needed
from lpla.data.splits import MembershipSplit, labelled, make_paired_halves
from lpla.errors import LplaError
from lpla.io import write_json_atomic
from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.attacking import output_defense_entries, run_attacks
from lpla.pipeline.querying import (
    REFERENCE_MAX,
    EncoderPlan,
    EncoderRef,
    plan_images,
    query_encoders,
)
from lpla.pipeline.settings import AttackSettings, QuerySettings
from lpla.pipeline.stages import StageCache, Timings, digest
from lpla.pipeline.writing import run_config, run_directory, write_run
from lpla.ssl.checkpoint import RUN_ONLY_KEYS, Checkpoint

if TYPE_CHECKING:
    from lpla.data.base import ImageDataset
    from lpla.ssl.config import TrainConfig

__all__ = [
    "IMAGES_FILE",
    "IMAGES_FORMAT",
    "MIN_REFERENCE",
    "SHADOWS_DIR",
    "OwnEncoder",
    "OwnInputs",
    "ShadowRecipe",
    "plan_own",
    "run_own",
]

IMAGES_FILE = "images.json"
IMAGES_FORMAT = "lpla-images/1"
#: Below this many reference images, lpla-ref's calibration (mean and sd of the reference
#: norms) is noisy enough to say so in the run's notes.
MIN_REFERENCE = 100
#: Where ``shadow_recipe`` puts the shadows it trains: ``<out>/shadows/shadow{i}/``.
SHADOWS_DIR = "shadows"


@dataclass(frozen=True)
class OwnEncoder:
    """An encoder of the user's and the images it was (``members``) and was not trained on.

    ``members``, ``nonmembers``, ``reference``: image lists (a folder, an ImageFolder, a text
    file of paths or a CSV ``path[,label]``; :func:`lpla.data.lists.load_image_list`).
    """

    encoder: EncoderRef
    members: str
    nonmembers: str
    reference: str | None = None


@dataclass(frozen=True)
class ShadowRecipe:
    """Shadow encoders for lpla to train on the user's images (``--train-shadows RECIPE``).

    ``name``: the recipe as the user reads it (``simclr/mlp``); ``train``: the recipe as
    :class:`~lpla.ssl.config.TrainConfig` keyword arguments (framework, backbone, epochs,
    batch_size, lr, augmentation, ...), every default already resolved by the caller (the CLI
    takes the audit's recipe, ``lpla.audit.config.EncoderSpec``); ``count``: K shadows, 1 or
    an even number (paired halves).
    """

    name: str
    train: Mapping[str, Any] = field(hash=False)
    count: int = 1

    def validate(self) -> None:
        from lpla.ssl.config import TrainConfig

        if self.count < 1 or (self.count > 1 and self.count % 2):
            raise LplaError(
                f"--shadows must be 1 or an even number (paired halves: every image is a "
                f"member of half of the shadows), got {self.count}"
            )
        TrainConfig(**dict(self.train))  # unknown names, epochs < 1, ...: one clear error

    def describe(self) -> dict[str, Any]:
        return {"recipe": self.name, "shadows": self.count, "train": dict(self.train)}


@dataclass(frozen=True)
class OwnInputs:
    """The target encoder and, optionally, a shadow of the user's or shadows for lpla to train."""

    target: OwnEncoder
    shadow: OwnEncoder | None = None
    image_size: int | None = None  # decode every image to N x N (default: see ImageSource)
    shadow_recipe: ShadowRecipe | None = None

    def __post_init__(self) -> None:
        if self.shadow is not None and self.shadow_recipe is not None:
            raise LplaError(
                "--train-shadows trains shadow encoders for you and --shadow brings yours: "
                "give one of them"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "target": _describe(self.target),
            "shadow": _describe(self.shadow) if self.shadow is not None else None,
            "image_size": self.image_size,
            "train_shadows": (
                self.shadow_recipe.describe() if self.shadow_recipe is not None else None
            ),
        }


_SHADOW_FLAGS = ("--shadow-members", "--shadow-nonmembers", "--shadow-reference")


def plan_own(inputs: OwnInputs, seed: int) -> list[EncoderPlan]:
    """The target's plan (and the shadow's): every list is read, no pixel yet.

    Each encoder spec is recognised (not loaded) first, so a missing file fails before any
    image is read or anything written.
    """
    from lpla.encoders import detect_kind

    for own in (inputs.target, inputs.shadow):
        if own is not None:
            detect_kind(own.encoder.spec)
    plans = [
        plan_images(
            name,
            own.encoder,
            own.members,
            own.nonmembers,
            own.reference,
            image_size=inputs.image_size,
            seed=seed,
            **({"flags": _SHADOW_FLAGS} if name == "shadow" else {}),
        )
        for name, own in (("target", inputs.target), ("shadow", inputs.shadow))
        if own is not None
    ]
    for plan in plans:
        _check_both(plan)
    return plans


def run_own(
    inputs: OwnInputs,
    query: QuerySettings,
    attack: AttackSettings,
    out: Path,
    *,
    title: str = "lpla audit: your encoder",
    command: str | None = None,
    utility: bool = True,
    defenses: Sequence[str] = (),
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Query the user's encoder(s) on their images, run the attacks, write the run into ``out``.

    With ``inputs.shadow_recipe``, first train the shadows into ``out/shadows/`` (a finished
    one with the same recipe and images is reused). Writes ``results.json`` (with ``notes``
    saying which figures need a shadow), ``scores.npz``, ``norms.npz``, ``report.html``,
    ``images.json`` and ``embeddings/``; a run that fails leaves no ``out`` it created. Returns
    the results document.
    """
    query.validate()
    attack.validate()
    if defenses:
        from lpla.defenses import create_defense

        for spec in defenses:
            create_defense(spec)  # a typo fails before anything is written
    plans = plan_own(inputs, query.seed)  # every list is read before anything is written
    jobs: list[_ShadowJob] = []
    if inputs.shadow_recipe is not None:
        jobs, query = _shadow_jobs(plans[0], inputs.shadow_recipe, query, out)
    timed = Timings()

    with run_directory(out):
        stages = StageCache(out, log)
        if jobs:
            timed("train_shadows", lambda: _train_all(jobs, stages, progress))
        all_plans = [*plans, *(job.plan for job in jobs)]
        target, *shadows = timed(
            "query",
            lambda: query_encoders(
                all_plans,
                query,
                out / "embeddings",
                cache=stages,
                progress=progress,
                roles=answers_needed(attack.attacks),
            ),
        )
        run = timed("attacks", lambda: run_attacks(target, shadows, attack))
        notes = _notes(inputs, plans, jobs, shadows, run.results, query.seed)
        for note in notes:
            if note.startswith("WARNING: "):
                print(f"lpla: warning: {note.removeprefix('WARNING: ')}", file=sys.stderr)
        write_json_atomic(out / IMAGES_FILE, images_document(plans, inputs, query.seed, jobs))
        config = inputs.describe() | run_config(attack, run, target.candidates.clean_view0, query)
        if jobs:
            config["train_shadows"] |= {"dirs": [job.relative for job in jobs]}
        extra: dict[str, Any] = {
            "title": title,
            "command": command,
            "knowledge": _knowledge(inputs, bool(shadows)),
            "target": _spec_row(inputs.target, target),
            "shadow": (
                _spec_row(inputs.shadow, shadows[0])
                if inputs.shadow is not None
                else jobs[0].row(shadows[0])
                if jobs
                else None
            ),
            "config": config,
            "split": _split(all_plans, inputs, query.seed),
            "images": IMAGES_FILE,
            "notes": list(run.results["notes"]) + notes,
        }
        if jobs:
            extra["shadows"] = [job.row(ans) for job, ans in zip(jobs, shadows, strict=True)]
        if defenses:
            extra["defenses"] = timed(
                "defenses",
                lambda: output_defense_entries(
                    defenses, target, shadows, attack, run.results["attacks"]
                ),
            )
        if utility:
            extra["utility"] = timed("utility", lambda: own_utility(plans[0], query))
        extra["timing_s"] = dict(timed)
        return write_run(out, run, extra, report=True)


def _knowledge(inputs: OwnInputs, has_shadows: bool) -> str:
    recipe = inputs.shadow_recipe
    if recipe is not None:
        on = "your non-members" if recipe.count == 1 else "paired halves of your images"
        many = f"{recipe.count} " if recipe.count > 1 else ""
        return f"{many}lpla shadows ({recipe.name}) trained on {on}"
    return "your shadow encoder" if has_shadows else "none (shadow-free)"


# ------------------------------------------------------------------------------ trained shadows


@dataclass
class _ShadowJob:
    """One shadow lpla trains on the user's images: where, on which rows, with which config.

    The rows index the target's :class:`ImageSource` (the user's lists read as one dataset), so
    the shadow is queried on the same files as the target; ``split`` says which rows it trained
    on (``shadow_member``, or ``target_member`` + ``target_nonmember`` as the population of a
    paired-halves design whose row ``config.shadow_index`` it is).
    """

    index: int
    checkpoint: Checkpoint
    relative: str  # the directory, relative to the run directory (results.json, images.json)
    split: MembershipSplit
    config: TrainConfig
    dataset: ImageDataset
    plan: EncoderPlan
    design: str

    def settings(self) -> dict[str, Any]:
        """What decides the weights (paths left out: a moved run directory stays cached)."""
        return {k: v for k, v in self.config.to_dict().items() if k not in RUN_ONLY_KEYS}

    def train(self, stages: StageCache, progress: bool) -> None:
        from lpla.ssl.train import train_encoder

        ckpt, fingerprint = self.checkpoint, self.split.fingerprint()

        def run() -> None:
            if ckpt.finished_with(self.settings(), fingerprint):
                stages.log(f"[reused] train_shadow{self.index}: {ckpt.path} holds this run")
                return
            resume = self._resumable()
            if not resume and ckpt.path.exists():
                shutil.rmtree(ckpt.path)  # another recipe or other images: start afresh
            ckpt.path.mkdir(parents=True, exist_ok=True)
            self.split.save(ckpt.split_file)
            cfg = dataclasses.replace(self.config, resume=resume, progress=progress)
            train_encoder(cfg, dataset=self.dataset)

        key = {"train": self.settings(), "split": fingerprint}
        stages.run(f"train_shadow{self.index}", key, [ckpt.model_file, ckpt.meta_file], run)

    def _resumable(self) -> bool:
        """An unfinished run of exactly this config (an interrupted audit) continues."""
        ckpt = self.checkpoint
        return (
            ckpt.state_file.is_file()
            and ckpt.trained_with(self.settings(), self.split.fingerprint())
            # train_encoder compares the split file's path too
            and ckpt.config().get("split") == self.config.split
        )

    def row(self, answers: EncoderAnswers) -> dict[str, Any]:
        """The report's shadow column: what lpla trained, on which images."""
        meta = answers.candidates.meta or {}
        _, member = self.plan.images[CANDIDATES]
        member = np.asarray(member)
        return {
            "encoder": self.relative,
            "kind": meta.get("encoder_kind"),
            "recipe": f"{self.config.framework}/{self.config.backbone}, "
            f"{self.config.epochs} epochs",
            "fingerprint": meta.get("encoder_fingerprint"),
            "image_shape": meta.get("image_shape"),
            "augmentation": meta.get("augmentation"),
            "members": f"{int((member == 1).sum())} images: {self.design}",
            "nonmembers": f"{int((member == 0).sum())}: the rest of them",
            "reference": "the target's reference set",
        }


def _train_all(jobs: Sequence[_ShadowJob], stages: StageCache, progress: bool) -> None:
    for job in jobs:
        job.train(stages, progress)


def _shadow_jobs(
    target: EncoderPlan, recipe: ShadowRecipe, query: QuerySettings, out: Path
) -> tuple[list[_ShadowJob], QuerySettings]:
    """The shadows to train, and the query settings for target and shadows alike.

    The shadows train on the target's images as the target is queried on them (the same
    decoded size and channels). One shadow: a seeded random half of the evaluated non-members
    are its members, the other half its non-members (the target's members are never in it).
    K >= 2: paired halves (:func:`~lpla.data.splits.make_paired_halves`) of every candidate,
    members and non-members alike, so that each image is a member of K/2 shadows and lpla-lira
    has per-image IN and OUT statistics for the target's members as for its non-members.
    Every shadow is queried on its own members and non-members and the target's reference set.
    An exported target has no training augmentation lpla knows: both are then queried with the
    target's (``weak``), so that the shadows' statistics are those the target's are compared to.
    """
    from lpla.ssl.config import TrainConfig

    recipe.validate()
    enc = target.encoder.load("cpu", query.layer)
    ds = target.source.open(enc.image_shape)
    channels, height, width = (int(v) for v in ds.info.image_shape)
    if height != width:
        raise LplaError(
            f"--train-shadows trains lpla encoders, which take square images; yours decode to "
            f"{height}x{width}: pass --image-size N"
        )
    idx, member = (np.asarray(a) for a in target.images[CANDIDATES])
    members, pool = np.sort(idx[member == 1]), np.sort(idx[member == 0])
    reference = target.images["reference"]
    if recipe.count == 1:
        order = np.random.default_rng(np.random.SeedSequence([query.seed, len(pool), 1]))
        perm = order.permutation(len(pool))
        half = len(pool) // 2
        shadow_in, shadow_out = np.sort(pool[perm[:half]]), np.sort(pool[perm[half:]])
        roles = {"shadow_member": shadow_in, "shadow_nonmember": shadow_out}
        designs = [(shadow_in, shadow_out)]
        design = "a seeded half of the evaluated non-members"
    else:
        roles = {"target_member": members, "target_nonmember": pool}
        population = np.sort(np.concatenate([members, pool]))
        halves = make_paired_halves(population, recipe.count, seed=query.seed)
        designs = [
            (np.sort(halves.members_of(i)), np.sort(population[~halves.membership[i]]))
            for i in range(recipe.count)
        ]
        design = f"paired halves of the {len(population)} candidates, members and non-members alike"
    if min(min(len(a), len(b)) for a, b in designs) < 2:
        images = "evaluated non-members" if recipe.count == 1 else "candidates"
        raise LplaError(
            f"--train-shadows: too few {images} ({len(pool) if recipe.count == 1 else len(idx)}) "
            "to give each shadow 2 members and 2 non-members; give more non-members or a "
            "--reference list"
        )
    # The images' identity (files, sizes, mtimes, decoded shape) is in the dataset's name: a
    # finished shadow is reused only for the images it trained on.
    name = "your-images-" + digest([target.source.cache_key(), [channels, height, width]])[:8]
    split = MembershipSplit(
        dataset=name,
        pool_size=len(ds),
        seed=query.seed,
        roles=roles | {"reference": np.asarray(reference[0])},
    )
    jobs = []
    for i, (shadow_in, shadow_out) in enumerate(designs):
        relative = f"{SHADOWS_DIR}/shadow{i}"
        ckpt = Checkpoint(out / relative)
        paired = {"shadow_index": i, "num_shadows": recipe.count} if recipe.count > 1 else {}
        config = TrainConfig(
            **{
                **dict(recipe.train),
                "out": str(ckpt.path),
                "dataset": name,
                "members": max(len(shadow_in), 2),
                "seed": query.seed,
                "role": "shadow",
                "split": str(ckpt.split_file),
                "device": query.device,
                "utility": False,
                **paired,
            }
        )
        plan = EncoderPlan(
            "shadow" if recipe.count == 1 else f"shadow{i}",
            EncoderRef(str(ckpt.path)),
            target.source,
            {CANDIDATES: labelled(shadow_in, shadow_out), "reference": reference},
        )
        jobs.append(_ShadowJob(i, ckpt, relative, split, config, ds, plan, design))
    if query.augmentation is None and enc.kind != "checkpoint":
        query = dataclasses.replace(query, augmentation=enc.augmentation or "weak")
    return jobs, query


# ------------------------------------------------------------------------------ what is written


def images_document(
    plans: Sequence[EncoderPlan],
    inputs: OwnInputs,
    seed: int,
    jobs: Sequence[_ShadowJob] = (),
) -> dict[str, Any]:
    """``images.json``: which file each candidate row (of scores.npz, the embeddings) is.

    Per encoder: ``candidates`` in the order of the embeddings and of ``scores.npz`` (``row``),
    each with the ``index`` stored in the embeddings file (a row of the combined list), the
    image's ``path``, ``member`` (1/0) and ``label`` (null when unknown); ``reference_images``
    likewise without ``member`` (the images that calibrate the attacks, never scored). A shadow
    lpla trained (``jobs``) lists its candidates (``member``: whether it trained on the image)
    and names its directory and recipe; its reference images are the target's.
    """
    own = {"target": inputs.target, "shadow": inputs.shadow}
    doc: dict[str, Any] = {"format": IMAGES_FORMAT}
    for plan in plans:
        spec = own[plan.name]
        assert spec is not None
        paths, labels = _paths_labels(plan)
        idx, member = plan.images[CANDIDATES]
        doc[plan.name] = {
            "encoder": plan.encoder.spec,
            "members": spec.members,
            "nonmembers": spec.nonmembers,
            "reference": spec.reference,
            "reference_from": _reference_from(spec, seed),
            "candidates": _rows(idx, np.asarray(member), paths, labels),
            "reference_images": _rows(plan.images["reference"][0], None, paths, labels),
        }
    for job in jobs:
        paths, labels = _paths_labels(job.plan)
        idx, member = job.plan.images[CANDIDATES]
        doc[job.plan.name] = {
            "encoder": job.relative,
            "trained_by": f"lpla: {job.config.framework}/{job.config.backbone}, "
            f"{job.config.epochs} epochs",
            "members": job.design,
            "reference_from": "the target's reference_images",
            "candidates": _rows(idx, np.asarray(member), paths, labels),
        }
    return doc


def _paths_labels(plan: EncoderPlan) -> tuple[Sequence[str], np.ndarray]:
    ds = plan.source.open()
    return ds.paths, np.asarray(ds.labels)  # type: ignore[attr-defined]


def _rows(
    idx: np.ndarray, member: np.ndarray | None, paths: Sequence[str], labels: np.ndarray
) -> list[dict[str, Any]]:
    out = []
    for row, i in enumerate(np.asarray(idx, np.int64).tolist()):
        entry: dict[str, Any] = {"row": row, "index": i, "path": paths[i]}
        if member is not None:
            entry["member"] = int(member[row])
        entry["label"] = int(labels[i]) if labels[i] >= 0 else None
        out.append(entry)
    return out


def _reference_from(spec: OwnEncoder, seed: int) -> str:
    if spec.reference is not None:
        return f"the reference list {spec.reference}"
    return f"a seeded cut of the non-members (seed {seed}): half of them, at most {REFERENCE_MAX}"


def _describe(spec: OwnEncoder) -> dict[str, Any]:
    return {
        "encoder": spec.encoder.spec,
        "weights": spec.encoder.weights,
        "normalize": spec.encoder.normalize,
        "pool": spec.encoder.pool,
        "members": spec.members,
        "nonmembers": spec.nonmembers,
        "reference": spec.reference,
    }


def _spec_row(spec: OwnEncoder | None, answers: EncoderAnswers) -> dict[str, Any]:
    """The report's target/shadow table: what the encoder is and which images it was asked."""
    assert spec is not None
    meta = answers.candidates.meta or {}
    return {
        "encoder": spec.encoder.spec,
        "kind": meta.get("encoder_kind"),
        "weights": spec.encoder.weights,
        "fingerprint": meta.get("encoder_fingerprint"),
        "image_shape": meta.get("image_shape"),
        "augmentation": meta.get("augmentation"),
        "members": spec.members,
        "nonmembers": spec.nonmembers,
        "reference": spec.reference or "cut from the non-members",
    }


def _sizes(plan: EncoderPlan, prefix: str) -> dict[str, int]:
    _, member = plan.images[CANDIDATES]
    member = np.asarray(member)
    ref = plan.images["reference"][0]
    reference = "reference" if prefix == "target" else f"{prefix}_reference"
    return {
        f"{prefix}_member": int((member == 1).sum()),
        f"{prefix}_nonmember": int((member == 0).sum()),
        reference: len(ref),
    }


def _split(plans: Sequence[EncoderPlan], inputs: OwnInputs, seed: int) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    for plan in plans:
        sizes |= _sizes(plan, plan.name)
    return {
        "dataset": "your images (images.json)",
        "seed": seed,
        "sizes": sizes,
        "reference_from": _reference_from(inputs.target, seed),
    }


# ------------------------------------------------------------------------------------- checks


def _check_both(plan: EncoderPlan) -> None:
    _, member = plan.images[CANDIDATES]
    member = np.asarray(member)
    if not (member == 0).any():
        raise LplaError(
            f"{plan.name}: no non-members left to evaluate after the reference cut; give more "
            "non-members or a --reference list"
        )


def _notes(
    inputs: OwnInputs,
    plans: Sequence[EncoderPlan],
    jobs: Sequence[_ShadowJob],
    shadows: Sequence[EncoderAnswers],
    results: dict[str, Any],
    seed: int,
) -> list[str]:
    """What a reader of an own-encoder audit must know: the reference, and what needs a shadow."""
    notes = []
    for plan, spec in zip(plans, (inputs.target, inputs.shadow), strict=False):
        assert spec is not None
        sizes = _sizes(plan, plan.name)
        n_ref = len(plan.images["reference"][0])
        if spec.reference is None:
            n_eval = sizes[f"{plan.name}_nonmember"]
            notes.append(
                f"{plan.name} reference set: {n_ref} of the {n_ref + n_eval} non-members "
                f"({spec.nonmembers}), a seeded cut (seed {seed}: half, at most "
                f"{REFERENCE_MAX}); the other {n_eval} are the evaluated non-members "
                f"({IMAGES_FILE} names both)"
            )
        if n_ref < MIN_REFERENCE:
            notes.append(
                f"{plan.name}: only {n_ref} reference images; the reference calibration (mean "
                f"and sd of the reference norms) is noisy below {MIN_REFERENCE}: give more "
                "non-members or a --reference list"
            )
    ran = list(results["attacks"])
    k = int(results["views"])
    if not shadows:
        with_shadow = applicable_attacks(k, 1, True, True)
        need = [n for n in with_shadow if n not in ran]
        notes.append(
            "shadow-free audit: "
            + ", ".join(ran)
            + " ran, calibrated on the reference images only (no shadow encoder). "
            + "These need a shadow encoder and were not computed: "
            + (", ".join(need) + " (attacks fitted on a shadow), " if need else "")
            + "and every balanced accuracy at a decision threshold (bal.acc: the threshold is "
            "chosen on a shadow; bal.acc* is the best threshold in hindsight, an upper bound). "
            "AUC and TPR at low FPR need no shadow. For the rest give --shadow ENC "
            "--shadow-members M2 --shadow-nonmembers N2 (an encoder of yours trained the same "
            "way on other images), or have lpla train one: --train-shadows simclr/mlp"
        )
    elif jobs:
        notes += _trained_notes(inputs, jobs)
    else:
        notes.append(
            f"shadow encoder {inputs.shadow.encoder.spec if inputs.shadow else ''}: the "
            "shadow-fitted attacks and every threshold (bal.acc) come from it; they transfer "
            "as far as the shadow resembles the target (architecture, training recipe, data)"
        )
        notes += _path_overlap(plans)
    return notes


def _trained_notes(inputs: OwnInputs, jobs: Sequence[_ShadowJob]) -> list[str]:
    """What the shadows lpla trained are, and what their numbers do and do not say."""
    recipe = inputs.shadow_recipe
    assert recipe is not None
    first = jobs[0]
    n_in = sorted({len(job.plan.trained_on()) for job in jobs})
    n_all = len(first.plan.images[CANDIDATES][0])
    each = f"{n_in[0]}" if len(n_in) == 1 else f"{n_in[0]}-{n_in[-1]}"
    where = first.relative if len(jobs) == 1 else f"{SHADOWS_DIR}/shadow0..{len(jobs) - 1}"
    notes = [
        f"shadows trained by lpla: {len(jobs)} x {recipe.name} ({first.config.epochs} epochs, "
        f"the audit's recipe otherwise) in {where}, each on {each} images: {first.design}; "
        f"each is queried on its {n_all} candidates and on the target's reference set; the "
        "shadow-fitted attacks and every threshold (bal.acc) come from them",
        f"the shadows are {recipe.name}, not your encoder's architecture or training: the "
        "shadow-fitted numbers are what an attacker without your recipe reaches (knowledge: "
        "another framework/backbone); a shadow trained like your encoder (--shadow) may do "
        "better. If your non-members come from another source than the members, the audit "
        "measures that difference, not membership",
    ]
    if recipe.count == 1:
        notes.append(
            "the shadow trained on half of the target's evaluated non-members, which stay "
            "evaluated: your encoder never saw them, and the attacks fitted on the shadow learn "
            "thresholds of statistics, not images. lpla-diff does not run (its baseline must "
            "come from an encoder that saw none of the candidates); lpla-lira needs "
            "--shadows 2 or more"
        )
    else:
        notes.append(
            f"the shadows trained on your members too: every candidate, member of your encoder "
            f"or not, is a member of {len(jobs) // 2} of the {len(jobs)} shadows (LiRA's "
            "paired halves), so that lpla-lira compares each image's answers IN and OUT"
        )
    return notes


def _path_overlap(plans: Sequence[EncoderPlan]) -> list[str]:
    """The same image file among the target's candidates and the shadow's members."""
    target, shadow = plans
    t_idx, _ = target.images[CANDIDATES]
    t_paths = target.source.identities(t_idx)
    s_members = set(shadow.source.identities(shadow.trained_on()).tolist())
    common = [p for p in t_paths.tolist() if p in s_members]
    if not common:
        return []
    return [
        f"WARNING: {len(common)} of the target's candidate images are also shadow members "
        f"(e.g. {common[0]}); the shadow saw them, so the shadow-fitted numbers are optimistic. "
        "Give the shadow members the target never scores"
    ]


# ------------------------------------------------------------------------------------- utility


def own_utility(plan: EncoderPlan, query: QuerySettings) -> dict[str, Any]:
    """Linear probe and kNN on the user's labelled images, or why it was skipped.

    With labels on both lists (ImageFolder classes or CSV labels): probe-train = the members,
    probe-test = every non-member (evaluated and reference alike: none was trained on), the
    usual train -> test read-out. With labels on one list only: a seeded stratified 80/20
    split of that list (:func:`lpla.data.lists.stratified_split`).
    """
    from lpla.data.lists import SubsetDataset, stratified_split
    from lpla.runtime import resolve_device
    from lpla.utility import evaluate_utility

    idx, member = plan.images[CANDIDATES]
    idx, member = np.asarray(idx), np.asarray(member)
    members = np.sort(idx[member == 1])
    nonmembers = np.sort(np.concatenate([idx[member == 0], plan.images["reference"][0]]))
    labels = np.asarray(plan.source.open().labels)

    def labelled(rows: np.ndarray) -> bool:
        return bool(len(rows)) and bool((labels[rows] >= 0).all())

    def classes(rows: np.ndarray) -> int:
        return len(np.unique(labels[rows]))

    if labelled(members) and labelled(nonmembers) and classes(members) >= 2:
        how = "probe-train: the members; probe-test: the non-members"
        train_rows, test_rows = members, nonmembers
    elif labelled(members) or labelled(nonmembers):
        which, rows = ("members", members) if labelled(members) else ("non-members", nonmembers)
        how = f"a seeded stratified 80/20 split of the {which} (the other list has no labels)"
        train_rows, test_rows = rows, None
    else:
        return {
            "skipped": "no class labels: put the images in class folders (DIR/<class>/<image>) "
            "or list them in a CSV path,label to measure linear-probe and kNN accuracy"
        }
    device = resolve_device(query.device)
    enc = plan.encoder.load(device, query.layer)
    ds = plan.source.open(enc.image_shape)
    if test_rows is None:
        try:
            train, test = stratified_split(
                SubsetDataset(ds, train_rows, "labelled"), 0.2, query.seed
            )
        except LplaError as exc:
            return {"skipped": f"cannot split the labelled images for a probe: {exc}"}
    else:
        train = SubsetDataset(ds, train_rows, "probe-train")
        test = SubsetDataset(ds, test_rows, "probe-test")
    result = evaluate_utility(enc.module, train, test, device=device, seed=query.seed)
    result["probe_images"] = how
    return result
