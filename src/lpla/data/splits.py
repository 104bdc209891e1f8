"""Membership splits: which images are members of which encoder, saved as a seeded manifest.

All indices point into a dataset's *train* split (the pool). Roles are pairwise disjoint:

- ``target_member``: the target encoder's training images;
- ``target_nonmember``: held out, same distribution, as many as the members (balanced evaluation);
- ``shadow_member`` / ``shadow_nonmember``: the attacker's shadow encoder's data (disjoint from the target's);
- ``reference``: population images that are members of neither, for calibration.

The same (dataset, pool size, sizes, seed) always gives the same split. The paired-halves design
(privacy-meter, LiRA) for many shadows is :class:`PairedHalves`: every population image is IN for
exactly half of the shadow encoders, stored as a boolean (encoders x images) matrix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpla.errors import LplaError
from lpla.io import atomic_path, read_json, write_json_atomic

ROLES = ("target_member", "target_nonmember", "shadow_member", "shadow_nonmember", "reference")
SPLIT_FORMAT = 1


def _fingerprint(roles: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for role in ROLES:
        h.update(role.encode())
        h.update(np.asarray(roles.get(role, []), dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass
class MembershipSplit:
    dataset: str
    pool_size: int
    seed: int
    roles: dict[str, np.ndarray]
    pool_split: str = "train"
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.roles = {r: np.asarray(self.roles.get(r, []), dtype=np.int64) for r in ROLES}
        self.sizes = {r: int(len(v)) for r, v in self.roles.items()}
        self.validate()

    def validate(self) -> None:
        for role, idx in self.roles.items():
            if idx.size and (idx.min() < 0 or idx.max() >= self.pool_size):
                raise LplaError(f"split role {role} has indices outside 0..{self.pool_size - 1}")
            if len(np.unique(idx)) != len(idx):
                raise LplaError(f"split role {role} lists an image twice")
        owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(self.roles.values())])
        allidx = np.concatenate(list(self.roles.values()))
        uniq, first, counts = np.unique(allidx, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = int(uniq[counts > 1][0])
            roles = [ROLES[int(o)] for o in owner[allidx == dup]]
            raise LplaError(f"split roles {roles[0]} and {roles[1]} overlap (image {dup}); they must be disjoint")

    def indices(self, role: str) -> np.ndarray:
        if role not in self.roles:
            raise LplaError(f"unknown split role {role!r}; choose one of: {', '.join(ROLES)}")
        return self.roles[role]

    def population(self) -> np.ndarray:
        """Candidate images of many-shadow designs: the four target/shadow roles together."""
        return np.sort(np.concatenate([self.roles[r] for r in ROLES[:4]]))

    def fingerprint(self) -> str:
        return _fingerprint(self.roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT, "dataset": self.dataset, "pool_split": self.pool_split,
            "pool_size": self.pool_size, "seed": self.seed, "sizes": self.sizes,
            "fingerprint": self.fingerprint(), "roles": {r: v.tolist() for r, v in self.roles.items()},
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> MembershipSplit:
        raw = read_json(path, what="split manifest")
        try:
            if raw.get("format") != SPLIT_FORMAT:
                raise LplaError(f"{path}: unsupported split format {raw.get('format')!r}")
            roles = {r: np.asarray(raw["roles"][r], dtype=np.int64) for r in ROLES}
            split = cls(dataset=str(raw["dataset"]), pool_size=int(raw["pool_size"]), seed=int(raw["seed"]),
                        roles=roles, pool_split=str(raw.get("pool_split", "train")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LplaError(f"{path} is not a valid split manifest ({exc!r}); re-create it with the same seed") from None
        if raw.get("fingerprint") != split.fingerprint():
            raise LplaError(f"{path}: fingerprint does not match its roles (edited or corrupt); re-create it")
        return split


def make_split(dataset: str, pool_size: int, *, members: int, seed: int, shadow_members: int | None = None,
               nonmembers: int | None = None, reference: int | None = None) -> MembershipSplit:
    """A seeded, balanced, disjoint split of ``pool_size`` images (see the module docstring)."""
    if members < 1:
        raise LplaError(f"members must be at least 1, got {members}")
    n_sh = members if shadow_members is None else shadow_members
    n_non = members if nonmembers is None else nonmembers
    if n_sh < 0 or n_non < 0 or (reference is not None and reference < 0):
        raise LplaError("split sizes must be non-negative")
    fixed = members + n_non + 2 * n_sh
    if fixed > pool_size:
        raise LplaError(f"split needs {fixed} images (members {members}, non-members {n_non}, shadow 2x{n_sh}) "
                        f"but {dataset}/train has {pool_size}; lower --members or use a larger dataset")
    n_ref = min(members, pool_size - fixed) if reference is None else reference
    if fixed + n_ref > pool_size:
        raise LplaError(f"split needs {fixed + n_ref} images with reference {n_ref} but {dataset}/train has "
                        f"{pool_size}; lower --reference or --members")
    perm = np.random.default_rng(seed).permutation(pool_size)
    sizes = (members, n_non, n_sh, n_sh, n_ref)
    bounds = np.cumsum((0, *sizes))
    roles = {r: np.sort(perm[bounds[i]: bounds[i + 1]]) for i, r in enumerate(ROLES)}
    return MembershipSplit(dataset=dataset, pool_size=pool_size, seed=seed, roles=roles)


@dataclass
class PairedHalves:
    """Many-shadow design: ``membership[i, j]`` says whether population image ``index[j]`` trains shadow i."""

    index: np.ndarray
    membership: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64)
        self.membership = np.asarray(self.membership, dtype=bool)
        if self.membership.ndim != 2 or self.membership.shape[1] != len(self.index):
            raise LplaError(f"membership matrix must be [shadows, {len(self.index)}], got {self.membership.shape}")

    @property
    def num_shadows(self) -> int:
        return int(self.membership.shape[0])

    def members_of(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_shadows:
            raise LplaError(f"shadow index {i} outside 0..{self.num_shadows - 1}")
        return self.index[self.membership[i]]

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            np.savez(tmp, index=self.index, membership=self.membership, seed=np.int64(self.seed),
                     meta=np.array(json.dumps({"format": 1, "kind": "paired-halves"})))

    @classmethod
    def load(cls, path: str | Path) -> PairedHalves:
        p = Path(path)
        if not p.is_file():
            raise LplaError(f"membership matrix not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(index=z["index"], membership=z["membership"], seed=int(z["seed"]))
        except (KeyError, ValueError, OSError) as exc:
            raise LplaError(f"{p} is not a paired-halves membership file ({exc}); re-create it") from None


def make_paired_halves(population: np.ndarray, num_shadows: int, seed: int) -> PairedHalves:
    """Each population image is IN for exactly ``num_shadows / 2`` shadows (a seeded half per column)."""
    if num_shadows < 2 or num_shadows % 2:
        raise LplaError(f"--num-shadows must be even and at least 2, got {num_shadows}")
    pop = np.asarray(population, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((num_shadows, len(pop))), axis=0)
    membership = order < num_shadows // 2
    return PairedHalves(index=pop, membership=membership, seed=seed)
