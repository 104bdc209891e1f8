"""Membership splits and paired halves: seeded, disjoint, balanced, validated on load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpla.data.splits import (
    ROLES,
    MembershipSplit,
    PairedHalves,
    make_paired_halves,
    make_split,
    roles_fingerprint,
)
from lpla.errors import LplaError

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(
    pool=st.integers(1, 300),
    members=st.integers(1, 80),
    shadow=st.none() | st.integers(0, 80),
    nonmembers=st.none() | st.integers(0, 80),
    reference=st.none() | st.integers(0, 80),
    seed=st.integers(0, 2**32),
)
def test_split_properties(
    pool: int,
    members: int,
    shadow: int | None,
    nonmembers: int | None,
    reference: int | None,
    seed: int,
) -> None:
    n_sh = members if shadow is None else shadow
    n_non = members if nonmembers is None else nonmembers
    fixed = members + n_non + 2 * n_sh
    n_ref = min(members, max(pool - fixed, 0)) if reference is None else reference
    kwargs: dict[str, Any] = dict(
        members=members,
        seed=seed,
        shadow_members=shadow,
        nonmembers=nonmembers,
        reference=reference,
    )
    if fixed + n_ref > pool:
        with pytest.raises(LplaError, match=f"split needs {fixed + n_ref} images"):
            make_split("d", pool, **kwargs)
        return
    split = make_split("d", pool, **kwargs)
    assert split.sizes == {
        "target_member": members,
        "target_nonmember": n_non,
        "shadow_member": n_sh,
        "shadow_nonmember": n_sh,
        "reference": n_ref,
    }
    everything = np.concatenate([split.indices(r) for r in ROLES])
    assert len(np.unique(everything)) == len(everything)  # pairwise disjoint
    assert everything.min() >= 0 and everything.max() < pool
    assert all((np.diff(split.indices(r)) > 0).all() for r in ROLES)  # sorted
    again = make_split("d", pool, **kwargs)
    assert all(np.array_equal(split.indices(r), again.indices(r)) for r in ROLES)
    assert split.fingerprint() == again.fingerprint()
    assert np.array_equal(
        split.population(), np.sort(np.concatenate([split.indices(r) for r in ROLES[:4]]))
    )


def test_split_defaults_by_hand() -> None:
    s = make_split("fashion-mnist", 100, members=20, seed=0)
    assert s.sizes == {
        "target_member": 20,
        "target_nonmember": 20,
        "shadow_member": 20,
        "shadow_nonmember": 20,
        "reference": 20,
    }
    s = make_split("fashion-mnist", 100, members=22, seed=0)  # 88 fixed: 12 left for reference
    assert s.sizes["reference"] == 12
    s = make_split("fashion-mnist", 100, members=10, shadow_members=5, seed=0)
    sizes = s.sizes
    assert (sizes["shadow_member"], sizes["shadow_nonmember"], sizes["reference"]) == (5, 5, 10)
    # the roles are consecutive slices of one default_rng(seed) permutation
    perm = np.random.default_rng(3).permutation(50)
    s = make_split("x", 50, members=4, seed=3)
    assert s.indices("target_member").tolist() == sorted(perm[:4].tolist())
    assert s.indices("reference").tolist() == sorted(perm[16:20].tolist())
    assert s.dataset == "x" and s.pool_split == "train" and s.pool_size == 50 and s.seed == 3


def test_seeds_and_pools_change_the_split() -> None:
    a = make_split("d", 1000, members=100, seed=0)
    b = make_split("d", 1000, members=100, seed=1)
    overlap = len(np.intersect1d(a.indices("target_member"), b.indices("target_member")))
    assert overlap < 40  # independent draws share ~10 of 100
    assert a.fingerprint() != b.fingerprint()


def test_split_size_errors() -> None:
    with pytest.raises(
        LplaError,
        match=r"split needs 40 images .* but fashion-mnist/train has 30; "
        r"lower --members or use a larger dataset",
    ):
        make_split("fashion-mnist", 30, members=10, seed=0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LplaError, match="--members must be at least 1"):
            make_split("d", 30, members=bad, seed=0)  # type: ignore[arg-type]
    with pytest.raises(LplaError, match="--seed"):
        make_split("d", 30, members=1, seed=-1)
    with pytest.raises(LplaError, match="--reference must be a non-negative"):
        make_split("d", 30, members=1, seed=0, reference=-2)
    with pytest.raises(LplaError, match="split needs 12 images"):
        make_split("d", 10, members=2, seed=0, reference=4)


def test_fingerprint_is_sha256_of_the_canonical_roles() -> None:
    s = make_split("d", 40, members=3, seed=7)
    h = hashlib.sha256()
    for role in ROLES:
        idx = np.sort(s.indices(role)).astype("<i8")
        h.update(role.encode() + len(idx).to_bytes(8, "little") + idx.tobytes())
    assert s.fingerprint() == h.hexdigest()
    shuffled = {r: v[::-1].copy() for r, v in s.roles.items()}
    assert roles_fingerprint(shuffled) == s.fingerprint()  # order within a role is irrelevant
    moved = dict(s.roles)
    moved["reference"] = np.append(moved["reference"][1:], moved["reference"][0])
    assert roles_fingerprint(moved) == s.fingerprint()
    changed = dict(s.roles)
    changed["reference"] = s.roles["reference"][1:]
    assert roles_fingerprint(changed) != s.fingerprint()


def test_save_load_round_trip_is_atomic_json(tmp_path: Path) -> None:
    s = make_split("cifar10", 500, members=50, seed=11, shadow_members=30)
    path = tmp_path / "run" / "split.json"
    s.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left
    raw = json.loads(path.read_text())
    assert raw["format"] == 1 and raw["fingerprint"] == s.fingerprint()
    assert raw["sizes"]["shadow_member"] == 30 and set(raw["roles"]) == set(ROLES)
    loaded = MembershipSplit.load(path)
    assert loaded.to_dict() == s.to_dict()
    assert loaded.indices("shadow_nonmember").dtype == np.int64


def _tampered(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    s = make_split("d", 100, members=10, seed=0)
    raw = s.to_dict()
    edit(raw)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(raw))
    return path


def _refingerprint(raw: dict) -> dict:
    raw["fingerprint"] = roles_fingerprint(
        {r: np.asarray(v, dtype=np.int64) for r, v in raw["roles"].items()}
    )
    return raw


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["roles"]["target_member"].__setitem__(0, 99), "fingerprint does not match"),
        (
            lambda r: (
                r["roles"]["reference"].append(r["roles"]["target_member"][0]),
                r["sizes"].__setitem__("reference", 11),
                _refingerprint(r),
            ),
            "roles target_member and reference overlap",
        ),
        (lambda r: (r["roles"]["reference"].append(100), _refingerprint(r)), "outside 0..99"),
        (lambda r: (r["roles"]["reference"].append(-1), _refingerprint(r)), "outside 0..99"),
        (lambda r: r["roles"]["reference"].__setitem__(0, 1.5), "integers only, found 1.5"),
        (lambda r: r["roles"]["reference"].__setitem__(0, "3"), "integers only"),
        (lambda r: r["roles"]["reference"].__setitem__(0, None), "integers only, found None"),
        (lambda r: r["roles"].__setitem__("reference", {"a": 1}), "must be a list"),
        (lambda r: r["roles"].pop("reference"), "exactly the keys"),
        (lambda r: r["roles"].__setitem__("extra", []), "exactly the keys"),
        (lambda r: r.__setitem__("format", 2), "unsupported split format 2"),
        (lambda r: r.pop("seed"), "lacks seed"),
        (lambda r: r.__setitem__("pool_size", "100"), "pool_size must be a positive integer"),
        (lambda r: r.__setitem__("pool_size", 0), "pool_size must be a positive integer"),
        (lambda r: r.__setitem__("seed", 0.5), "seed must be an integer"),
        (lambda r: r.__setitem__("dataset", 3), "must be strings"),
        (lambda r: r["sizes"].__setitem__("reference", 3), "'sizes'"),
    ],
)
def test_tampered_manifests_are_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _tampered(tmp_path, edit)
    with pytest.raises(LplaError, match=message):
        MembershipSplit.load(path)


def test_corrupt_manifest_files(tmp_path: Path) -> None:
    with pytest.raises(LplaError, match="not found"):
        MembershipSplit.load(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text('{"format": 1, "roles": {')
    with pytest.raises(LplaError, match="not valid JSON"):
        MembershipSplit.load(tmp_path / "cut.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(LplaError, match="not a split manifest"):
        MembershipSplit.load(tmp_path / "list.json")


def test_constructor_and_accessors_validate() -> None:
    roles = {"target_member": np.array([3, 1]), "reference": np.array([1])}
    with pytest.raises(LplaError, match="overlap"):
        MembershipSplit("d", 10, 0, roles)
    with pytest.raises(LplaError, match="lists image 2 twice"):
        MembershipSplit("d", 10, 0, {"target_member": np.array([2, 2])})
    with pytest.raises(LplaError, match="unknown split role"):
        MembershipSplit("d", 10, 0, {"members": np.array([2])})
    s = MembershipSplit("d", 10, 0, {"target_member": np.array([3, 1])})
    assert s.indices("target_member").tolist() == [1, 3] and s.sizes["reference"] == 0
    with pytest.raises(LplaError, match="unknown split role 'member'"):
        s.indices("member")


# ---- paired halves -----------------------------------------------------------------------------
@FAST
@given(
    population=st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True),
    half=st.integers(1, 8),
    seed=st.integers(0, 2**32),
)
def test_paired_halves_properties(population: list[int], half: int, seed: int) -> None:
    m = 2 * half
    h = make_paired_halves(np.array(population), m, seed)
    assert h.membership.dtype == np.bool_ and h.membership.shape == (m, len(population))
    assert (h.membership.sum(axis=0) == half).all()  # each image IN for exactly M/2 shadows
    assert h.index.tolist() == population and h.num_shadows == m
    again = make_paired_halves(np.array(population), m, seed)
    assert np.array_equal(h.membership, again.membership)
    for i in range(m):
        ins, outs = h.members_of(i), h.nonmembers_of(i)
        assert len(np.intersect1d(ins, outs)) == 0
        assert sorted(np.concatenate([ins, outs]).tolist()) == sorted(population)


def test_paired_halves_are_uniform_random_halves() -> None:
    h = make_paired_halves(np.arange(3000), 4, seed=0)
    rows = h.membership.sum(axis=1)
    assert (abs(rows - 1500) < 5 * np.sqrt(3000 * 0.25)).all()
    # P(shadows 0 and 1 both IN) = C(2,2)/C(4,2) = 1/6 for a uniformly random half per column
    both = (h.membership[0] & h.membership[1]).mean()
    assert abs(both - 1 / 6) < 5 * np.sqrt((1 / 6) * (5 / 6) / 3000)
    other = make_paired_halves(np.arange(3000), 4, seed=1)
    assert 0.3 < (other.membership == h.membership).mean() < 0.7


@pytest.mark.parametrize("bad", [0, 1, 3, 7, -2, 2.0, True])
def test_paired_halves_need_even_shadow_count(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LplaError, match="--num-shadows must be even and at least 2"):
        make_paired_halves(np.arange(10), bad, seed=0)


def test_paired_halves_bad_population_and_shadow_index() -> None:
    with pytest.raises(LplaError, match="distinct non-negative"):
        make_paired_halves(np.array([1, 1, 2]), 2, seed=0)
    with pytest.raises(LplaError, match="non-empty"):
        make_paired_halves(np.array([], dtype=np.int64), 2, seed=0)
    with pytest.raises(LplaError, match="integers"):
        make_paired_halves(np.array([0.5, 1.0]), 2, seed=0)
    h = make_paired_halves(np.arange(6), 2, seed=0)
    with pytest.raises(LplaError, match=r"shadow index 2 outside 0..1"):
        h.members_of(2)


def test_paired_halves_save_load(tmp_path: Path) -> None:
    h = make_paired_halves(np.array([5, 9, 2, 40]), 6, seed=3)
    path = tmp_path / "paired_halves.npz"
    h.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["paired_halves.npz"]
    back = PairedHalves.load(path)
    assert np.array_equal(back.index, h.index) and np.array_equal(back.membership, h.membership)
    assert back.seed == 3 and back.members_of(4).tolist() == h.members_of(4).tolist()
    with np.load(path, allow_pickle=False) as z:
        assert z["membership"].dtype == np.bool_ and z["index"].dtype == np.int64
        assert json.loads(str(z["meta"]))["kind"] == "paired-halves"


def test_tampered_paired_halves_files(tmp_path: Path) -> None:
    h = make_paired_halves(np.arange(8), 4, seed=0)
    meta = np.array(json.dumps({"format": 1, "kind": "paired-halves"}))
    unbalanced = h.membership.copy()
    unbalanced[0, 5] = not unbalanced[0, 5]
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "unbalanced": (
            dict(index=h.index, membership=unbalanced, seed=0, meta=meta),
            "IN for .* of 4 shadows, not exactly 2",
        ),
        "ints": (
            dict(index=h.index, membership=h.membership.astype(np.int8), seed=0, meta=meta),
            "must be bool",
        ),
        "shape": (
            dict(index=h.index[:5], membership=h.membership, seed=0, meta=meta),
            r"must be \[shadows, 5\]",
        ),
        "dup": (
            dict(index=np.zeros(8, np.int64), membership=h.membership, seed=0, meta=meta),
            "distinct",
        ),
        "nometa": (dict(index=h.index, membership=h.membership, seed=0), "not a paired-halves"),
        "kind": (
            dict(
                index=h.index,
                membership=h.membership,
                seed=0,
                meta=np.array('{"kind": "x", "format": 1}'),
            ),
            "not a paired-halves",
        ),
        "pickled": (
            dict(index=np.array([object()] * 8), membership=h.membership, seed=0, meta=meta),
            "not a paired-halves",
        ),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(LplaError, match=message):
            PairedHalves.load(path)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LplaError, match="not a paired-halves file"):
        PairedHalves.load(tmp_path / "junk.npz")
    with pytest.raises(LplaError, match="not found"):
        PairedHalves.load(tmp_path / "missing.npz")
