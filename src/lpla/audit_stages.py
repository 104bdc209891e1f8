"""The stages of :func:`lpla.audit.run_audit`, each cached in the run directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from lpla.audit import AuditConfig, EncoderSpec, Stages
from lpla.data.splits import MembershipSplit, labelled, make_split
from lpla.errors import LplaError
from lpla.evaluate import AttackSettings, EncoderAnswers, run_attacks
from lpla.io import atomic_path, read_json, write_json_atomic


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


def encoder_dir(cfg: AuditConfig, out: Path, role: str) -> Path:
    """Where the target / shadow checkpoint of this audit lives."""
    if role == "target" and cfg.target_dir:
        return Path(cfg.target_dir)
    return out / role


def _takes_temperature(framework: str) -> bool:
    """Only contrastive frameworks have a softmax temperature (SimCLR, MoCo v2)."""
    import inspect

    from lpla.ssl.frameworks import FRAMEWORKS

    return "temperature" in inspect.signature(FRAMEWORKS.get(framework)).parameters


def target_split(cfg: AuditConfig) -> MembershipSplit:
    """The audit's split of its dataset (a pure function of the config)."""
    size, labels = _pool(cfg.dataset, cfg.data_root, cfg.stratify)
    return make_split(
        cfg.dataset,
        size,
        members=cfg.members,
        seed=cfg.seed,
        reference=cfg.reference,
        stratify=labels,
    )


def make_split_stage(cfg: AuditConfig, sh: EncoderSpec, out: Path, stages: Stages) -> Splits:
    """One seeded split for target and shadow; a second one when the shadow's data differs."""
    t_path, s_path = out / "split.json", out / "shadow_split.json"
    other = sh.dataset is not None and sh.dataset != cfg.dataset
    key = {
        "dataset": cfg.dataset,
        "members": cfg.members,
        "reference": cfg.reference,
        "seed": cfg.seed,
        "shadow_dataset": sh.dataset if other else None,
        "stratify": cfg.stratify,
    }

    def build() -> None:
        target_split(cfg).save(t_path)
        if other:
            assert sh.dataset is not None
            sh_size, sh_labels = _pool(sh.dataset, None, cfg.stratify)
            sh_split = make_split(
                sh.dataset,
                sh_size,
                members=cfg.members,
                seed=cfg.seed + 1,
                reference=cfg.reference,
                stratify=sh_labels,
            )
            sh_split.save(s_path)

    stages.run("split", key, [t_path] + ([s_path] if other else []), build)
    target = MembershipSplit.load(t_path)
    return Splits(target, MembershipSplit.load(s_path) if other else target)


def train_stage(
    cfg: AuditConfig,
    spec: EncoderSpec,
    role: str,
    splits: Splits,
    out: Path,
    stages: Stages,
    device: str,
) -> None:
    """Train (or resume) one encoder; a finished checkpoint with the same config is reused."""
    from lpla.ssl.train import TrainConfig, train_encoder

    split = splits.target if role == "target" else splits.shadow
    split_file = out / ("split.json" if split is splits.target else "shadow_split.json")
    enc_dir = encoder_dir(cfg, out, role)
    if role == "target" and cfg.target_dir:
        theirs = (
            MembershipSplit.load(enc_dir / "split.json")
            if (enc_dir / "split.json").is_file()
            else None
        )
        if theirs is None or theirs.fingerprint() != split.fingerprint():
            raise LplaError(
                f"target_dir {enc_dir} was trained on another split than this audit's; "
                "use the same dataset, members and seed, or leave target_dir unset"
            )
        if not (enc_dir / "model.safetensors").is_file():
            raise LplaError(f"target_dir {enc_dir} holds no trained encoder (model.safetensors)")
        stages.log("[shared] train_target: " + str(enc_dir))
        return
    tcfg = TrainConfig(
        dataset=spec.dataset or cfg.dataset,
        data_root=cfg.data_root if (spec.dataset or cfg.dataset) == cfg.dataset else None,
        framework=spec.framework,
        backbone=spec.backbone,
        members=cfg.members,
        epochs=spec.epochs,
        seed=cfg.seed if role == "target" else cfg.seed + 1,
        out=str(enc_dir),
        role=role,
        split=str(split_file),
        batch_size=spec.batch_size,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        temperature=spec.temperature if _takes_temperature(spec.framework) else None,
        augmentation=spec.augmentation,
        crop_scale_min=spec.crop_scale_min,
        jitter=spec.jitter,
        device=device,
        utility=cfg.utility and role == "target",
        utility_train_limit=cfg.utility_train_limit,
        progress=True,
    )
    # Paths are left out of the key so that a moved or copied run directory stays cached.
    settings = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in ("out", "split")}
    key = {"train": settings, "split": split.fingerprint()}

    def train() -> None:
        if _finished_with(enc_dir, settings, split.fingerprint()):
            stages.log(f"[reused] train_{role}: {enc_dir} holds this run, finished")
            return
        resume = (enc_dir / "train_state.safetensors").exists()
        train_encoder(dataclasses.replace(tcfg, resume=resume))

    stages.run(
        f"train_{role}", key, [enc_dir / "model.safetensors", enc_dir / "checkpoint.json"], train
    )


