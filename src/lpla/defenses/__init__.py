"""Defenses against membership inference, and what they cost in utility.

Two kinds behind one registry (:data:`DEFENSES`) and one spec language (``NAME[:LEVEL]``):

- **output-side** (:mod:`lpla.defenses.output`): a function of ONE answer the encoder serves
  (``noise``, ``quantize``, ``l2-normalize``, ``none``), parameters fixed once from the encoder's
  reference answers, randomness from ``(seed, image index, view)``::

      defense = create_defense("noise:0.1", seed=0).fit(reference_embeddings)  # [N, K, D]
      defended = defense.apply(embeddings, index)                              # [N, K, D]

- **training-side** (:mod:`lpla.defenses.training`): a change to the target's training recipe
  (``early-stop``, ``strong-aug``, ``weight-decay``)::

      create_training_defense("early-stop:100").changes(recipe)  # {"epochs": 100}

``lpla audit --defense SPEC`` measures either kind: the same attacks on the defended answers or
the defended encoder, and the utility cost (:mod:`lpla.defenses.cost`: linear probe and kNN on
what the defended encoder serves). DP-SGD is refused with the reason (``NOT_OFFERED``).
"""

from __future__ import annotations

from lpla.defenses.base import (
    DEFENSES,
    KINDS,
    NOT_OFFERED,
    DefenseBase,
    defense_kind,
    defense_slug,
    list_defenses,
    parse_defense,
)
from lpla.defenses.output import (
    Defense,
    DefenseNotFittedError,
    L2NormalizeDefense,
    NoDefense,
    NoiseDefense,
    QuantizeDefense,
)
from lpla.defenses.training import (
    STRONG_JITTER,
    EarlyStopDefense,
    StrongAugmentationDefense,
    TrainingDefense,
    WeightDecayDefense,
)
from lpla.errors import LplaError

__all__ = [
    "DEFENSES",
    "KINDS",
    "NOT_OFFERED",
    "STRONG_JITTER",
    "Defense",
    "DefenseBase",
    "DefenseNotFittedError",
    "EarlyStopDefense",
    "L2NormalizeDefense",
    "NoDefense",
    "NoiseDefense",
    "QuantizeDefense",
    "StrongAugmentationDefense",
    "TrainingDefense",
    "WeightDecayDefense",
    "check_defense",
    "create_defense",
    "create_training_defense",
    "defense_kind",
    "defense_slug",
    "list_defenses",
    "parse_defense",
]


def check_defense(spec: str, seed: int = 0) -> DefenseBase:
    """Any defense from its spec, its level validated (the name check of a config)."""
    name, level = parse_defense(spec)
    return DEFENSES.get(name)(level, seed)


def create_defense(spec: str, seed: int = 0) -> Defense:
    """An unfitted output-side defense from its spec (``"quantize:4"``); fit it before applying
    it. A training-side spec is an error that says where it can be measured."""
    defense = check_defense(spec, seed)
    if not isinstance(defense, Defense):
        raise LplaError(
            f"{spec} is a training-side defense: it changes how the target encoder is trained, "
            "so only an lpla audit that trains the target can measure it (not --encoder, "
            "--target or embeddings files); output-side ones: "
            + ", ".join(list_defenses(kind="output"))
        )
    return defense


def create_training_defense(spec: str) -> TrainingDefense:
    """A training-side defense from its spec (``"early-stop:100"``)."""
    defense = check_defense(spec)
    if not isinstance(defense, TrainingDefense):
        raise LplaError(
            f"{spec} is an output-side defense (applied to answers), not a change to training; "
            "training-side ones: " + ", ".join(list_defenses(kind="training"))
        )
    return defense
