"""``run_audit``: from images to a membership-privacy report, in cached stages.

Stages (each writes its outputs atomically into the run directory and is skipped when they are
already there with the same configuration, so a re-run after a crash, or with other attacks,
never retrains)::

    split.json -> target/ (encoder) -> shadow/ (encoder) -> embeddings/*.npz
    -> results.json + scores.npz + norms.npz -> report.html

Querying, attacking and writing are the shared pipeline's (:mod:`lpla.pipeline`); this module
adds what only a from-scratch audit has: the split and the two training runs.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lpla.attacks.base import answers_needed
from lpla.audit.config import POWER_IMAGES, AuditConfig, EncoderSpec, shadow_spec
from lpla.audit.defending import AuditDefenses, run_defenses
from lpla.audit.references import KEEP_FILE, REFERENCES_DIR, plan_references, train_references
from lpla.audit.training import train_config, train_settings
from lpla.data.splits import MembershipSplit, make_split
from lpla.errors import LplaError
from lpla.io import write_json_atomic
from lpla.pipeline.attacking import run_attacks
from lpla.pipeline.given import checkpoint_utility
from lpla.pipeline.querying import plan_checkpoint, query_encoders
from lpla.pipeline.stages import StageCache, Timings
from lpla.pipeline.writing import write_run
from lpla.ssl.checkpoint import SPLIT_FILE, Checkpoint

__all__ = [
    "SHADOW_SPLIT_FILE",
    "encoder_dir",
    "replicate_dir",
    "run_audit",
    "split_sizes",
    "target_split",
]

# The run directory holds the audit's split as a checkpoint does (SPLIT_FILE), and the shadow's
# own split when the shadow trains on other data.
SHADOW_SPLIT_FILE = "shadow_split.json"


@dataclasses.dataclass
class Splits:
    target: MembershipSplit
    shadow: MembershipSplit  # the same object as target unless the shadow uses other data


def _pool(dataset: str, root: str | None, stratify: bool) -> tuple[int, np.ndarray | None]:
    """Pool size and, for stratified splits, the labels (none when the dataset is unlabelled)."""
    from lpla.data.registry import create_dataset

    ds = create_dataset(dataset, split="train", root=root)
    labels = np.asarray(ds.labels)
    return len(ds), labels if stratify and (labels >= 0).all() else None


def replicate_dir(out: Path, replicate: int) -> Path:
    """Where replicate ``r`` of a ``--seeds S`` audit lives inside its run directory."""
    return out / "seeds" / f"seed{replicate}"


def encoder_dir(cfg: AuditConfig, out: Path, role: str) -> Checkpoint:
    """Where the target / shadow checkpoint of this audit lives.

    ``target_dir`` is a checkpoint, or the run directory of a ``--seeds`` audit whose replicates
    hold one target each (a study's cells that differ only in the shadow share them).
    """
    if role == "target" and cfg.target_dir:
        shared = Path(cfg.target_dir)
        per_seed = replicate_dir(shared, cfg.replicate) / "target"
        if not Checkpoint.is_checkpoint(shared) and Checkpoint.is_checkpoint(per_seed):
            return Checkpoint(per_seed)
        return Checkpoint(shared)
    return Checkpoint(out / role)


def shadow_members(cfg: AuditConfig) -> int:
    """The population shadow's members (and as many non-members): none with reference encoders,
    which train on the target's candidates instead."""
    return 0 if cfg.reference_models else cfg.members


def split_sizes(cfg: AuditConfig, pool_size: int) -> tuple[int, int]:
    """Non-members and reference images: as configured, else POWER_IMAGES each when the pool
    has them (non-members first; the shadow's members and non-members are ``members`` each)."""
    left = max(pool_size - cfg.members - 2 * shadow_members(cfg), 0)
    nonmembers = cfg.nonmembers if cfg.nonmembers is not None else min(POWER_IMAGES, left // 2)
    left -= nonmembers
    reference = cfg.reference if cfg.reference is not None else min(POWER_IMAGES, max(left, 0))
    return max(nonmembers, 1), reference


def target_split(cfg: AuditConfig) -> MembershipSplit:
    """The audit's split of its dataset (a pure function of the config)."""
    size, labels = _pool(cfg.dataset, cfg.data_root, cfg.stratify)
    nonmembers, reference = split_sizes(cfg, size)
    return make_split(
        cfg.dataset,
        size,
        members=cfg.members,
        seed=cfg.seed,
        shadow_members=shadow_members(cfg),
        nonmembers=nonmembers,
        reference=reference,
        stratify=labels,
    )


def _split_stage(cfg: AuditConfig, sh: EncoderSpec, out: Path, stages: StageCache) -> Splits:
    """One seeded split for target and shadow; a second one when the shadow's data differs."""
    t_path, s_path = out / SPLIT_FILE, out / SHADOW_SPLIT_FILE
    other = sh.dataset is not None and sh.dataset != cfg.dataset
    key = {
        "dataset": cfg.dataset,
        "members": cfg.members,
        "nonmembers": cfg.nonmembers,
        "reference": cfg.reference,
        "shadow_members": shadow_members(cfg),
        "seed": cfg.seed,
        "shadow_dataset": sh.dataset if other else None,
        "stratify": cfg.stratify,
    }

    def build() -> None:
        target_split(cfg).save(t_path)
        if other:
            assert sh.dataset is not None
            sh_size, sh_labels = _pool(sh.dataset, None, cfg.stratify)
            make_split(
                sh.dataset,
                sh_size,
                members=cfg.members,
                seed=cfg.seed + 1,
                nonmembers=cfg.members,  # only the shadow roles of this split are used
                reference=split_sizes(cfg, sh_size)[1],
                stratify=sh_labels,
            ).save(s_path)

    stages.run("split", key, [t_path] + ([s_path] if other else []), build)
    target = MembershipSplit.load(t_path)
    return Splits(target, MembershipSplit.load(s_path) if other else target)


def _train_stage(
    cfg: AuditConfig,
    spec: EncoderSpec,
    role: str,
    splits: Splits,
    out: Path,
    stages: StageCache,
    device: str,
) -> None:
    """Train (or resume) one encoder; a finished checkpoint with the same config is reused."""
    from lpla.ssl.train import train_encoder

    split = splits.target if role == "target" else splits.shadow
    split_file = out / (SPLIT_FILE if split is splits.target else SHADOW_SPLIT_FILE)
    ckpt = encoder_dir(cfg, out, role)
    if role == "target" and cfg.target_dir:
        theirs = ckpt.split()
        if theirs is None or theirs.fingerprint() != split.fingerprint():
            raise LplaError(
                f"target_dir {ckpt.path} was trained on another split than this audit's; "
                "use the same dataset, members and seed, or leave target_dir unset"
            )
        if not ckpt.has_weights():
            raise LplaError(f"target_dir {ckpt.path} holds no trained encoder")
        stages.log("[shared] train_target: " + str(ckpt.path))
        return
    tcfg = train_config(
        cfg, spec, role, split_file, ckpt.path, device, offset=0 if role == "target" else 1
    )
    settings = train_settings(tcfg)
    key = {"train": settings, "split": split.fingerprint()}

    def train() -> None:
        if ckpt.finished_with(settings, split.fingerprint()):
            stages.log(f"[reused] train_{role}: {ckpt.path} holds this run, finished")
            return
        train_encoder(dataclasses.replace(tcfg, resume=ckpt.state_file.exists()))

    stages.run(f"train_{role}", key, [ckpt.model_file, ckpt.meta_file], train)


def _utility_stage(cfg: AuditConfig, out: Path, device: str) -> dict[str, Any]:
    """Utility of the target: measured at the end of training and stored in its checkpoint."""
    ckpt = encoder_dir(cfg, out, "target")
    stored = ckpt.utility()
    if stored:
        return stored
    result = checkpoint_utility(
        ckpt, device, cfg.seed, data_root=cfg.data_root, train_limit=cfg.utility_train_limit
    )
    write_json_atomic(out / "utility.json", result)
    return result


def run_audit(
    cfg: AuditConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Split, train target and shadow, query both, attack, measure utility, write the report.

    With ``cfg.seeds = S > 1``, S replicates (training seeds differ, split and queries do not) run
    in ``seeds/seed{r}/``; the run directory shows replicate 0 and every attack's AUC and TPR
    across the S seeds (``across_seeds`` in results.json).
    """
    cfg.validate()
    out = Path(out)
    if cfg.seeds == 1:
        return _run_one(cfg, out, log, command)
    runs = []
    for r in range(cfg.seeds):
        log(f"[seed {r + 1}/{cfg.seeds}]")
        sub = dataclasses.replace(cfg, seeds=1, replicate=r)
        runs.append(_run_one(sub, replicate_dir(out, r), lambda m: log("  " + m), command))
    return _write_across_seeds(cfg, out, runs, command)


def _write_across_seeds(
    cfg: AuditConfig, out: Path, runs: list[dict[str, Any]], command: str | None
) -> dict[str, Any]:
    """The run directory of a --seeds audit: replicate 0's files plus the across-seeds summary."""
    import shutil

    from lpla.io import atomic_path
    from lpla.report.html import build_report
    from lpla.report.tables import seeds_summary

    first = replicate_dir(out, 0)
    for name in ("scores.npz", "norms.npz"):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(first / name, tmp)
    results = dict(runs[0])
    results["config"] = cfg.to_dict()
    results["command"] = command or _reproduce_command(out)
    results["title"] = f"{cfg.title} (seed 0 of {cfg.seeds} shown)"
    results["across_seeds"] = seeds_summary(runs) | {
        "runs": [str(replicate_dir(out, r).relative_to(out)) for r in range(cfg.seeds)]
    }
    if cfg.defenses:
        from lpla.report.defenses import defenses_across_seeds

        results["across_seeds"]["defenses"] = defenses_across_seeds(runs)
    write_json_atomic(out / "results.json", results)
    build_report(out)
    return results


def _run_one(
    cfg: AuditConfig, out: Path, log: Callable[[str], None], command: str | None
) -> dict[str, Any]:
    from lpla.runtime import resolve_device, set_threads

    set_threads()
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    stages = StageCache(out, log)
    timed = Timings()
    sh_spec = shadow_spec(cfg)

    splits = timed("split", lambda: _split_stage(cfg, sh_spec, out, stages))
    timed(
        "train_target", lambda: _train_stage(cfg, cfg.target, "target", splits, out, stages, device)
    )
    plans = [plan_checkpoint("target", encoder_dir(cfg, out, "target").path, cfg.data_root)]
    keep = None
    if cfg.reference_models:
        keep = timed(
            "train_references",
            lambda: train_references(cfg, sh_spec, splits.target, out, stages, device),
        )
        plans += plan_references(keep, out)
    else:
        timed(
            "train_shadow",
            lambda: _train_stage(cfg, sh_spec, "shadow", splits, out, stages, device),
        )
        plans.append(plan_checkpoint("shadow", encoder_dir(cfg, out, "shadow").path))
    query = cfg.query_settings(device)
    target, *shadows = timed(
        "query",
        lambda: query_encoders(
            plans,
            query,
            out / "embeddings",
            cache=stages,
            baselines=keep is None,
            roles=answers_needed(cfg.attacks),  # queries of their own (partcrop's crops)
        ),
    )
    utility = timed("utility", lambda: _utility_stage(cfg, out, device)) if cfg.utility else None
    settings = cfg.attack_settings()
    run = timed("attacks", lambda: run_attacks(target, shadows, settings))
    extra: dict[str, Any] = {
        "title": cfg.title,
        "knowledge": cfg.knowledge,
        "target": dataclasses.asdict(cfg.target) | {"dataset": cfg.dataset},
        "shadow": dataclasses.asdict(sh_spec)
        | {"dataset": sh_spec.dataset or cfg.dataset, "count": len(shadows)},
        "config": cfg.to_dict(),
        "command": command or _reproduce_command(out),
        "device": device,
        "split": {
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "sizes": dict(splits.target.sizes),
            "fingerprint": splits.target.fingerprint(),
        },
    }
    if cfg.defenses:
        job = AuditDefenses(
            cfg,
            out,
            device,
            query,
            settings,
            target,
            shadows,
            plans[0],
            plans[1:],
            baselines=keep is None,
            undefended=run.results["attacks"],
            target_checkpoint=encoder_dir(cfg, out, "target"),
            split_fingerprint=splits.target.fingerprint(),
            log=log,
        )
        extra["defenses"] = timed("defenses", lambda: run_defenses(job))
    if keep is not None:
        design = keep.summary()
        extra["reference_models"] = design | {
            "keep_file": f"{REFERENCES_DIR}/{KEEP_FILE}",
            "names": [p.name for p in plans[1:]],
        }
        ins = design["in_per_candidate"]
        run.results["notes"].append(
            f"per-image calibration: {design['references']} reference encoders, each trained on "
            f"{design['members_per_reference']} of the {design['candidates']} candidates (each "
            f"candidate IN for {ins['min']}-{ins['max']} of them, {REFERENCES_DIR}/{KEEP_FILE}); "
            "every attack, population and per-image, is fitted on them"
        )
    if utility is not None:
        extra["utility"] = utility
    extra["timing_s"] = dict(timed)
    return write_run(out, run, extra, report=True)


def _reproduce_command(out: Path) -> str:
    return (
        "lpla audit --config "
        + shlex.quote(str(out / "audit_config.json"))
        + " --out "
        + shlex.quote(str(out))
    )
