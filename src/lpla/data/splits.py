"""Membership splits: which images are members of which encoder, saved as a seeded manifest.

All indices point into a dataset's *train* split (the pool). Roles are pairwise disjoint:

- ``target_member``: the target encoder's training images;
- ``target_nonmember``: held out, same distribution, as many as the members (balanced evaluation);
- ``shadow_member`` / ``shadow_nonmember``: the attacker's shadow data, disjoint from the target's;
- ``reference``: population images that are members of neither, for calibration.

The same (dataset, pool size, sizes, seed) always gives the same split. The paired-halves design
(privacy-meter, LiRA) for many shadows is :class:`PairedHalves`: every population image is IN for
exactly half of the shadow encoders, stored as a boolean (encoders x images) matrix.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpla.errors import LplaError
from lpla.io import atomic_path, read_json, write_json_atomic

ROLES = ("target_member", "target_nonmember", "shadow_member", "shadow_nonmember", "reference")
SPLIT_FORMAT = 1
PAIRED_HALVES_FORMAT = 1


def roles_fingerprint(roles: dict[str, np.ndarray]) -> str:
    """sha256 over the roles in :data:`ROLES` order, each as sorted little-endian int64."""
    h = hashlib.sha256()
    for role in ROLES:
        h.update(role.encode())
        idx = np.sort(np.asarray(roles.get(role, []), dtype=np.int64))
        h.update(len(idx).to_bytes(8, "little"))
        h.update(idx.astype("<i8").tobytes())
    return h.hexdigest()


def _is_int(value: Any) -> bool:
    """A real integer (Python or numpy), not a bool, float or string."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _as_index_array(values: Any, what: str) -> np.ndarray:
    """A 1-D int64 array from a list of integers, refusing floats, bools, strings and nesting."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
            raise LplaError(
                f"{what} must be a 1-D array of integers, got {values.dtype} {list(values.shape)}"
            )
        return values.astype(np.int64)
    if not isinstance(values, list | tuple):
        raise LplaError(f"{what} must be a list of integers, got {type(values).__name__}")
    for value in values:
        if not _is_int(value):
            raise LplaError(f"{what} must hold integers only, found {value!r}")
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass
class MembershipSplit:
    """A validated assignment of pool images to the five :data:`ROLES` (sorted, disjoint)."""

    dataset: str
    pool_size: int
    seed: int
    roles: dict[str, np.ndarray]
    pool_split: str = "train"
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown:
            raise LplaError(f"unknown split role(s) {unknown}; roles are: {', '.join(ROLES)}")
        if not _is_int(self.pool_size) or self.pool_size < 1:
            raise LplaError(f"split pool_size must be a positive integer, got {self.pool_size!r}")
        if not _is_int(self.seed):
            raise LplaError(f"split seed must be an integer, got {self.seed!r}")
        self.pool_size, self.seed = int(self.pool_size), int(self.seed)
        self.roles = {
            r: np.sort(_as_index_array(self.roles.get(r, []), f"split role {r}")) for r in ROLES
        }
        self.sizes = {r: len(v) for r, v in self.roles.items()}
        self.validate()

    def validate(self) -> None:
        """Indices inside the pool, no duplicates within or across roles."""
        for role, idx in self.roles.items():
            if idx.size and (idx.min() < 0 or idx.max() >= self.pool_size):
                raise LplaError(
                    f"split role {role} has indices outside 0..{self.pool_size - 1} "
                    f"(the {self.dataset}/{self.pool_split} pool)"
                )
            if idx.size > 1 and (np.diff(idx) == 0).any():
                twice = int(idx[1:][np.diff(idx) == 0][0])
                raise LplaError(f"split role {role} lists image {twice} twice")
        for i, a in enumerate(ROLES):
            for b in ROLES[i + 1 :]:
                common = np.intersect1d(self.roles[a], self.roles[b])
                if common.size:
                    raise LplaError(
                        f"split roles {a} and {b} overlap (image {int(common[0])}); "
                        "they must be disjoint"
                    )

    def indices(self, role: str) -> np.ndarray:
        """Sorted dataset indices of ``role`` (one of :data:`ROLES`)."""
        if role not in self.roles:
            raise LplaError(f"unknown split role {role!r}; choose one of: {', '.join(ROLES)}")
        return self.roles[role]

    def population(self) -> np.ndarray:
        """Candidate images of many-shadow designs: the four target/shadow roles together."""
        return np.sort(np.concatenate([self.roles[r] for r in ROLES[:4]]))

    def fingerprint(self) -> str:
        return roles_fingerprint(self.roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT,
            "dataset": self.dataset,
            "pool_split": self.pool_split,
            "pool_size": self.pool_size,
            "seed": self.seed,
            "sizes": dict(self.sizes),
            "fingerprint": self.fingerprint(),
            "roles": {r: v.tolist() for r, v in self.roles.items()},
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any, where: str = "split manifest") -> MembershipSplit:
        """Validate a manifest dict (types, ranges, disjointness, fingerprint) into a split."""
        if not isinstance(raw, dict):
            raise LplaError(
                f"{where} is not a split manifest (a JSON {type(raw).__name__}, "
                "not an object); re-create it"
            )
        if raw.get("format") != SPLIT_FORMAT:
            raise LplaError(
                f"{where}: unsupported split format {raw.get('format')!r} (this lpla "
                f"reads format {SPLIT_FORMAT}); re-create it or upgrade lpla"
            )
        missing = [
            k for k in ("dataset", "pool_size", "seed", "roles", "fingerprint") if k not in raw
        ]
        if missing:
            raise LplaError(f"{where} lacks {', '.join(missing)}; re-create it")
        roles_raw = raw["roles"]
        if not isinstance(roles_raw, dict) or set(roles_raw) != set(ROLES):
            raise LplaError(f"{where}: 'roles' must have exactly the keys {', '.join(ROLES)}")
        pool_split = raw.get("pool_split", "train")
        if not isinstance(raw["dataset"], str) or not isinstance(pool_split, str):
            raise LplaError(f"{where}: 'dataset' and 'pool_split' must be strings")
        try:
            split = cls(
                dataset=raw["dataset"],
                pool_size=raw["pool_size"],
                seed=raw["seed"],
                roles={r: _as_index_array(roles_raw[r], f"role {r}") for r in ROLES},
                pool_split=pool_split,
            )
        except LplaError as exc:
            raise LplaError(f"{where}: {exc.message}; re-create it with the same seed") from None
        if raw["fingerprint"] != split.fingerprint():
            raise LplaError(
                f"{where}: fingerprint does not match its roles (edited or corrupt); "
                "re-create it with the same seed"
            )
        sizes = raw.get("sizes")
        if sizes is not None and sizes != split.sizes:
            raise LplaError(f"{where}: 'sizes' {sizes} disagree with its roles {split.sizes}")
        return split

    @classmethod
    def load(cls, path: str | Path) -> MembershipSplit:
        return cls.from_dict(read_json(path, what="split manifest"), where=str(path))


def make_split(
    dataset: str,
    pool_size: int,
    *,
    members: int,
    seed: int,
    shadow_members: int | None = None,
    nonmembers: int | None = None,
    reference: int | None = None,
    stratify: np.ndarray | None = None,
) -> MembershipSplit:
    """A seeded, balanced, disjoint split of ``pool_size`` images (see the module docstring).

    Defaults: as many target non-members and shadow members as ``members``, as many shadow
    non-members as shadow members, and ``reference = min(members, what is left)``.
    One ``numpy.random.default_rng(seed)`` permutation of the pool is cut into the roles in
    :data:`ROLES` order, so the split is a pure function of its arguments.

    ``stratify`` (the pool's labels) orders the permutation so that every role gets the pool's
    class proportions (up to one image per class). With small member sets this removes a nuisance
    that otherwise dominates norm statistics: embedding norms differ far more between classes than
    between members and non-members, so a chance surplus of one class among the members reads as
    (or hides) membership.
    """
    if not _is_int(members) or members < 1:
        raise LplaError(f"--members must be at least 1, got {members!r}")
    if not _is_int(seed) or seed < 0:
        raise LplaError(f"--seed must be a non-negative integer, got {seed!r}")
    n_shadow = members if shadow_members is None else shadow_members
    n_nonmember = members if nonmembers is None else nonmembers
    for flag, value in (
        ("--shadow-members", n_shadow),
        ("--nonmembers", n_nonmember),
        ("--reference", reference),
    ):
        if value is not None and (not _is_int(value) or value < 0):
            raise LplaError(f"{flag} must be a non-negative integer, got {value!r}")
    fixed = members + n_nonmember + 2 * n_shadow
    n_reference = min(members, max(pool_size - fixed, 0)) if reference is None else reference
    needed = fixed + n_reference
    if needed > pool_size:
        raise LplaError(
            f"split needs {needed} images (target {members} + {n_nonmember}, shadow "
            f"{n_shadow} + {n_shadow}, reference {n_reference}) but {dataset}/train has "
            f"{pool_size}; lower --members or use a larger dataset"
        )
    if stratify is None:
        perm = np.random.default_rng(int(seed)).permutation(pool_size)
    else:
        perm = _stratified_order(np.asarray(stratify), pool_size, int(seed))
    bounds = np.cumsum((0, members, n_nonmember, n_shadow, n_shadow, n_reference))
    roles = {r: perm[bounds[i] : bounds[i + 1]] for i, r in enumerate(ROLES)}
    return MembershipSplit(dataset=dataset, pool_size=int(pool_size), seed=int(seed), roles=roles)


def labelled(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Members then non-members as one index array, with the matching int8 member flags (1/0)."""
    index = np.concatenate([members, nonmembers]).astype(np.int64)
    flags = np.concatenate([np.ones(len(members), np.int8), np.zeros(len(nonmembers), np.int8)])
    return index, flags


def _stratified_order(labels: np.ndarray, pool_size: int, seed: int) -> np.ndarray:
    """A seeded permutation whose every contiguous slice keeps the class proportions."""
    if labels.shape != (pool_size,):
        raise LplaError(
            f"stratify labels must have one entry per pool image ({pool_size}), got {labels.shape}"
        )
    rng = np.random.default_rng(seed)
    key = np.empty(pool_size, dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = rng.permutation(len(members))
        # Spread each class evenly over [0, 1): rank / count, jittered within its slot.
        key[members[order]] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return np.argsort(key, kind="stable")


# ---- many shadows: paired halves ---------------------------------------------------------------
@dataclass
class PairedHalves:
    """``membership[i, j]``: population image ``index[j]`` is a member of shadow encoder ``i``.

    Every column has exactly ``num_shadows / 2`` True entries, so each image has as many IN
    as OUT shadows (the design LiRA's per-image Gaussians need).
    """

    index: np.ndarray
    membership: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        self.index = _as_index_array(np.asarray(self.index), "paired-halves index")
        membership = np.asarray(self.membership)
        if membership.dtype != np.bool_:
            raise LplaError(f"paired-halves membership must be bool, got {membership.dtype}")
        self.membership = membership
        m = membership.shape[0] if membership.ndim == 2 else 0
        if membership.ndim != 2 or membership.shape[1] != len(self.index):
            raise LplaError(
                f"paired-halves membership must be [shadows, {len(self.index)}], "
                f"got {list(membership.shape)}"
            )
        if m < 2 or m % 2:
            raise LplaError(f"paired halves need an even number of shadows >= 2, got {m}")
        if len(self.index) == 0:
            raise LplaError("paired halves need a non-empty population")
        if self.index.min() < 0 or len(np.unique(self.index)) != len(self.index):
            raise LplaError("paired-halves index must hold distinct non-negative dataset indices")
        counts = membership.sum(axis=0)
        if (counts != m // 2).any():
            j = int(np.flatnonzero(counts != m // 2)[0])
            raise LplaError(
                f"paired-halves image {int(self.index[j])} is IN for {int(counts[j])} "
                f"of {m} shadows, not exactly {m // 2}"
            )

    @property
    def num_shadows(self) -> int:
        return int(self.membership.shape[0])

    def _check_shadow(self, i: int) -> int:
        if not _is_int(i) or not 0 <= i < self.num_shadows:
            raise LplaError(f"shadow index {i!r} outside 0..{self.num_shadows - 1}")
        return int(i)

    def members_of(self, i: int) -> np.ndarray:
        """Dataset indices that train shadow ``i``."""
        return self.index[self.membership[self._check_shadow(i)]]

    def nonmembers_of(self, i: int) -> np.ndarray:
        """Population indices held out from shadow ``i`` (its OUT images)."""
        return self.index[~self.membership[self._check_shadow(i)]]

    def save(self, path: str | Path) -> None:
        meta = {
            "format": PAIRED_HALVES_FORMAT,
            "kind": "paired-halves",
            "seed": self.seed,
            "num_shadows": self.num_shadows,
            "population": len(self.index),
        }
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(
                tmp,
                index=self.index,
                membership=self.membership,
                seed=np.int64(self.seed),
                meta=np.array(json.dumps(meta)),
            )

    @classmethod
    def load(cls, path: str | Path) -> PairedHalves:
        p = Path(path)
        if not p.is_file():
            raise LplaError(f"paired-halves file not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                index, membership, seed = z["index"], z["membership"], int(z["seed"])
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as exc:
            raise LplaError(f"{p} is not a paired-halves file ({exc}); re-create it") from None
        if (
            not isinstance(meta, dict)
            or meta.get("kind") != "paired-halves"
            or meta.get("format") != PAIRED_HALVES_FORMAT
        ):
            raise LplaError(
                f"{p} is not a paired-halves file of format {PAIRED_HALVES_FORMAT}; re-create it"
            )
        try:
            return cls(index=index, membership=membership, seed=seed)
        except LplaError as exc:
            raise LplaError(f"{p}: {exc.message}; re-create it") from None


def make_paired_halves(population: np.ndarray, num_shadows: int, seed: int) -> PairedHalves:
    """Each population image is IN for exactly ``num_shadows / 2`` shadows.

    Per column, the IN shadows are a uniformly random half of the rows (ranks of seeded
    uniform draws), so the design is reproducible from (population, num_shadows, seed).
    """
    if not _is_int(num_shadows) or num_shadows < 2 or num_shadows % 2:
        raise LplaError(f"--num-shadows must be even and at least 2, got {num_shadows!r}")
    pop = _as_index_array(np.asarray(population), "population")
    if not _is_int(seed) or seed < 0:
        raise LplaError(f"--seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    ranks = np.argsort(np.argsort(rng.random((num_shadows, len(pop))), axis=0), axis=0)
    return PairedHalves(index=pop, membership=ranks < num_shadows // 2, seed=int(seed))


KEEP_MATRIX_FORMAT = 1


@dataclass
class KeepMatrix:
    """``keep[r, j]``: candidate ``index[j]`` is a member of reference encoder ``r``.

    The per-image calibration design of ``lpla audit --reference-models M`` (LiRA's keep matrix):
    the target and M reference encoders train on subsets of one candidate pool. Every reference
    trains on exactly ``members`` candidates (the target's member count, so one recipe gives the
    same steps per epoch), and each candidate is IN for as many references as the others, give
    or take one. ``target`` is the target's own membership over the same candidates, stored so
    the file describes the whole design.
    """

    index: np.ndarray
    keep: np.ndarray
    target: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        self.index = _as_index_array(np.asarray(self.index), "keep-matrix index")
        keep, target = np.asarray(self.keep), np.asarray(self.target)
        if keep.dtype != np.bool_ or target.dtype != np.bool_:
            raise LplaError("keep matrix and target membership must be boolean")
        n = len(self.index)
        if keep.ndim != 2 or keep.shape[1] != n or target.shape != (n,):
            raise LplaError(
                f"keep matrix must be [references, {n}] with a target row of {n}; got "
                f"{list(keep.shape)} and {list(target.shape)}"
            )
        if keep.shape[0] < 1:
            raise LplaError("a keep matrix needs at least one reference encoder")
        if n == 0 or len(np.unique(self.index)) != n or self.index.min() < 0:
            raise LplaError("keep-matrix index must hold distinct non-negative dataset indices")
        self.keep, self.target = keep, target

    @property
    def num_references(self) -> int:
        return int(self.keep.shape[0])

    def members_of(self, r: int) -> np.ndarray:
        """Sorted dataset indices that train reference ``r``."""
        return np.sort(self.index[self.keep[r]])

    def nonmembers_of(self, r: int) -> np.ndarray:
        """Sorted candidates held out from reference ``r`` (its OUT images)."""
        return np.sort(self.index[~self.keep[r]])

    def summary(self) -> dict[str, Any]:
        """What results.json records of the design: sizes and how balanced it is."""
        counts = self.keep.sum(axis=0)
        return {
            "references": self.num_references,
            "candidates": len(self.index),
            "members_per_reference": int(self.keep[0].sum()),
            "in_per_candidate": {"min": int(counts.min()), "max": int(counts.max())},
            "seed": self.seed,
        }

    def save(self, path: str | Path) -> None:
        meta = {"format": KEEP_MATRIX_FORMAT, "kind": "keep-matrix"} | self.summary()
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(
                tmp,
                index=self.index,
                keep=self.keep,
                target=self.target,
                seed=np.int64(self.seed),
                meta=np.array(json.dumps(meta)),
            )

    @classmethod
    def load(cls, path: str | Path) -> KeepMatrix:
        p = Path(path)
        if not p.is_file():
            raise LplaError(f"keep-matrix file not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                index, keep, target = z["index"], z["keep"], z["target"]
                seed = int(z["seed"])
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as exc:
            raise LplaError(f"{p} is not a keep-matrix file ({exc}); re-create it") from None
        if not isinstance(meta, dict) or meta.get("kind") != "keep-matrix":
            raise LplaError(f"{p} is not a keep-matrix file; re-create it")
        if meta.get("format") != KEEP_MATRIX_FORMAT:
            raise LplaError(
                f"{p} is a keep matrix of format {meta.get('format')!r}; this lpla reads "
                f"format {KEEP_MATRIX_FORMAT}: re-create it"
            )
        try:
            return cls(index=index, keep=keep, target=target, seed=seed)
        except LplaError as exc:
            raise LplaError(f"{p}: {exc.message}; re-create it") from None


def make_keep_matrix(
    candidates: np.ndarray, target_members: np.ndarray, num_references: int, seed: int
) -> KeepMatrix:
    """M reference member sets over ``candidates``, each as large as the target's, balanced.

    Reference r takes the ``len(target_members)`` candidates with the lowest
    ``IN-count-so-far + U(0, 1)``: a uniformly random subset among the least used candidates, so
    sets are random yet every candidate ends IN for ``floor`` or ``ceil(M * n / P)`` references.
    With ``P = 2n`` candidates this is LiRA's random halves. Reproducible from the arguments.
    """
    if not _is_int(num_references) or num_references < 1:
        raise LplaError(f"--reference-models must be at least 1, got {num_references!r}")
    index = np.sort(_as_index_array(np.asarray(candidates), "candidates"))
    members = _as_index_array(np.asarray(target_members), "target members")
    target = np.isin(index, members)
    if target.sum() != len(np.unique(members)):
        raise LplaError("every target member must be one of the candidates")
    n = int(target.sum())
    if n < 2 or n >= len(index):
        raise LplaError(
            f"a keep matrix needs 2 <= members < candidates; got {n} members of {len(index)}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6B656570]))
    counts = np.zeros(len(index))
    keep = np.zeros((num_references, len(index)), dtype=bool)
    for r in range(num_references):
        chosen = np.argsort(counts + rng.random(len(index)), kind="stable")[:n]
        keep[r, chosen] = True
        counts[chosen] += 1
    return KeepMatrix(index=index, keep=keep, target=target, seed=int(seed))
