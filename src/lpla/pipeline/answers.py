"""One encoder's answers: a named collection of embeddings files.

``candidates`` (images whose membership is scored) is always there; every other entry is one of
:data:`lpla.attacks.features.ANSWER_ROLES` (reference population, baseline encoder...). Code that
must treat every answer alike (statistics, defenses, checks) loops over :attr:`files`, so a new
kind of query is one registry entry, not an edit in each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lpla.attacks.features import ANSWER_ROLES
from lpla.embeddings import EmbeddingsFile

__all__ = ["CANDIDATES", "EncoderAnswers"]

CANDIDATES = "candidates"


@dataclass
class EncoderAnswers:
    """``name``'s answers, by role: ``files["candidates"]`` plus any :data:`ANSWER_ROLES`."""

    name: str
    files: dict[str, EmbeddingsFile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if CANDIDATES not in self.files:
            raise ValueError(f"{self.name}: answers need a {CANDIDATES!r} entry")
        for role in self.files:
            if role != CANDIDATES:
                ANSWER_ROLES.get(role)

    @property
    def candidates(self) -> EmbeddingsFile:
        return self.files[CANDIDATES]

    @property
    def reference(self) -> EmbeddingsFile | None:
        return self.files.get("reference")

    @property
    def baseline(self) -> EmbeddingsFile | None:
        return self.files.get("baseline")

    def others(self) -> dict[str, EmbeddingsFile]:
        """Every answer but the candidates, by role."""
        return {role: f for role, f in self.files.items() if role != CANDIDATES}

    def add(self, role: str, answers: EmbeddingsFile) -> None:
        ANSWER_ROLES.get(role)
        self.files[role] = answers

    def map(self, fn: Callable[[str, EmbeddingsFile], EmbeddingsFile]) -> EncoderAnswers:
        """The same answers, each passed through ``fn(role, file)`` (e.g. a defense)."""
        return EncoderAnswers(self.name, {role: fn(role, f) for role, f in self.files.items()})
