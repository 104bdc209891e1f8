"""`lpla audit`: from images to a membership-privacy report, in cached stages.

Stages (each writes its outputs atomically into the run directory and is skipped when they are
already there with the same configuration, so a re-run after a crash, or with other attacks,
never retrains):

    split.json -> target/ (encoder) -> shadow/ (encoder) -> embeddings/*.npz
    -> results.json + scores.npz + norms.npz -> report.html

The attacker's knowledge (``same``, ``other-framework``, ``other-backbone``, ``other-data`` and
combinations joined with ``+``) only changes how the shadow encoder is trained: shadow data is
always disjoint from the target's members.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpla.errors import LplaError
from lpla.io import read_json, write_json_atomic
from lpla.registry import Registry

RESULTS_FORMAT = 1


@dataclass
class EncoderSpec:
    """How one encoder (target or shadow) is trained."""

    framework: str = "simclr"
    backbone: str = "mlp"
    epochs: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.5
    augmentation: str = "simclr"
    crop_scale_min: float | None = 0.8
    jitter: float | None = 0.2
    dataset: str | None = None  # None: the audit's dataset


@dataclass
class AuditConfig:
    """Everything that determines an audit's numbers (saved as ``config`` in results.json)."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    members: int = 128
    reference: int | None = None
    seed: int = 0
    stratify: bool = True  # every split role gets the pool's class proportions (labels known)
    target: EncoderSpec = field(default_factory=EncoderSpec)
    knowledge: str = "same"
    # An already trained target (checkpoint dir) to reuse instead of training one; its split must
    # be this audit's split (a study points cells that differ only in the shadow at one target).
    target_dir: str | None = None
    shadow_overrides: dict[str, Any] = field(default_factory=dict)
    views: int = 10
    query_augmentation: str | None = None  # None: the target's training augmentation
    clean_view0: bool = True
    layer: str = "backbone"
    p: tuple[float, ...] = (1.0, 2.0, float("inf"))
    attacks: tuple[str, ...] | None = None
    views_grid: tuple[int, ...] = (1, 2, 5, 10)
    n_bootstrap: int = 1000
    defenses: tuple[str, ...] = ()
    utility: bool = True
    utility_train_limit: int = 10000  # probe-training images (the test split is used whole)
    device: str = "auto"
    title: str = "lpla audit"

    def validate(self) -> None:
        if self.members < 2:
            raise LplaError(f"--members must be at least 2, got {self.members}")
        if self.views < 1:
            raise LplaError(f"--views must be at least 1, got {self.views}")
        if self.clean_view0 and self.views < 1:
            raise LplaError("--clean-view0 needs at least one view")
        for p in self.p:
            if not p > 0:
                raise LplaError(f"every p must be > 0 (inf allowed), got {p}")
        if self.target.epochs < 1:
            raise LplaError(f"--epochs must be at least 1, got {self.target.epochs}")
        for part in self.knowledge.split("+"):
            KNOWLEDGE.get(part)
        self._check_names()

    def _check_names(self) -> None:
        """Every registry name the audit will use, checked now: not after an hour of training."""
        from lpla.attacks import ATTACKS
        from lpla.data.registry import DATASETS
        from lpla.defenses import create_defense
        from lpla.ssl.augment import AUGMENTATIONS
        from lpla.ssl.backbones import BACKBONES
        from lpla.ssl.frameworks import FRAMEWORKS

        DATASETS.get(self.dataset)
        for spec in (self.target, shadow_spec(self)):
            FRAMEWORKS.get(spec.framework)
            BACKBONES.get(spec.backbone)
            AUGMENTATIONS.get(spec.augmentation)
            if spec.dataset is not None:
                DATASETS.get(spec.dataset)
        if self.query_augmentation is not None:
            AUGMENTATIONS.get(self.query_augmentation)
        for name in self.attacks or ():
            ATTACKS.get(name)
        for defense in self.defenses:
            create_defense(defense)
        if any(v < 1 for v in self.views_grid):
            raise LplaError(f"every views_grid entry must be >= 1, got {list(self.views_grid)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["p"] = [_p_str(p) for p in self.p]
        return d


def _p_str(p: float) -> str:
    return "inf" if np.isinf(p) else f"{p:g}"


# --- knowledge settings: how the attacker's shadow differs from the target -----------------------

KnowledgeFn = Callable[[EncoderSpec, AuditConfig], EncoderSpec]
KNOWLEDGE: Registry[KnowledgeFn] = Registry("knowledge setting")

_OTHER_FRAMEWORK = {
    "simclr": "byol",
    "byol": "simclr",
    "moco-v2": "simclr",
    "simsiam": "simclr",
    "barlow-twins": "simclr",
    "vicreg": "simclr",
    "dino": "simclr",
}
_OTHER_BACKBONE = {
    "mlp": "cnn-small",
    "cnn-small": "mlp",
    "resnet18": "resnet34",
    "resnet34": "resnet18",
    "resnet50": "resnet18",
    "vit-tiny": "resnet18",
}
_OTHER_DATA = {
    "fashion-mnist": "digits",
    "fashion-mnist-full": "digits",
    "cifar10": "cifar100",
    "cifar100": "cifar10",
    "stl10": "cifar10",
    "svhn": "cifar10",
    "digits": "fashion-mnist",
}


@KNOWLEDGE.register(
    "same", "shadow trained like the target (same data distribution, framework, backbone)"
)
def _same(spec: EncoderSpec, cfg: AuditConfig) -> EncoderSpec:
    return spec


@KNOWLEDGE.register(
    "other-framework", "shadow uses another SSL framework (SimCLR <-> BYOL, others -> SimCLR)"
)
def _other_framework(spec: EncoderSpec, cfg: AuditConfig) -> EncoderSpec:
    return dataclasses.replace(spec, framework=_OTHER_FRAMEWORK.get(spec.framework, "simclr"))


@KNOWLEDGE.register(
    "other-backbone", "shadow uses another backbone (mlp <-> cnn-small, resnet18 <-> resnet34)"
)
def _other_backbone(spec: EncoderSpec, cfg: AuditConfig) -> EncoderSpec:
    return dataclasses.replace(spec, backbone=_OTHER_BACKBONE.get(spec.backbone, "cnn-small"))


@KNOWLEDGE.register(
    "other-data",
    "shadow trained on another dataset (Fashion-MNIST -> digits, CIFAR-10 <-> CIFAR-100)",
)
def _other_data(spec: EncoderSpec, cfg: AuditConfig) -> EncoderSpec:
    return dataclasses.replace(spec, dataset=_OTHER_DATA.get(cfg.dataset, "digits"))


def shadow_spec(cfg: AuditConfig) -> EncoderSpec:
    spec = dataclasses.replace(cfg.target)
    for part in cfg.knowledge.split("+"):
        spec = KNOWLEDGE.get(part)(spec, cfg)
    if cfg.shadow_overrides:
        spec = dataclasses.replace(spec, **cfg.shadow_overrides)
    return spec


# --- cached stages -------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Tracks which stages are done (``stages.json``) keyed by a hash of their inputs."""

    def __init__(self, out: Path, log: Callable[[str], None]) -> None:
        self.out = out
        self.path = out / "stages.json"
        self.log = log
        self.done: dict[str, str] = read_json(self.path) if self.path.exists() else {}

    def run(self, name: str, key: Any, outputs: list[Path], fn: Callable[[], None]) -> bool:
        """Run ``fn`` unless ``name`` was completed with the same key and its outputs exist."""
        digest = _digest(key)
        if self.done.get(name) == digest and all(p.exists() for p in outputs):
            self.log(f"[cached] {name}")
            return False
        self.log(f"[run] {name}")
        fn()
        self.done[name] = digest
        write_json_atomic(self.path, self.done)
        return True


def run_audit(
    cfg: AuditConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Split, train target and shadow, query both, attack, measure utility, write the report."""
    from lpla.audit_stages import (
        attack_stage,
        embed_stage,
        make_split_stage,
        train_stage,
        utility_stage,
    )
    from lpla.runtime import resolve_device, set_threads, versions

    cfg.validate()
    set_threads()
    device = resolve_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, log)
    timing: dict[str, float] = {}
    sh_spec = shadow_spec(cfg)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timing[name] = round(time.perf_counter() - t0, 2)
        return result

    split = timed("split", lambda: make_split_stage(cfg, sh_spec, out, stages))
    timed(
        "train_target", lambda: train_stage(cfg, cfg.target, "target", split, out, stages, device)
    )
    timed("train_shadow", lambda: train_stage(cfg, sh_spec, "shadow", split, out, stages, device))
    answers = timed("query", lambda: embed_stage(cfg, sh_spec, split, out, stages, device))
    utility = (
        timed("utility", lambda: utility_stage(cfg, out, stages, device)) if cfg.utility else None
    )
    results = timed("attacks", lambda: attack_stage(cfg, answers, split, out))
    results.update(
        {
            "format": RESULTS_FORMAT,
            "title": cfg.title,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "knowledge": cfg.knowledge,
            "target": dataclasses.asdict(cfg.target) | {"dataset": cfg.dataset},
            "shadow": dataclasses.asdict(sh_spec) | {"dataset": sh_spec.dataset or cfg.dataset},
            "config": cfg.to_dict(),
            "command": command or _reproduce_command(cfg, out),
            "versions": versions(),
            "device": device,
            "timing_s": timing,
        }
    )
    if utility is not None:
        results["utility"] = utility
    results["lpla_version"] = results["versions"].get("lpla")
    write_json_atomic(out / "results.json", results)
    try:
        from lpla.report.html import build_report

        build_report(out)
    except ImportError:  # pragma: no cover - report package always ships
        log("report module unavailable; results.json written")
    return results


def _reproduce_command(cfg: AuditConfig, out: Path) -> str:
    return (
        "lpla audit --config "
        + shlex.quote(str(out / "audit_config.json"))
        + " --out "
        + shlex.quote(str(out))
    )


def current_command() -> str:
    return "lpla " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def load_config(path: str | Path) -> AuditConfig:
    """Load an audit config (JSON or YAML); unknown keys are an error, not silently ignored."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LplaError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LplaError(f"config {p} is not valid YAML/JSON{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise LplaError(f"config {p} must be a mapping of option names to values")
    return config_from_dict(raw, source=str(p))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> AuditConfig:
    raw = dict(raw)
    target = raw.pop("target", {}) or {}
    known = {f.name for f in dataclasses.fields(AuditConfig)}
    unknown = set(raw) - known
    if unknown:
        raise LplaError(f"{source}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    t_known = {f.name for f in dataclasses.fields(EncoderSpec)}
    t_unknown = set(target) - t_known
    if t_unknown:
        raise LplaError(
            f"{source}: unknown target option(s) {sorted(t_unknown)}; known: {sorted(t_known)}"
        )
    if "p" in raw:
        raw["p"] = tuple(float(v) for v in raw["p"])
    for key in ("attacks", "views_grid", "defenses"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    return AuditConfig(target=EncoderSpec(**target), **raw)
