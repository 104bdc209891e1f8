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
and thresholds then run too. Querying, attacking and writing are the shared pipeline's
(:func:`query_encoders`, :func:`run_attacks`, :func:`write_run`); this module adds the plans of
image lists, ``images.json`` (which file each candidate row is) and utility on the user's labels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpla.attacks import applicable_attacks
from lpla.errors import LplaError
from lpla.io import write_json_atomic
from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.attacking import run_attacks, run_defended
from lpla.pipeline.querying import (
    REFERENCE_MAX,
    EncoderPlan,
    EncoderRef,
    plan_images,
    query_encoders,
)
from lpla.pipeline.settings import AttackSettings, QuerySettings
from lpla.pipeline.stages import StageCache
from lpla.pipeline.writing import run_config, run_directory, write_run

__all__ = [
    "IMAGES_FILE",
    "IMAGES_FORMAT",
    "MIN_REFERENCE",
    "OwnEncoder",
    "OwnInputs",
    "plan_own",
    "run_own",
]

IMAGES_FILE = "images.json"
IMAGES_FORMAT = "lpla-images/1"
#: Below this many reference images, lpla-ref's calibration (mean and sd of the reference
#: norms) is noisy enough to say so in the run's notes.
MIN_REFERENCE = 100


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
class OwnInputs:
    """The target encoder and, optionally, a shadow encoder of the user's."""

    target: OwnEncoder
    shadow: OwnEncoder | None = None
    image_size: int | None = None  # decode every image to N x N (default: see ImageSource)

    def describe(self) -> dict[str, Any]:
        return {
            "target": _describe(self.target),
            "shadow": _describe(self.shadow) if self.shadow is not None else None,
            "image_size": self.image_size,
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

    Writes ``results.json`` (with ``notes`` saying which figures need a shadow), ``scores.npz``,
    ``norms.npz``, ``report.html``, ``images.json`` and ``embeddings/``; a run that fails
    leaves no ``out`` it created. Returns the results document.
    """
    query.validate()
    attack.validate()
    if defenses:
        from lpla.defenses import create_defense

        for spec in defenses:
            create_defense(spec)  # a typo fails before anything is written
    plans = plan_own(inputs, query.seed)  # every list is read before anything is written
    timing: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timing[name] = round(time.perf_counter() - t0, 2)
        return result

    with run_directory(out):
        stages = StageCache(out, log)
        target, *shadows = timed(
            "query",
            lambda: query_encoders(
                plans, query, out / "embeddings", cache=stages, progress=progress
            ),
        )
        run = timed("attacks", lambda: run_attacks(target, shadows, attack))
        notes = _notes(inputs, plans, target, shadows, run.results, query.seed)
        for note in notes:
            if note.startswith("WARNING: "):
                print(f"lpla: warning: {note.removeprefix('WARNING: ')}", file=sys.stderr)
        write_json_atomic(out / IMAGES_FILE, images_document(plans, inputs, query.seed))
        extra: dict[str, Any] = {
            "title": title,
            "command": command,
            "knowledge": "your shadow encoder" if shadows else "none (shadow-free)",
            "target": _spec_row(inputs.target, target),
            "shadow": _spec_row(inputs.shadow, shadows[0]) if shadows else None,
            "config": inputs.describe()
            | run_config(attack, run, target.candidates.clean_view0, query),
            "split": _split(plans, inputs, query.seed),
            "images": IMAGES_FILE,
            "notes": list(run.results["notes"]) + notes,
        }
        if defenses:
            extra["defenses"] = timed(
                "defenses",
                lambda: {spec: run_defended(spec, target, shadows, attack) for spec in defenses},
            )
        if utility:
            extra["utility"] = timed("utility", lambda: own_utility(plans[0], query))
        extra["timing_s"] = timing
        return write_run(out, run, extra, report=True)


# ------------------------------------------------------------------------------ what is written


def images_document(plans: Sequence[EncoderPlan], inputs: OwnInputs, seed: int) -> dict[str, Any]:
    """``images.json``: which file each candidate row (of scores.npz, the embeddings) is.

    Per encoder: ``candidates`` in the order of the embeddings and of ``scores.npz`` (``row``),
    each with the ``index`` stored in the embeddings file (a row of the combined list), the
    image's ``path``, ``member`` (1/0) and ``label`` (null when unknown); ``reference_images``
    likewise without ``member`` (the images that calibrate the attacks, never scored).
    """
    own = {"target": inputs.target, "shadow": inputs.shadow}
    doc: dict[str, Any] = {"format": IMAGES_FORMAT}
    for plan in plans:
        spec = own[plan.name]
        assert spec is not None
        ds = plan.source.open()
        paths: Sequence[str] = ds.paths  # type: ignore[attr-defined]
        labels = np.asarray(ds.labels)
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
    return doc


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
    target: EncoderAnswers,
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
            "way on other images)"
        )
    else:
        notes.append(
            f"shadow encoder {inputs.shadow.encoder.spec if inputs.shadow else ''}: the "
            "shadow-fitted attacks and every threshold (bal.acc) come from it; they transfer "
            "as far as the shadow resembles the target (architecture, training recipe, data)"
        )
        notes += _path_overlap(plans)
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
