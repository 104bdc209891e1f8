"""One small registry type shared by datasets, backbones, frameworks, attacks and defenses.

Modelled on timm's ``register_model``/``create_model``/``list_models``: a name maps to a factory,
tests loop over every registered name, and an unknown name is a clear user error that lists
the known ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lpla.errors import LplaError

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    factory: T
    summary: str = ""


@dataclass
class Registry(Generic[T]):
    """Name -> factory map with readable errors."""

    kind: str
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", "one line on what it is")``."""

        def deco(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, factory, summary)
            return factory

        return deco

    def add(self, name: str, factory: T, summary: str = "") -> None:
        self.register(name, summary)(factory)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].factory
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise LplaError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def summary(self, name: str) -> str:
        self.get(name)
        return self._entries[name].summary

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
