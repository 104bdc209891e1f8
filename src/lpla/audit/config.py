"""What an audit is: its config (every number it depends on) and the attacker's knowledge.

The attacker's knowledge (``same``, ``other-framework``, ``other-backbone``, ``other-data`` and
combinations joined with ``+``) only changes how the shadow encoder is trained: shadow data is
always disjoint from the target's members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpla.attacks.features import p_label
from lpla.errors import LplaError
from lpla.pipeline.settings import AttackSettings, QuerySettings
from lpla.registry import Registry
from lpla.ssl.config import TrainConfig

__all__ = [
    "AUDIT_RECIPE",
    "KNOWLEDGE",
    "POWER_IMAGES",
    "AuditConfig",
    "EncoderSpec",
    "config_from_dict",
    "load_config",
    "shadow_spec",
]

#: Where the audit's default training recipe differs from ``lpla train``'s defaults (TrainConfig):
#: the leaky small-scale regime chosen by the runs of docs/results.md §2. Every other recipe
#: default is TrainConfig's own.
AUDIT_RECIPE: dict[str, Any] = {
    "backbone": "mlp",
    "epochs": 500,
    "batch_size": 128,
    "temperature": 0.5,
    "augmentation": "simclr",
    "crop_scale_min": 0.8,
    "jitter": 0.2,
}
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _recipe(name: str) -> Any:
    return AUDIT_RECIPE.get(name, _TRAIN_DEFAULTS[name])


#: non-members evaluated and reference images, by default (issue #10: >= 1000 for TPR@1%FPR)
POWER_IMAGES = 1000
_QUERY = QuerySettings()
_ATTACK = AttackSettings()


@dataclass
class EncoderSpec:
    """How one encoder (target or shadow) is trained: a subset of TrainConfig's fields.

    Defaults are TrainConfig's, overlaid with :data:`AUDIT_RECIPE`; every field name is a
    TrainConfig field, so a spec becomes a TrainConfig without listing fields by hand.
    """

    framework: str = _recipe("framework")
    backbone: str = _recipe("backbone")
    epochs: int = _recipe("epochs")
    batch_size: int = _recipe("batch_size")
    lr: float = _recipe("lr")
    weight_decay: float = _recipe("weight_decay")
    temperature: float | None = _recipe("temperature")
    augmentation: str | None = _recipe("augmentation")
    crop_scale_min: float | None = _recipe("crop_scale_min")
    jitter: float | None = _recipe("jitter")
    dataset: str | None = None  # None: the audit's dataset

    def train_fields(self) -> dict[str, Any]:
        """The recipe as TrainConfig keyword arguments (``temperature`` only where it exists)."""
        fields = dataclasses.asdict(self)
        fields.pop("dataset")
        if not _takes_temperature(self.framework):
            fields["temperature"] = None
        return fields


def _takes_temperature(framework: str) -> bool:
    """Only contrastive frameworks have a softmax temperature (SimCLR, MoCo v2)."""
    import inspect

    from lpla.ssl.frameworks import FRAMEWORKS

    return "temperature" in inspect.signature(FRAMEWORKS.get(framework)).parameters


@dataclass
class AuditConfig:
    """Everything that determines an audit's numbers (saved as ``config`` in results.json)."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    members: int = 128
    # None: POWER_IMAGES, or as many as the pool leaves (nonmembers first). TPR at 1% FPR needs
    # well over 100 non-members to mean anything, whatever the member set's size.
    nonmembers: int | None = None
    reference: int | None = None
    # S target/shadow pairs with different training seeds on the same split (--seeds)
    seeds: int = 1
    replicate: int = 0  # which of them this is (set by run_audit; offsets the training seeds)
    seed: int = 0
    stratify: bool = True  # every split role gets the pool's class proportions (labels known)
    target: EncoderSpec = field(default_factory=EncoderSpec)
    knowledge: str = "same"
    # An already trained target (checkpoint dir) to reuse instead of training one; its split must
    # be this audit's split (a study points cells that differ only in the shadow at one target).
    target_dir: str | None = None
    shadow_overrides: dict[str, Any] = field(default_factory=dict)
    views: int = _QUERY.views
    query_augmentation: str | None = _QUERY.augmentation  # None: the target's own
    clean_view0: bool = _QUERY.clean_view0
    layer: str = _QUERY.layer
    p: tuple[float, ...] = _ATTACK.p
    attacks: tuple[str, ...] | None = _ATTACK.attacks
    views_grid: tuple[int, ...] = _ATTACK.views_grid
    n_bootstrap: int = _ATTACK.n_bootstrap
    # per-attack hyper-parameters, e.g. {"encodermi-t": {"calibration": "reference"}}
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defenses: tuple[str, ...] = ()
    # M > 0: per-image calibration on M reference encoders trained on random member sets of the
    # candidates (a keep matrix), instead of one population shadow (--reference-models)
    reference_models: int = 0
    utility: bool = True
    utility_train_limit: int = 10000  # probe-training images (the test split is used whole)
    device: str = "auto"
    title: str = "lpla audit"

    def query_settings(self, device: str | None = None) -> QuerySettings:
        return QuerySettings(
            views=self.views,
            clean_view0=self.clean_view0,
            augmentation=self.query_augmentation,
            layer=self.layer,
            seed=self.seed,
            device=device or self.device,
        )

    def attack_settings(self) -> AttackSettings:
        return AttackSettings(
            attacks=self.attacks,
            p=self.p,
            views_grid=self.views_grid,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
            attack_params={k: dict(v) for k, v in self.attack_params.items()},
        )

    def validate(self) -> None:
        if self.members < 2:
            raise LplaError(f"--members must be at least 2, got {self.members}")
        if self.seeds < 1:
            raise LplaError(f"--seeds must be at least 1, got {self.seeds}")
        for flag, value in (("--nonmembers", self.nonmembers), ("--reference", self.reference)):
            if value is not None and value < 1:
                raise LplaError(f"{flag} must be at least 1, got {value}")
        self.query_settings().validate()
        self.attack_settings().validate()
        if self.target.epochs < 1:
            raise LplaError(f"--epochs must be at least 1, got {self.target.epochs}")
        if self.reference_models < 0:
            raise LplaError(f"--reference-models must be >= 0, got {self.reference_models}")
        sh_data = shadow_spec(self).dataset
        if self.reference_models and sh_data is not None and sh_data != self.dataset:
            raise LplaError(
                "--reference-models calibrates each candidate on encoders that trained on it, "
                f"so they must train on {self.dataset}, not {sh_data}; drop other-data from "
                "--knowledge"
            )
        for part in self.knowledge.split("+"):
            KNOWLEDGE.get(part)
        self._check_names()

    def _check_names(self) -> None:
        """Every registry name the audit will use, checked now: not after an hour of training."""
        from lpla.data.registry import DATASETS
        from lpla.ssl.augment import AUGMENTATIONS
        from lpla.ssl.backbones import BACKBONES
        from lpla.ssl.frameworks import FRAMEWORKS

        DATASETS.get(self.dataset)
        for spec in (self.target, shadow_spec(self)):
            FRAMEWORKS.get(spec.framework)
            BACKBONES.get(spec.backbone)
            if spec.augmentation is not None:
                AUGMENTATIONS.get(spec.augmentation)
            if spec.dataset is not None:
                DATASETS.get(spec.dataset)
        self._check_defenses()

    def _check_defenses(self) -> None:
        """Every --defense spec valid, given once, and training-side ones valid for the target's
        recipe (``early-stop`` below its epochs): before anything is trained."""
        from lpla.defenses import TrainingDefense, check_defense, defense_slug

        seen: dict[str, str] = {}
        for spec in self.defenses:
            defense = check_defense(spec)
            slug = defense_slug(spec)
            if slug in seen and spec != "none":
                raise LplaError(f"defense {spec} is the same as {seen[slug]}: give it once")
            seen[slug] = spec
            if isinstance(defense, TrainingDefense):
                defense.changes(self.target.train_fields())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["p"] = [p_label(p) for p in self.p]
        return d


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
