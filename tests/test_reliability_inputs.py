"""Bad input, tried and answered: every mistake is one ``lpla: error:`` line, exit 2, no traceback.

Families: corrupt files (hypothesis truncates and flips bytes of valid .npz, .safetensors, IDX and
PNG files), wrong embeddings (shapes, dtypes, NaN/inf, empty or one-class member sets), tampered
splits, wrong encoders, unknown registry names and out-of-range parameters. Loader properties are
checked in-process (fast, many inputs); each family also goes through the CLI at least once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpla.embeddings import open_embeddings, write_embeddings
from lpla.errors import LplaError
from test_reliability_common import (  # noqa: F401
    TESTS,
    _tally,
    assert_user_error,
    count,
    invoke,
    run_cli,
    snapshot,
)

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _answers(n_each: int = 20, k: int = 3, d: int = 4, seed: int = 0) -> dict[str, Any]:
    g = np.random.default_rng(seed)
    member = np.r_[np.ones(n_each, np.int8), np.zeros(n_each, np.int8)]
    emb = g.normal(size=(2 * n_each, k, d)).astype(np.float32)
    emb[member == 1] *= 0.7  # members answer with smaller norms: a learnable signal
    return {"embeddings": emb, "member": member, "index": np.arange(2 * n_each, dtype=np.int64)}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("good")
    paths = {}
    for name, seed in (("target", 0), ("shadow", 1)):
        a = _answers(seed=seed)
        paths[name] = write_embeddings(
            d / f"{name}.npz",
            a["embeddings"],
            a["member"],
            a["index"],
            {"dataset": "fashion-mnist"},
        )
    return paths


def _attack(target: Path, shadow: Path, out: Path, *extra: str) -> list[str]:
    return [
        "attack",
        "--target-embeddings",
        str(target),
        "--shadow-embeddings",
        str(shadow),
        "--out",
        str(out),
        "--n-bootstrap",
        "20",
        *extra,
    ]


# ------------------------------------------------------------------ corrupt files (hypothesis)


def _mutate(data: bytes, cut: float | None, flips: list[tuple[float, int]]) -> bytes:
    raw = bytearray(data)
    for pos, value in flips:
        i = min(int(pos * len(raw)), len(raw) - 1)
        raw[i] ^= value or 1
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    return bytes(raw)


MUTATION = {
    "cut": st.none() | st.floats(0.0, 0.999),
    "flips": st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=4),
}


@FUZZ
@given(**MUTATION)
def test_damaged_npz_is_refused_or_read_correctly(
    good: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    cut: float | None,
    flips: list[tuple[float, int]],
) -> None:
    if cut is None and not flips:
        cut = 0.5
    path = tmp_path_factory.mktemp("npz") / "bad.npz"
    path.write_bytes(_mutate(good["target"].read_bytes(), cut, flips))
    count("inputs")
    try:
        emb = open_embeddings(path)
        # a flip inside the float data leaves a valid file: it must still be a consistent one
        n = emb.embeddings.shape[0]
        assert emb.embeddings.ndim == 3 and emb.member.shape == (n,) and emb.index.shape == (n,)
        assert np.isfinite(np.asarray(emb.embeddings)).all()
        assert set(np.unique(emb.member)) <= {-1, 0, 1}
    except LplaError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(**MUTATION)
def test_damaged_safetensors_weights_are_refused_or_loaded(
    tmp_path_factory: pytest.TempPathFactory, cut: float | None, flips: list[tuple[float, int]]
) -> None:
    import sys

    from safetensors.torch import save_file

    from lpla.encoders import load_any_encoder

    sys.path.insert(0, str(TESTS))
    from fixtures_user_model import tiny_encoder

    d = tmp_path_factory.mktemp("st")
    weights = d / "w.safetensors"
    save_file(tiny_encoder().state_dict(), str(weights))
    if cut is None and not flips:
        cut = 0.3
    weights.write_bytes(_mutate(weights.read_bytes(), cut, flips))
    count("inputs")
    try:
        enc = load_any_encoder(
            "fixtures_user_model:tiny_encoder", weights=str(weights), image_shape=(1, 12, 12)
        )
        assert enc.output_dim == 8
    except LplaError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(**MUTATION, gz=st.booleans())
def test_damaged_idx_is_refused_or_read_consistently(
    tmp_path_factory: pytest.TempPathFactory,
    cut: float | None,
    flips: list[tuple[float, int]],
    gz: bool,
) -> None:
    from lpla.data.idx import read_idx, write_idx

    d = tmp_path_factory.mktemp("idx")
    path = d / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3))
    if cut is None and not flips:
        cut = 0.7
    path.write_bytes(_mutate(path.read_bytes(), cut, flips))
    count("inputs")
    try:
        arr = read_idx(path)
        assert arr.size * arr.itemsize <= 5 * 4 * 3 * 8  # what the header said, nothing more
    except LplaError as exc:
        assert "\n" not in str(exc)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(**MUTATION)
def test_damaged_images_in_an_imagefolder_are_refused_or_decoded(
    tmp_path_factory: pytest.TempPathFactory, cut: float | None, flips: list[tuple[float, int]]
) -> None:
    from PIL import Image

    from lpla.data.registry import create_dataset

    root = tmp_path_factory.mktemp("folder")
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i + (cls == "b") * 100, np.uint8)).save(
                root / cls / f"{i}.png"
            )
    victim = root / "b" / "1.png"
    if cut is None and not flips:
        cut = 0.5
    victim.write_bytes(_mutate(victim.read_bytes(), cut, flips))
    count("inputs")
    try:
        ds = create_dataset("imagefolder", root=str(root), image_size=8)
        images = ds.get_images(np.arange(len(ds)))
        assert tuple(images.shape) == (4, *ds.info.image_shape)
    except LplaError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("cut", [0.05, 0.5, 0.95])
def test_truncated_embeddings_through_the_cli(
    good: dict[str, Path], tmp_path: Path, cut: float
) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good["target"].read_bytes()[: int(good["target"].stat().st_size * cut)])
    out = tmp_path / "out"
    count("inputs")
    res = invoke(_attack(bad, good["shadow"], out), cwd=tmp_path)
    assert_user_error(res, out, before=set())


def test_corrupt_idx_through_the_cli(tmp_path: Path) -> None:
    """fashion-mnist-full from a --data-root whose images file is cut short."""
    from lpla.data.idx import write_idx

    root = tmp_path / "fm"
    root.mkdir()
    imgs = np.zeros((10, 28, 28), np.uint8)
    for split, n in (("train", 10), ("t10k", 10)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", imgs[:n])
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    data = (root / "t10k-images-idx3-ubyte.gz").read_bytes()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    count("inputs")
    res = invoke(
        [
            "embed",
            "--encoder",
            "fixtures_user_model:tiny_encoder",
            "--dataset",
            "fashion-mnist-full",
            "--data-root",
            str(root),
            "--out",
            str(out / "e.npz"),
            "--no-progress",
        ],
        cwd=tmp_path,
    )
    assert_user_error(res, out, before=set())


# ---------------------------------------------------------------- wrong embeddings (CLI table)


def _bad_embeddings() -> dict[str, dict[str, Any]]:
    a = _answers()
    e, m, i = a["embeddings"], a["member"], a["index"]
    nan = e.copy()
    nan[3, 1, 2] = np.nan
    inf = e.copy()
    inf[0, 0, 0] = np.inf
    return {
        "2-d embeddings": {"embeddings": e[:, 0], "member": m, "index": i},
        "4-d embeddings": {"embeddings": e[..., None], "member": m, "index": i},
        "int embeddings": {"embeddings": (e * 10).astype(np.int32), "member": m, "index": i},
        "complex embeddings": {"embeddings": e.astype(np.complex64), "member": m, "index": i},
        "string embeddings": {"embeddings": e.astype(str), "member": m, "index": i},
        "bool embeddings": {"embeddings": e > 0, "member": m, "index": i},
        "NaN embeddings": {"embeddings": nan, "member": m, "index": i},
        "inf embeddings": {"embeddings": inf, "member": m, "index": i},
        "zero views": {"embeddings": e[:, :0], "member": m, "index": i},
        "zero dims": {"embeddings": e[:, :, :0], "member": m, "index": i},
        "no images": {"embeddings": e[:0], "member": m[:0], "index": i[:0]},
        "member 2": {"embeddings": e, "member": np.where(m == 1, 2, 0).astype(np.int8), "index": i},
        "member float": {"embeddings": e, "member": m.astype(np.float32) + 0.5, "index": i},
        "member too short": {"embeddings": e, "member": m[:-1], "index": i},
        "index float": {"embeddings": e, "member": m, "index": i + 0.5},
        "index 2-d": {"embeddings": e, "member": m, "index": i[:, None]},
        "no member key": {"embeddings": e, "index": i},
        "all members": {"embeddings": e, "member": np.ones_like(m), "index": i},
        "all non-members": {"embeddings": e, "member": np.zeros_like(m), "index": i},
        "unknown membership": {"embeddings": e, "member": np.full_like(m, -1), "index": i},
        "meta not JSON": {"embeddings": e, "member": m, "index": i, "meta": np.array("{oops")},
        "meta a list": {"embeddings": e, "member": m, "index": i, "meta": np.array("[1, 2]")},
    }


BAD_EMBEDDINGS = list(_bad_embeddings())


@pytest.mark.parametrize("case", BAD_EMBEDDINGS)
@pytest.mark.parametrize("role", ["target", "shadow"])
def test_wrong_embeddings_are_user_errors(
    good: dict[str, Path], tmp_path: Path, case: str, role: str
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, **_bad_embeddings()[case])
    target, shadow = (bad, good["shadow"]) if role == "target" else (good["target"], bad)
    out = tmp_path / "out"
    count("inputs")
    res = invoke(_attack(target, shadow, out), cwd=tmp_path)
    assert_user_error(res, out, before=set())


@pytest.mark.parametrize(
    ("case", "shadow_kw", "ref_kw"),
    [
        ("views differ", {"k": 2}, None),
        ("reference D differs", {}, {"d": 5}),
    ],
)
def test_mismatched_answer_sets_are_user_errors(
    good: dict[str, Path],
    tmp_path: Path,
    case: str,
    shadow_kw: dict[str, int],
    ref_kw: dict[str, int] | None,
) -> None:
    sh = _answers(seed=2, **shadow_kw)
    shadow = write_embeddings(tmp_path / "sh.npz", sh["embeddings"], sh["member"], sh["index"])
    extra: list[str] = []
    if ref_kw is not None:
        ref = _answers(seed=3, **ref_kw)
        extra = [
            "--reference-embeddings",
            str(write_embeddings(tmp_path / "ref.npz", ref["embeddings"])),
        ]
    count("inputs")
    res = invoke(_attack(good["target"], shadow, tmp_path / "out", *extra), cwd=tmp_path)
    assert_user_error(res, tmp_path / "out", before=set())


# ----------------------------------------------------------------------------- tampered splits


def _split_file(tmp_path: Path, edit: Any, resign: bool) -> Path:
    from lpla.data.splits import make_split, roles_fingerprint

    split = make_split("fashion-mnist", 10000, members=8, seed=0)
    raw = split.to_dict()
    edit(raw["roles"])
    if resign:
        raw["fingerprint"] = roles_fingerprint(
            {k: np.asarray(v, np.int64) for k, v in raw["roles"].items()}
        )
    path = tmp_path / "split.json"
    path.write_text(json.dumps(raw))
    return path


def _overlap(roles: dict[str, list[int]]) -> None:
    roles["target_nonmember"][0] = roles["target_member"][0]


def _shadow_overlap(roles: dict[str, list[int]]) -> None:
    roles["shadow_member"][0] = roles["target_member"][0]


def _swap_member(roles: dict[str, list[int]]) -> None:
    """Still disjoint and in range: only the fingerprint can tell the file was edited."""
    used = {i for ix in roles.values() for i in ix}
    roles["target_member"][0] = next(i for i in range(10000) if i not in used)


def _out_of_pool(roles: dict[str, list[int]]) -> None:
    roles["target_member"][-1] = 10**9


@pytest.mark.parametrize(
    ("edit", "resign", "says"),
    [
        (_overlap, True, "overlap"),
        (_shadow_overlap, True, "overlap"),
        (_swap_member, False, "fingerprint"),
        (_out_of_pool, True, ""),
        (lambda r: r.pop("reference", None) or r.pop("target_member"), False, ""),
    ],
    ids=[
        "member-nonmember re-signed",
        "target-shadow re-signed",
        "edited not re-signed",
        "index beyond the pool",
        "role missing",
    ],
)
def test_tampered_split_files_are_refused(
    tmp_path: Path, edit: Any, resign: bool, says: str
) -> None:
    from lpla.data.splits import MembershipSplit

    path = _split_file(tmp_path, edit, resign)
    count("inputs")
    with pytest.raises(LplaError, match=says):
        MembershipSplit.load(path)
    out = tmp_path / "out"
    res = invoke(
        [
            "embed",
            "--encoder",
            "fixtures_user_model:tiny_encoder",
            "--image-shape",
            "1,12,12",
            "--role",
            "target_member",
            "--split-file",
            str(path),
            "--out",
            str(out / "e.npz"),
            "--no-progress",
        ],
        cwd=tmp_path,
    )
    assert_user_error(res, out, before=set(), contains=says or None)


# ---------------------------------------------------------------------------- wrong encoders


@pytest.mark.parametrize(
    ("spec", "extra", "says"),
    [
        ("fixtures_user_model:feature_map_encoder", ["--image-shape", "1,12,12"], "feature map"),
        ("fixtures_user_model:not_a_module", [], "not a torch.nn.Module"),
        ("fixtures_user_model:no_such_factory", [], "no callable"),
        ("no_such_package_xyz:factory", [], "cannot import"),
        ("fixtures_user_model:tiny_encoder", ["--image-shape", "3,12,12"], "failed on a dummy"),
        ("fixtures_user_model:tiny_encoder", ["--image-shape", "1,12"], "C,H,W"),
        ("fixtures_user_model:tiny_encoder", ["--pool", "max"], "unknown pool"),
        ("fixtures_user_model:tiny_encoder", ["--layer", "head"], "unknown layer"),
        ("missing_dir/", [], "not found"),
        ("weights.safetensors", [], "without an architecture"),
    ],
)
def test_wrong_encoders_are_user_errors(
    tmp_path: Path, spec: str, extra: list[str], says: str
) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    out = tmp_path / "out"
    count("inputs")
    res = invoke(
        [
            "embed",
            "--encoder",
            spec,
            "--dataset",
            "fashion-mnist",
            "--limit",
            "4",
            "--out",
            str(out / "e.npz"),
            "--no-progress",
            *extra,
        ],
        cwd=tmp_path,
    )
    assert_user_error(res, out, before=set(), contains=says)


def test_encoder_with_wrong_output_rank_is_a_user_error() -> None:
    from lpla.encoders import probe_encoder

    class Scalar(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean()

    class NaNs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) * float("nan")

    class Batch1(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:1]

    for module, says in ((Scalar(), "must return"), (NaNs(), "NaN"), (Batch1(), "must return")):
        count("inputs")
        with pytest.raises(LplaError, match=says):
            probe_encoder(module, (1, 4, 4))


# --------------------------------------------------------------------- unknown registry names


UNKNOWN_NAMES = {
    "dataset": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "nope",
        "--out",
        "o/e.npz",
    ],
    "train dataset": ["train", "--dataset", "nope", "--out", "o/enc", "--epochs", "1"],
    "backbone": ["train", "--backbone", "nope", "--out", "o/enc", "--epochs", "1"],
    "framework": ["train", "--framework", "nope", "--out", "o/enc", "--epochs", "1"],
    "train augmentation": ["train", "--augmentation", "nope", "--out", "o/enc", "--epochs", "1"],
    "query augmentation": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "fashion-mnist",
        "--augmentation",
        "nope",
        "--image-shape",
        "1,12,12",
        "--limit",
        "4",
        "--out",
        "o/e.npz",
    ],
    "attack": [
        "attack",
        "--target-embeddings",
        "T",
        "--shadow-embeddings",
        "S",
        "--attacks",
        "nope",
        "--out",
        "o",
    ],
    "defense": ["audit", "--defense", "nope:0.1", "--members", "8", "--epochs", "1", "--out", "o"],
    "knowledge": ["audit", "--knowledge", "nope", "--members", "8", "--epochs", "1", "--out", "o"],
    "audit dataset": [
        "audit",
        "--dataset",
        "nope",
        "--members",
        "8",
        "--epochs",
        "1",
        "--out",
        "o",
    ],
    "audit framework": [
        "audit",
        "--framework",
        "nope",
        "--members",
        "8",
        "--epochs",
        "1",
        "--out",
        "o",
    ],
    "audit backbone": [
        "audit",
        "--backbone",
        "nope",
        "--members",
        "8",
        "--epochs",
        "1",
        "--out",
        "o",
    ],
    "study preset": ["study", "--preset", "nope", "--out", "o"],
    "embed role": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--role",
        "nope",
        "--split-file",
        "s.json",
        "--out",
        "o/e.npz",
    ],
    "list what": ["list", "nope"],
}


UNKNOWN_CASES = list(UNKNOWN_NAMES)


@pytest.mark.parametrize("case", UNKNOWN_CASES)
def test_unknown_names_are_user_errors(good: dict[str, Path], tmp_path: Path, case: str) -> None:
    args = [
        good["target"] if a == "T" else good["shadow"] if a == "S" else a
        for a in UNKNOWN_NAMES[case]
    ]
    count("inputs")
    res = invoke([str(a) for a in args], cwd=tmp_path)
    assert_user_error(res, tmp_path / "o", before=set(), contains="nope")


# ------------------------------------------------------------------- out-of-range parameters


OUT_OF_RANGE = {
    "p = 0": ["attack", "T", "--p", "0"],
    "p < 0": ["attack", "T", "--p", "-1"],
    "p NaN": ["attack", "T", "--p", "nan"],
    "p not a number": ["attack", "T", "--p", "two"],
    "audit p = 0": ["audit", "--p", "0", "--members", "8", "--epochs", "1", "--out", "o"],
    "views grid 0": ["attack", "T", "--views-grid", "0"],
    "n-bootstrap 0": ["attack", "T", "--n-bootstrap", "0"],
    "embed views 0": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "fashion-mnist",
        "--views",
        "0",
        "--image-shape",
        "1,12,12",
        "--out",
        "o/e.npz",
    ],
    "embed batch 0": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "fashion-mnist",
        "--batch-size",
        "0",
        "--image-shape",
        "1,12,12",
        "--out",
        "o/e.npz",
    ],
    "embed limit 0": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "fashion-mnist",
        "--limit",
        "0",
        "--out",
        "o/e.npz",
    ],
    "embed dtype": [
        "embed",
        "--encoder",
        "fixtures_user_model:tiny_encoder",
        "--dataset",
        "fashion-mnist",
        "--dtype",
        "int8",
        "--image-shape",
        "1,12,12",
        "--limit",
        "4",
        "--out",
        "o/e.npz",
    ],
    "audit views 0": ["audit", "--views", "0", "--members", "8", "--epochs", "1", "--out", "o"],
    "audit members 0": ["audit", "--members", "0", "--epochs", "1", "--out", "o"],
    "audit members too many": ["audit", "--members", "100000", "--epochs", "1", "--out", "o"],
    "audit epochs 0": ["audit", "--epochs", "0", "--members", "8", "--out", "o"],
    "train members 0": ["train", "--members", "0", "--epochs", "1", "--out", "o/enc"],
    "train members -5": ["train", "--members", "-5", "--epochs", "1", "--out", "o/enc"],
    "train epochs 0": ["train", "--epochs", "0", "--members", "8", "--out", "o/enc"],
    "train lr -1": ["train", "--lr", "-1", "--epochs", "1", "--members", "8", "--out", "o/enc"],
    "train batch 0": [
        "train",
        "--batch-size",
        "0",
        "--epochs",
        "1",
        "--members",
        "8",
        "--out",
        "o/enc",
    ],
    "train temperature 0": [
        "train",
        "--temperature",
        "0",
        "--epochs",
        "1",
        "--members",
        "8",
        "--out",
        "o/enc",
    ],
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_parameters_are_user_errors(
    good: dict[str, Path], tmp_path: Path, case: str
) -> None:
    args = OUT_OF_RANGE[case]
    if args[1] == "T":
        args = _attack(good["target"], good["shadow"], Path("o"))[:5] + args[2:] + ["--out", "o"]
    count("inputs")
    res = invoke(args, cwd=tmp_path)
    assert_user_error(res, tmp_path / "o", before=set())


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_fpr_outside_the_open_unit_interval_is_a_user_error(fpr: float) -> None:
    from lpla.metrics import evaluate_scores, tpr_at_fpr

    scores, labels = np.arange(10.0), np.arange(10) % 2
    count("inputs", 2)
    with pytest.raises(LplaError, match="FPR"):
        tpr_at_fpr(scores, labels, fpr)
    with pytest.raises(LplaError, match="FPR"):
        evaluate_scores(scores, labels, fprs=(fpr,), n_bootstrap=0)


@settings(max_examples=30, deadline=None)
@given(p=st.floats(allow_nan=True, allow_infinity=True), k=st.integers(-3, 3))
def test_feature_parameters_are_checked(p: float, k: int) -> None:
    """compute_stats: p must be > 0 (inf allowed), K >= 1; nothing else may escape."""
    from lpla.attacks.features import compute_stats

    emb = np.ones((4, max(k, 0), 3), np.float32)
    count("inputs")
    try:
        stats = compute_stats(emb, p=(p,))
    except LplaError as exc:
        assert "\n" not in str(exc)
        tiny_p = 0 < p < 0.1 and "overflow" in str(exc)  # refused with the fix: use p >= 0.1
        assert not (p > 0 and k >= 1) or tiny_p, f"valid p={p}, K={k} refused: {exc}"
    else:
        assert p > 0 and k >= 1, f"p={p}, K={k} accepted"
        assert stats.norms.shape == (4, k, 1)


def test_a_subprocess_run_meets_the_contract(good: dict[str, Path], tmp_path: Path) -> None:
    """The real entry point, not CliRunner: exit code, one line, no traceback."""
    out = tmp_path / "o"
    count("inputs")
    res = run_cli(_attack(good["target"], good["shadow"], out, "--attacks", "nope"), cwd=tmp_path)
    assert_user_error(res, out, before=set(), contains="nope")


def test_missing_files_are_user_errors(good: dict[str, Path], tmp_path: Path) -> None:
    for args in (
        _attack(tmp_path / "missing.npz", good["shadow"], tmp_path / "o"),
        ["audit", "--config", str(tmp_path / "missing.yaml"), "--out", "o"],
        ["report", str(tmp_path / "no-run")],
    ):
        count("inputs")
        res = invoke([str(a) for a in args], cwd=tmp_path)
        assert_user_error(res, tmp_path / "o", before=set())


def test_resume_without_a_run_is_a_user_error(tmp_path: Path) -> None:
    count("inputs")
    res = invoke(
        [
            "train",
            "--resume",
            "--out",
            str(tmp_path / "no-run"),
            "--members",
            "8",
            "--epochs",
            "1",
            "--no-utility",
            "--no-progress",
        ],
        cwd=tmp_path,
    )
    assert_user_error(res, contains="resume")


def test_not_an_npz_at_all(good: dict[str, Path], tmp_path: Path) -> None:
    for content in (b"", b"hello", json.dumps({"embeddings": [1]}).encode(), io.BytesIO().read()):
        bad = tmp_path / "bad.npz"
        bad.write_bytes(content)
        count("inputs")
        res = invoke(_attack(bad, good["shadow"], tmp_path / "o"), cwd=tmp_path)
        assert_user_error(res, tmp_path / "o", before=set())
