"""The one defenses registry and its spec language, shared by both kinds of defense.

A spec is ``NAME`` or ``NAME:LEVEL`` (``noise:0.1``, ``early-stop:100``). Every registered class
says its ``kind``: ``output`` (a function applied to every answer the encoder serves,
:mod:`lpla.defenses.output`) or ``training`` (a change to how the target encoder is trained,
:mod:`lpla.defenses.training`). One ``--defense`` flag takes both; the kind decides what an audit
does with it.
"""

from __future__ import annotations

from typing import ClassVar

from lpla.errors import LplaError
from lpla.registry import Registry

__all__ = [
    "DEFENSES",
    "KINDS",
    "NOT_OFFERED",
    "DefenseBase",
    "defense_kind",
    "defense_slug",
    "list_defenses",
    "parse_defense",
]

#: ``output``: applied to answers; ``training``: changes the target's training recipe.
KINDS = ("output", "training")

#: Defenses people ask for that lpla refuses, with the reason (asked for by name, they fail with
#: it instead of "unknown defense").
NOT_OFFERED = {
    "dp-sgd": (
        "dp-sgd is not offered: DP-SGD's epsilon assumes each image's gradient can be clipped "
        "on its own, but every lpla SSL loss couples the images of a batch (NT-Xent's negatives, "
        "BYOL/SimSiam/VICReg/Barlow Twins batch statistics, DINO's centering) and the projection "
        "heads and the mlp, cnn-small and ResNet backbones use BatchNorm, so a per-example clip "
        "does not bound one image's influence and the reported epsilon would be wrong "
        "(docs/method.md §7b); measure early-stop, strong-aug or weight-decay instead"
    ),
}


class DefenseBase:
    """What every defense has: a ``name``, a ``kind``, a ``level`` (the number after the colon of
    its spec; ``None`` = the default) and a ``seed``; parameters are validated in ``__init__``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def __init__(self, level: float | None = None, seed: int = 0) -> None:
        self.level = level
        self.seed = seed

    def get_params(self) -> dict[str, float | int | None]:
        return {"level": self.level, "seed": self.seed}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level!r}, seed={self.seed!r})"


DEFENSES: Registry[type[DefenseBase]] = Registry("defense")


def list_defenses(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered names matching ``pattern``; only those of one ``kind`` when given."""
    if kind is not None and kind not in KINDS:
        raise LplaError(f"unknown defense kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return [n for n in DEFENSES.names(pattern) if kind is None or DEFENSES.get(n).kind == kind]


def parse_defense(spec: str) -> tuple[str, float | None]:
    """``"noise:0.2"`` -> ``("noise", 0.2)``; ``"l2-normalize"`` -> ``("l2-normalize", None)``."""
    name, _, level = str(spec).strip().partition(":")
    if name in NOT_OFFERED:
        raise LplaError(NOT_OFFERED[name])
    DEFENSES.get(name)
    if not level:
        return name, None
    try:
        return name, float(level)
    except ValueError:
        raise LplaError(
            f"defense level in {spec!r} must be a number, e.g. noise:0.1 or early-stop:100"
        ) from None


def defense_kind(spec: str) -> str:
    """``output`` or ``training`` (``none`` is an output-side defense that changes nothing)."""
    return DEFENSES.get(parse_defense(spec)[0]).kind


def defense_slug(spec: str) -> str:
    """A directory name for a spec: ``early-stop:100`` -> ``early-stop-100``; equal specs
    (``noise:0.5``, ``noise:0.50``) get the same slug."""
    name, level = parse_defense(spec)
    return name if level is None else f"{name}-{level:g}"
