"""The training run's configuration: one typed dataclass, validated, saved beside every checkpoint.

A checkpoint carries its full config, so a run describes itself (nanoGPT) and ``--resume`` can
rebuild everything from the output directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lpla.errors import LplaError
from lpla.io import read_json, write_text_atomic

OPTIMIZERS = ("adam", "adamw", "sgd")
ROLES = ("target", "shadow")
AMP_DTYPES = ("bf16", "fp16")
LR_SCHEDULES = ("cosine", "constant")

# Fields that change how a run is executed or reported, not which weights it produces: they may
# differ between an output directory's saved config and a resumed run.
RUNTIME_FIELDS = frozenset(
    {
        "out",
        "threads",
        "checkpoint_every",
        "data_root",
        "download",
        "utility",
        "utility_train_limit",
        "device",
        "amp",
        "devices",
        "num_nodes",
        "strategy",
        "resume",
        "progress",
    }
)


@dataclass
class TrainConfig:
    """Everything that decides an SSL encoder's weights, plus how to run and save it."""

    out: str = "runs/encoder"
    dataset: str = "fashion-mnist"
    framework: str = "simclr"
    backbone: str = "cnn-small"
    members: int = 512
    epochs: int = 100
    seed: int = 0
    # data and split
    role: str = "target"
    split: str | None = None  # a split.json; else make_split(dataset, ..., seed=seed)
    shadow_index: int | None = None  # paired-halves shadow i of num_shadows
    num_shadows: int | None = None
    image_size: int | None = None
    data_root: str | None = None
    download: bool = False
    # optimisation
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    sgd_momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    # framework and augmentation
    temperature: float | None = None  # shortcut for framework_params["temperature"]
    framework_params: dict[str, Any] = field(default_factory=dict)
    augmentation: str | None = None  # None: the framework's own recipe
    aug_strength: float = 1.0
    crop_scale_min: float | None = None
    jitter: float | None = None
    num_views: int | None = None  # None: the framework's (2)
    # execution
    device: str = "auto"
    amp: bool = True  # autocast on CUDA only
    amp_dtype: str = "bf16"
    threads: int | None = None
    checkpoint_every: int = 10
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "ddp"
    utility: bool = True
    utility_train_limit: int = 10000
    resume: bool = False  # continue the run saved in ``out`` (bit-identical on the CPU)
    progress: bool = True  # rich progress bar on stderr

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one clear LplaError for the first thing that is wrong."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise LplaError(msg)

        need(self.members >= 2, f"members must be >= 2, got {self.members}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        need(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}",
        )
        need(
            self.lr_schedule in LR_SCHEDULES,
            f"unknown lr_schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}",
        )
        need(self.role in ROLES, f"unknown role {self.role!r}; choose target or shadow")
        need(
            self.amp_dtype in AMP_DTYPES, f"amp_dtype must be bf16 or fp16, got {self.amp_dtype!r}"
        )
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0: only at the end)")
        need(self.devices >= 1 and self.num_nodes >= 1, "devices and num_nodes must be >= 1")
        need(self.strategy == "ddp", f"only strategy 'ddp' is supported, got {self.strategy!r}")
        need(self.aug_strength >= 0, f"aug_strength must be >= 0, got {self.aug_strength}")
        need(self.num_views is None or self.num_views >= 2, "num_views must be >= 2")
        need(self.temperature is None or self.temperature > 0, "temperature must be > 0")
        need(self.image_size is None or self.image_size >= 4, "image_size must be >= 4")
        need(self.utility_train_limit >= 10, "utility_train_limit must be >= 10")
        need(isinstance(self.framework_params, dict), "framework_params must be a mapping")
        self._check_names()
        if (self.shadow_index is None) != (self.num_shadows is None):
            raise LplaError("give --shadow-index and --num-shadows together (paired halves)")
        if self.num_shadows is not None and self.shadow_index is not None:
            need(
                self.num_shadows >= 2 and self.num_shadows % 2 == 0,
                f"num_shadows must be even and >= 2, got {self.num_shadows}",
            )
            need(
                0 <= self.shadow_index < self.num_shadows,
                f"shadow_index must be in 0..{self.num_shadows - 1}, got {self.shadow_index}",
            )
            need(self.role == "shadow", "paired-halves shadows need --role shadow")

    def _check_names(self) -> None:
        """Unknown registry names fail here, before anything is written to ``out``."""
        from lpla.ssl.augment import AUGMENTATIONS
        from lpla.ssl.backbones import BACKBONES
        from lpla.ssl.frameworks import FRAMEWORKS

        BACKBONES.get(self.backbone)
        FRAMEWORKS.get(self.framework)
        if self.augmentation is not None:
            AUGMENTATIONS.get(self.augmentation)

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LplaError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"known ones: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise LplaError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML or JSON config (a checkpoint.json's ``config`` section is accepted too)."""
        return cls.from_dict(load_config_dict(path), source=str(path))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            import yaml

            write_text_atomic(p, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            write_text_atomic(p, json.dumps(self.to_dict(), indent=2) + "\n")

    def identity(self) -> dict[str, Any]:
        """The settings that decide the weights (compared when an output directory exists)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def builtin_configs() -> dict[str, Path]:
    """Configs shipped in ``lpla/configs``: name (file stem) -> path."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A file path, or the name of a shipped config (``cifar10-resnet18-simclr-gpu``)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    shipped = builtin_configs()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    raise LplaError(
        f"config {str(path_or_name)!r} not found; give a YAML/JSON file or one of: "
        f"{', '.join(shipped) or 'none'}"
    )


def load_config_dict(path: str | Path) -> dict[str, Any]:
    p = resolve_config_path(path)
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LplaError(f"config {p} is not valid YAML: {exc}".splitlines()[0]) from None
    else:
        data = read_json(p, "config")
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "format" in data:
        data = data["config"]  # a checkpoint.json
    if not isinstance(data, dict):
        raise LplaError(f"config {p} must be a mapping of settings, got {type(data).__name__}")
    return data
