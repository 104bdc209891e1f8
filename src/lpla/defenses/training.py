"""Training-side defenses: changes to how the target encoder is trained.

A training-side defense is a function from the target's recipe (its ``TrainConfig`` fields) to the
fields it changes::

    defense = create_training_defense("early-stop:100")
    defense.changes({"epochs": 500, ...})   # {"epochs": 100}

``lpla audit`` trains a defended target with the changed recipe, on the same members with the same
seed, queries and attacks it like the target and measures its utility. What each one changes:

- ``early-stop:EPOCHS``: train for EPOCHS epochs instead of the recipe's (fewer, or it would not
  stop early). The learning-rate schedule spans the shorter run, as when an owner trains less.
- ``strong-aug:SCALE``: random crops down to SCALE of the image (``crop_scale_min``) and colour
  jitter of at least :data:`STRONG_JITTER`. Memorisation of single images needs weak augmentation;
  PartCrop's authors defend by changing the same knob, the crop scale range (SCSR).
- ``weight-decay:WD``: weight decay WD with a decoupled-decay optimizer: Adam becomes AdamW
  (Loshchilov & Hutter 2019), because Adam's coupled L2 term is divided by its adaptive step size
  and does not decay the weights by the amount given; SGD keeps SGD (there L2 and decay agree).

DP-SGD is not offered: see :data:`lpla.defenses.base.NOT_OFFERED`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lpla.defenses.base import DEFENSES, DefenseBase
from lpla.errors import LplaError

__all__ = [
    "STRONG_JITTER",
    "EarlyStopDefense",
    "StrongAugmentationDefense",
    "TrainingDefense",
    "WeightDecayDefense",
]

#: colour-jitter magnitude of ``strong-aug``: SimCLR's (Chen et al. 2020) paper value
STRONG_JITTER = 0.4


class TrainingDefense(DefenseBase):
    """Base class: ``changes(recipe)`` returns the TrainConfig fields the defense sets.

    ``recipe`` holds the target's TrainConfig fields (at least those the defense reads); a level
    that would not defend against this recipe (``early-stop`` at or past its epochs) is an error.
    """

    kind: ClassVar[str] = "training"

    def changes(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """The TrainConfig fields to change, for a target trained with ``recipe``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line on what it does, for reports and logs."""
        return DEFENSES.summary(self.name)


def _need_level(name: str, level: float | None, example: str) -> float:
    if level is None:
        raise LplaError(f"{name} needs a level, e.g. {example}")
    return float(level)


@DEFENSES.register(
    "early-stop",
    "training-side: train the target for EPOCHS epochs, fewer than its recipe's (early-stop:100)",
)
class EarlyStopDefense(TrainingDefense):
    name = "early-stop"

    def __init__(self, level: float | None = None, seed: int = 0) -> None:
        epochs = _need_level(self.name, level, "early-stop:100")
        if epochs != int(epochs) or epochs < 1:
            raise LplaError(f"early-stop takes a whole number of epochs >= 1, got {epochs:g}")
        super().__init__(level, seed)

    @property
    def epochs(self) -> int:
        return int(_need_level(self.name, self.level, "early-stop:100"))

    def changes(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        full = recipe.get("epochs")
        if full is not None and self.epochs >= int(full):
            raise LplaError(
                f"early-stop:{self.epochs} does not stop early: the target trains for {full} "
                f"epochs; give fewer, e.g. early-stop:{max(1, int(full) // 5)}"
            )
        return {"epochs": self.epochs}


@DEFENSES.register(
    "strong-aug",
    "training-side: stronger augmentation: crops down to SCALE of the image and colour jitter "
    f">= {STRONG_JITTER} (default strong-aug:0.2)",
)
class StrongAugmentationDefense(TrainingDefense):
    name = "strong-aug"

    def __init__(self, level: float | None = None, seed: int = 0) -> None:
        scale = 0.2 if level is None else float(level)
        if not 0.0 < scale <= 1.0:
            raise LplaError(f"strong-aug takes a crop scale in (0, 1], got {scale:g}")
        super().__init__(level, seed)

    @property
    def crop_scale_min(self) -> float:
        return 0.2 if self.level is None else float(self.level)

    def changes(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        current = recipe.get("crop_scale_min")
        if current is not None and self.crop_scale_min > float(current):
            raise LplaError(
                f"strong-aug:{self.crop_scale_min:g} crops less than the target's recipe "
                f"(crop_scale_min {float(current):g}); give a smaller scale, e.g. strong-aug:0.2"
            )
        jitter = recipe.get("jitter")
        # None: the framework's own recipe, whose jitter is already the paper's (SimCLR 0.4)
        stronger = None if jitter is None else max(float(jitter), STRONG_JITTER)
        return {"crop_scale_min": self.crop_scale_min, "jitter": stronger}


@DEFENSES.register(
    "weight-decay",
    "training-side: weight decay WD with decoupled decay (Adam -> AdamW; SGD stays SGD) "
    "(weight-decay:0.5)",
)
class WeightDecayDefense(TrainingDefense):
    name = "weight-decay"

    def __init__(self, level: float | None = None, seed: int = 0) -> None:
        decay = _need_level(self.name, level, "weight-decay:0.5")
        if not decay > 0:
            raise LplaError(f"weight-decay must be > 0, got {decay:g}")
        super().__init__(level, seed)

    @property
    def weight_decay(self) -> float:
        return _need_level(self.name, self.level, "weight-decay:0.5")

    def changes(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        optimizer = recipe.get("optimizer") or "adam"
        return {
            "weight_decay": self.weight_decay,
            "optimizer": "adamw" if optimizer == "adam" else optimizer,
        }