_NOT_SETTINGS = ("out", "split", "resume", "progress", "device", "threads")


def _finished_with(enc_dir: Path, settings: dict[str, Any], fingerprint: str) -> bool:
    """A finished checkpoint trained with these settings on this split (paths aside)."""
    meta_path = enc_dir / "checkpoint.json"
    if not meta_path.is_file() or not (enc_dir / "model.safetensors").is_file():
        return False
    meta = read_json(meta_path)
    saved = {k: v for k, v in (meta.get("config") or {}).items() if k not in _NOT_SETTINGS}
    wanted = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
    return (
        bool(meta.get("finished"))
        and meta.get("split_fingerprint") == fingerprint
        and saved == wanted
    )


def _file_digest(path: Path) -> str:
    """Content hash of the weights, so a copied run stays cached and retrained weights do not."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _embed(
    enc_dir: Path,
    dataset: str,
    root: str | None,
    indices: np.ndarray,
    member: np.ndarray,
    cfg: AuditConfig,
    out_file: Path,
    stages: Stages,
    device: str,
    stage: str,
) -> Path:
    from lpla.data.registry import create_dataset
    from lpla.encoders import load_any_encoder, training_augmentation
    from lpla.query import embed_dataset

    key = {
        "encoder": read_json(enc_dir / "checkpoint.json").get("split_fingerprint"),
        "weights": _file_digest(enc_dir / "model.safetensors"),
        "dataset": dataset,
        "indices": indices.tolist(),
        "views": cfg.views,
        "aug": cfg.query_augmentation,
        "clean": cfg.clean_view0,
        "layer": cfg.layer,
        "seed": cfg.seed,
    }

    def run() -> None:
        enc = load_any_encoder(str(enc_dir), device=device, layer=cfg.layer)
        ds = create_dataset(dataset, split="train", root=root)
        embed_dataset(
            enc,
            ds,
            indices,
            member=member,
            views=cfg.views,
            augmentation=cfg.query_augmentation or training_augmentation(enc),
            clean_view0=cfg.clean_view0,
            seed=cfg.seed,
            device=device,
            out=out_file,
            progress=False,
            meta={"role": stage},
        )

    stages.run(f"embed_{stage}", key, [out_file], run)
    return out_file


def embed_stage(
    cfg: AuditConfig, sh: EncoderSpec, splits: Splits, out: Path, stages: Stages, device: str
) -> tuple[EncoderAnswers, EncoderAnswers]:
    """Query target and shadow with K views: candidates (members + non-members) and reference."""
    from lpla.embeddings import open_embeddings

    emb = out / "embeddings"
    answers = []
    for role, split, ds_name, root, m_role, n_role in (
        ("target", splits.target, cfg.dataset, cfg.data_root, "target_member", "target_nonmember"),
        (
            "shadow",
            splits.shadow,
            sh.dataset or cfg.dataset,
            cfg.data_root if (sh.dataset or cfg.dataset) == cfg.dataset else None,
            "shadow_member",
            "shadow_nonmember",
        ),
    ):
        idx, flag = labelled(split.indices(m_role), split.indices(n_role))
        cand = _embed(
            encoder_dir(cfg, out, role),
            ds_name,
            root,
            idx,
            flag,
            cfg,
            emb / f"{role}_candidates.npz",
            stages,
            device,
            f"{role}_candidates",
        )
        ref_idx = split.indices("reference")
        ref = None
        if len(ref_idx):
            ref = _embed(
                encoder_dir(cfg, out, role),
                ds_name,
                root,
                ref_idx,
                np.zeros(len(ref_idx), np.int8),
                cfg,
                emb / f"{role}_reference.npz",
                stages,
                device,
                f"{role}_reference",
            )
        answers.append(
            EncoderAnswers(
                role, open_embeddings(cand), open_embeddings(ref) if ref is not None else None
            )
        )
    target, shadow = answers
    _baseline_stage(cfg, sh, out, stages, device, target, shadow)
    return target, shadow


def _baseline_stage(
    cfg: AuditConfig,
    sh: EncoderSpec,
    out: Path,
    stages: Stages,
    device: str,
    target: EncoderAnswers,
    shadow: EncoderAnswers,
) -> None:
    """Difficulty calibration: each encoder's candidates queried on the *other* encoder.

    Neither encoder trained on the other's candidates (the split keeps them disjoint), so each is
    a free per-image baseline for the other. Skipped when the two encoders take different
    images (other-data with another image shape) or a reference set is missing.
    """
    from lpla.embeddings import open_embeddings

    if target.reference is None or shadow.reference is None:
        return
    if (sh.dataset or cfg.dataset) != cfg.dataset:
        return
    emb = out / "embeddings"
    for own, other in ((target, shadow), (shadow, target)):
        path = _embed(  # the same images, in the same order, as own's candidates file
            encoder_dir(cfg, out, other.name),
            cfg.dataset,
            cfg.data_root,
            np.asarray(own.candidates.index),
            np.asarray(own.candidates.member),
            cfg,
            emb / f"{other.name}_on_{own.name}_candidates.npz",
            stages,
            device,
            f"{other.name}_on_{own.name}_candidates",
        )
        own.baseline = open_embeddings(path)
        own.baseline_reference = other.reference


def attack_settings(cfg: AuditConfig) -> AttackSettings:
    return AttackSettings(
        attacks=cfg.attacks,
        p=cfg.p,
        clean_view0=cfg.clean_view0,
        views_grid=cfg.views_grid,
        n_bootstrap=cfg.n_bootstrap,
        seed=cfg.seed,
    )


def attack_stage(
    cfg: AuditConfig,
    answers: tuple[EncoderAnswers, EncoderAnswers],
    splits: Splits,
    out: Path,
) -> dict[str, Any]:
    """Run every attack, then the same attacks behind each output-side defense."""
    target, shadow = answers
    settings = attack_settings(cfg)
    run = run_attacks(target, [shadow], settings)
    results = run.results
    save_scores(out / "scores.npz", run.target_member, run.scores)
    save_norms(out / "norms.npz", run)
    if cfg.defenses:
        results["defenses"] = {
            spec: _defended(spec, target, shadow, settings, cfg.seed) for spec in cfg.defenses
        }
    results["split"] = {
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "sizes": dict(splits.target.sizes),
        "fingerprint": splits.target.fingerprint(),
    }
    return results


def _defended(
    spec: str, target: EncoderAnswers, shadow: EncoderAnswers, settings: AttackSettings, seed: int
) -> dict[str, Any]:
    """Attack embeddings passed through a defense (the attacker's shadow gets it too)."""
    from lpla.defenses import create_defense
    from lpla.embeddings import EmbeddingsFile

    defense = create_defense(spec)
    rng = np.random.default_rng(seed)

    def apply(e: EmbeddingsFile | None) -> EmbeddingsFile | None:
        if e is None:
            return None
        return dataclasses.replace(e, embeddings=defense(np.asarray(e.embeddings, np.float32), rng))

    def defended(a: EncoderAnswers) -> EncoderAnswers:
        # every answer the encoders serve passes through the defense, baselines included
        candidates = apply(a.candidates)
        assert candidates is not None
        return EncoderAnswers(
            a.name,
            candidates,
            apply(a.reference),
            apply(a.baseline),
            apply(a.baseline_reference),
        )

    t, s = defended(target), defended(shadow)
    run = run_attacks(t, [s], dataclasses.replace(settings, views_grid=()))
    return {
        name: {k: v[k] for k in ("auc", "auc_ci95", "tpr_at_fpr", "advantage")}
        for name, v in run.results["attacks"].items()
    }


def save_scores(path: Path, member: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        arrays: dict[str, Any] = {k: np.asarray(v, np.float64) for k, v in scores.items()}
        np.savez(tmp, member=member, **arrays)


def save_norms(path: Path, run: Any) -> None:
    stats = run.target_stats
    arrays: dict[str, Any] = {
        "p": np.asarray(stats.p, np.float64),
        "mean_norm": stats.norms.mean(axis=1),
        "member": run.target_member,
    }
    if stats.clean_view0:
        arrays["clean_norm"] = stats.norms[:, 0, :]
    if "cosine" in stats.sims and stats.sims["cosine"].shape[1]:
        arrays["view_cosine"] = stats.sims["cosine"].mean(axis=1)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def utility_stage(cfg: AuditConfig, out: Path, stages: Stages, device: str) -> dict[str, Any]:
    """Utility of the target: computed at the end of training and stored in its checkpoint."""
    ckpt = read_json(encoder_dir(cfg, out, "target") / "checkpoint.json")
    util = ckpt.get("utility")
    if util:
        return dict(util)
    from lpla.data.registry import create_dataset
    from lpla.encoders import load_any_encoder
    from lpla.utility import evaluate_utility

    enc = load_any_encoder(str(encoder_dir(cfg, out, "target")), device=device)
    result = evaluate_utility(
        enc.module,
        create_dataset(cfg.dataset, "train", root=cfg.data_root),
        create_dataset(cfg.dataset, "test", root=cfg.data_root),
    )
    write_json_atomic(out / "utility.json", result)
    if not result:
        raise LplaError("utility evaluation returned nothing")
    return dict(result)
