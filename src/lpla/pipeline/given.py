"""Audit what the user brings: trained encoders (checkpoint directories) or embeddings files.

(An encoder of the user's on their own image lists is :mod:`lpla.pipeline.own`; an encoder
*file* given here as ``--target`` gets the one-line fix from
:func:`lpla.encoders.encoder_file_hint`.)

``lpla attack`` and ``lpla audit --target/--target-embeddings`` are both :func:`run_given`: open or
query the inputs, run the attacks, write the run. The two commands differ only in whether an HTML
report is written, so the same encoders give the same numbers through either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpla.attacks.base import answers_needed
from lpla.embeddings import EmbeddingsFile, open_embeddings
from lpla.errors import LplaError
from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.attacking import run_attacks
from lpla.pipeline.querying import plan_checkpoint, query_encoders
from lpla.pipeline.settings import AttackSettings, QuerySettings
from lpla.pipeline.writing import run_config, run_directory, write_run
from lpla.ssl.checkpoint import Checkpoint

__all__ = ["GivenInputs", "checkpoint_utility", "open_answers", "run_given"]


@dataclass
class GivenInputs:
    """Either encoders to query (``target`` + ``shadows``) or embeddings files, never both."""

    target: Path | None = None
    shadows: list[Path] = field(default_factory=list)
    target_embeddings: Path | None = None
    shadow_embeddings: list[Path] = field(default_factory=list)
    reference_embeddings: Path | None = None
    shadow_reference_embeddings: list[Path] = field(default_factory=list)
    # For embeddings files whose metadata does not say whether view 0 is the clean image.
    clean_view0: bool | None = None

    def check(self) -> None:
        for path in (self.target, *self.shadows):
            _check_checkpoint_dir(path)
        if (self.target is None) == (self.target_embeddings is None):
            raise LplaError(
                "give either --target DIR (an encoder) or --target-embeddings FILE.npz "
                "(exactly one of them)"
            )
        if self.target is not None and (
            self.shadow_embeddings or self.reference_embeddings or self.shadow_reference_embeddings
        ):
            raise LplaError(
                "--target DIR is queried by lpla: give its shadows with --shadow DIR, not "
                "embeddings files (or audit embeddings with --target-embeddings)"
            )
        if self.target_embeddings is not None and self.shadows:
            raise LplaError("--target-embeddings takes --shadow-embeddings FILE, not --shadow DIR")
        if self.shadow_reference_embeddings and len(self.shadow_reference_embeddings) != len(
            self.shadow_embeddings
        ):
            raise LplaError(
                "give one --shadow-reference-embeddings per --shadow-embeddings, in the same order"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "target": str(self.target or self.target_embeddings),
            "shadows": [str(s) for s in (self.shadows or self.shadow_embeddings)],
        }


def _check_checkpoint_dir(path: Path | None) -> None:
    """An encoder *file* given where a checkpoint directory is expected: the one-line fix."""
    if path is None or Path(path).is_dir():
        return
    from lpla.encoders import encoder_file_hint

    hint = encoder_file_hint(path)
    if hint is not None:
        raise LplaError(hint)


def open_answers(path: Path, clean_view0: bool | None = None) -> EmbeddingsFile:
    """An embeddings file; ``clean_view0`` fills in metadata the file lacks, never overrides it."""
    emb = open_embeddings(path)
    said = emb.meta.get("clean_view0")
    if clean_view0 is not None:
        if said is not None and bool(said) != clean_view0:
            raise LplaError(
                f"{path} says clean_view0={bool(said)} in its metadata, but "
                f"{'--clean-view0' if clean_view0 else '--no-clean-view0'} was given; "
                "drop the flag (how views were made is read from the file)"
            )
        emb.meta = {**emb.meta, "clean_view0": clean_view0}
    return emb


def _shadow_name(i: int, n: int) -> str:
    return "shadow" if n == 1 else f"shadow{i}"


def _answers(
    inputs: GivenInputs,
    query: QuerySettings,
    out: Path,
    progress: bool,
    attacks: tuple[str, ...] | None = None,
) -> tuple[EncoderAnswers, list[EncoderAnswers]]:
    if inputs.target is not None:
        n = len(inputs.shadows)
        plans = [plan_checkpoint("target", inputs.target)] + [
            plan_checkpoint(_shadow_name(i, n), s) for i, s in enumerate(inputs.shadows)
        ]
        roles = answers_needed(attacks)
        target, *shadows = query_encoders(
            plans, query, out / "embeddings", progress=progress, roles=roles
        )
        return target, shadows
    assert inputs.target_embeddings is not None

    def files(cand: Path, ref: Path | None) -> dict[str, EmbeddingsFile]:
        got = {CANDIDATES: open_answers(cand, inputs.clean_view0)}
        if ref is not None:
            got["reference"] = open_answers(ref, inputs.clean_view0)
        return got

    n = len(inputs.shadow_embeddings)
    refs: list[Path | None] = list(inputs.shadow_reference_embeddings) or [None] * n
    target = EncoderAnswers("target", files(inputs.target_embeddings, inputs.reference_embeddings))
    shadows = [
        EncoderAnswers(_shadow_name(i, n), files(s, refs[i]))
        for i, s in enumerate(inputs.shadow_embeddings)
    ]
    return target, shadows


def _split_of(inputs: GivenInputs, target: EncoderAnswers) -> dict[str, Any]:
    """The target's membership split as results.json records it."""
    if inputs.target is not None:
        from lpla.ssl.checkpoint import Checkpoint

        split = Checkpoint.open(inputs.target).split()
        if split is not None:
            return {
                "dataset": split.dataset,
                "seed": split.seed,
                "sizes": dict(split.sizes),
                "fingerprint": split.fingerprint(),
            }
    member = np.asarray(target.candidates.member)
    meta = target.candidates.meta
    return {
        "dataset": meta.get("dataset"),
        "seed": meta.get("seed"),
        "sizes": {
            "target_member": int((member == 1).sum()),
            "target_nonmember": int((member == 0).sum()),
        },
    }


def checkpoint_utility(
    checkpoint: Checkpoint,
    device: str,
    seed: int,
    *,
    data_root: str | None = None,
    train_limit: int | None = 10000,
) -> dict[str, Any]:
    """A checkpoint's utility: the one stored at the end of training, else measured now on its
    dataset's train/test splits (``data_root`` overrides the one in its config)."""
    stored = checkpoint.utility()
    if stored:
        return stored
    from lpla.encoders import load_any_encoder
    from lpla.runtime import resolve_device
    from lpla.utility import dataset_utility

    config = checkpoint.config()
    device = resolve_device(device)
    enc = load_any_encoder(str(checkpoint.path), device=device)
    return dataset_utility(
        enc.module,
        str(config.get("dataset")),
        data_root=data_root or config.get("data_root"),
        image_size=config.get("image_size"),
        train_limit=train_limit,
        device=device,
        seed=seed,
    )


def run_given(
    inputs: GivenInputs,
    query: QuerySettings,
    attack: AttackSettings,
    out: Path,
    *,
    title: str,
    command: str,
    report: bool,
    utility: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Query (or open) the inputs, run the attacks, write the run into ``out``; the results."""
    inputs.check()
    query.validate()
    attack.validate()
    if inputs.target_embeddings is not None:  # read and validate every file before writing
        target, shadows = _answers(inputs, query, out, progress)
    with run_directory(out):
        if inputs.target is not None:
            target, shadows = _answers(inputs, query, out, progress, attack.attacks)
        run = run_attacks(target, shadows, attack)
        extra: dict[str, Any] = {
            "title": title,
            "command": command,
            "config": inputs.describe()
            | run_config(
                attack,
                run,
                target.candidates.clean_view0,
                query if inputs.target is not None else None,
            ),
            "split": _split_of(inputs, target),
        }
        util = (
            checkpoint_utility(Checkpoint.open(inputs.target), query.device, query.seed)
            if utility and inputs.target is not None
            else None
        )
        if util:
            extra["utility"] = util
        return write_run(out, run, extra, report=report)
