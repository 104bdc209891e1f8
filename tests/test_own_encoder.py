"""Issue #12: audit your own encoder on your own images in one command.

A small encoder is trained here (lpla train, MLP, 32 members, 3 epochs), exported to ``.pt2`` as a
user would (eval mode, dynamic batch dimension), and its member / non-member images are written
as PNG folders. Then the walkthrough of docs/own-encoder.md runs end to end: ``lpla audit
--encoder model.pt2 --members DIR --nonmembers DIR`` in-process and as a subprocess, with folders
and with path lists, shadow-free, with a shadow encoder of the user's and with shadows lpla
trains on the user's images (``--train-shadows``); and the mistakes a user makes exit 2 with one
line and leave no run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lpla.cli import app
from lpla.errors import LplaError

VIEWS = ["--views", "3", "--n-bootstrap", "50"]


def _cli(args: list[object]):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train(out: Path, role: str) -> Path:
    res = _cli(
        ["train", "--dataset", "fashion-mnist", "--framework", "simclr", "--backbone", "mlp",
         "--members", "32", "--epochs", "3", "--batch-size", "16", "--seed", "3",
         "--role", role, "--no-utility", "--out", out]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def _export(checkpoint: Path, path: Path) -> Path:
    """What a user does with their model: eval mode, a dynamic batch dimension, torch.export."""
    import torch

    from lpla.ssl.checkpoint import load_encoder

    model, _ = load_encoder(checkpoint)
    model.eval()
    x = torch.rand(4, 1, 28, 28)
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}), path)
    return path


def _pngs(indices: np.ndarray, folder: Path, *, classes: bool = True) -> list[Path]:
    """Fashion-MNIST images ``indices`` as PNGs, in class folders (ImageFolder) or flat."""
    from PIL import Image

    from lpla.data.registry import create_dataset

    ds = create_dataset("fashion-mnist", "train")
    written = []
    for i, img, y in zip(indices, ds.get_images(indices).numpy(), ds.labels[indices], strict=True):
        where = folder / f"c{int(y)}" if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        written.append(where / f"{int(i):05d}.png")
        Image.fromarray(img[0]).save(written[-1])
    return written


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained target and shadow exported to .pt2, and their images as the user has them."""
    from lpla.data.splits import MembershipSplit

    root = tmp_path_factory.mktemp("user")
    target = _train(root / "target-ckpt", "target")
    shadow = _train(root / "shadow-ckpt", "shadow")
    split = MembershipSplit.load(target / "split.json")  # lpla train wrote it; any split works
    nonmembers = np.concatenate([split.indices("target_nonmember"), split.indices("reference")])
    _pngs(split.indices("target_member"), root / "members")
    _pngs(nonmembers, root / "nonmembers")
    _pngs(split.indices("shadow_member"), root / "shadow-members", classes=False)
    _pngs(split.indices("shadow_nonmember"), root / "shadow-nonmembers", classes=False)
    return {
        "root": root,
        "model": _export(target, root / "model.pt2"),
        "shadow": _export(shadow, root / "shadow.pt2"),
        "members": root / "members",
        "nonmembers": root / "nonmembers",
        "shadow_members": root / "shadow-members",
        "shadow_nonmembers": root / "shadow-nonmembers",
    }


def _files(folder: Path) -> set[str]:
    return {str(p.resolve()) for p in folder.rglob("*.png")}


def _check_run(out: Path, members: set[str], nonmembers: set[str]) -> dict:
    results = json.loads((out / "results.json").read_text())
    entry = results["attacks"]["lpla-ref"]
    assert 0.0 <= entry["auc"] <= 1.0 and "0.01" in entry["tpr_at_fpr_ci95"]
    assert (out / "report.html").is_file()
    images = json.loads((out / "images.json").read_text())
    assert results["images"] == "images.json" and images["format"] == "lpla-images/1"
    target = images["target"]
    cand, ref = target["candidates"], target["reference_images"]
    assert [c["row"] for c in cand] == list(range(len(cand)))
    assert {c["path"] for c in cand if c["member"] == 1} == members
    evaluated = {c["path"] for c in cand if c["member"] == 0}
    reference = {r["path"] for r in ref}
    assert evaluated | reference == nonmembers and not evaluated & reference
    scores = np.load(out / "scores.npz")
    np.testing.assert_array_equal(scores["member"], [c["member"] for c in cand])
    sizes = results["split"]["sizes"]
    assert {k: v for k, v in sizes.items() if not k.startswith("shadow")} == {
        "target_member": len(members),
        "target_nonmember": len(evaluated),
        "reference": len(reference),
    }
    return results


def test_own_encoder_on_image_folders_shadow_free(user: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["audit", "--encoder", user["model"], "--members", user["members"],
            "--nonmembers", user["nonmembers"], *VIEWS, "--out", out]  # fmt: skip
    res = _cli(args)
    assert res.exit_code == 0, res.output
    members, nonmembers = _files(user["members"]), _files(user["nonmembers"])
    results = _check_run(out, members, nonmembers)
    # no --reference: a seeded half of the 64 non-members calibrates, the other half is scored
    assert results["split"]["sizes"]["reference"] == 32
    assert list(results["attacks"]) == ["lpla-ref"]  # shadow-free: what needs no shadow
    shadow_note = next(n for n in results["notes"] if n.startswith("shadow-free audit"))
    for needs_shadow in ("encodermi-t", "lpla,", "balanced accuracy"):
        assert needs_shadow in shadow_note
    assert "shadow-free audit" in res.output and "images.json" in res.output
    assert results["target"]["kind"] == "export"
    # utility on the labels of the class folders: members -> non-members
    assert results["utility"]["probe_images"].startswith("probe-train: the members")
    assert 0.0 <= results["utility"]["linear_probe_acc"] <= 1.0
    # a re-run into the same directory reuses the embeddings (cache key: the file's content)
    again = _cli(args)
    assert again.exit_code == 0 and "[cached] embed_target_candidates" in again.output
    same = json.loads((out / "results.json").read_text())
    assert same["attacks"]["lpla-ref"]["auc"] == results["attacks"]["lpla-ref"]["auc"]


def test_own_encoder_on_path_lists_as_a_subprocess(user: dict[str, Path], tmp_path: Path) -> None:
    """The installed command on text lists of paths (relative ones resolved against the list)."""
    members = sorted(_files(user["members"]))
    nonmembers = sorted(_files(user["nonmembers"]))
    (tmp_path / "members.txt").write_text("# the training images\n" + "\n".join(members) + "\n")
    (tmp_path / "nonmembers.txt").write_text("\n".join(nonmembers[:40]) + "\n")
    rel = [os.path.relpath(p, tmp_path) for p in nonmembers[40:]]
    (tmp_path / "reference.csv").write_text("path\n" + "\n".join(rel) + "\n")
    out = tmp_path / "run"
    env = {**os.environ, "LPLA_THREADS": "1"}
    cmd = [sys.executable, "-m", "lpla.cli", "audit", "--encoder", str(user["model"]),
           "--members", "members.txt", "--nonmembers", "nonmembers.txt",
           "--reference", "reference.csv", *VIEWS, "--no-utility", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = _check_run(out, set(members), set(nonmembers))
    assert results["split"]["sizes"] == {
        "target_member": 32,
        "target_nonmember": 40,
        "reference": 24,
    }
    images = json.loads((out / "images.json").read_text())["target"]
    assert {r["path"] for r in images["reference_images"]} == set(nonmembers[40:])
    assert "lpla-ref" in res.stdout and "report:" in res.stdout


def test_own_encoder_with_a_shadow_of_the_users(user: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _cli(
        ["audit", "--encoder", user["model"], "--members", user["members"],
         "--nonmembers", user["nonmembers"], "--shadow", user["shadow"],
         "--shadow-members", user["shadow_members"],
         "--shadow-nonmembers", user["shadow_nonmembers"], *VIEWS, "--no-utility",
         "--out", out]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    results = _check_run(out, _files(user["members"]), _files(user["nonmembers"]))
    # shadow-fitted attacks, thresholds, and lpla-diff: each encoder on the other's images,
    # allowed because neither trained on the other's candidates (compared by file path)
    for name in ("lpla", "encodermi-t", "norm-threshold", "lpla-diff"):
        assert name in results["attacks"], name
    assert results["attacks"]["encodermi-t"]["balanced_accuracy"] is not None
    assert (out / "embeddings" / "shadow_on_target_candidates.npz").is_file()
    assert not any(n.startswith("shadow-free") for n in results["notes"])
    assert not any("WARNING" in n for n in results["notes"])
    assert results["split"]["sizes"] == {
        "target_member": 32,
        "target_nonmember": 32,
        "reference": 32,
        "shadow_member": 32,
        "shadow_nonmember": 16,  # the shadow's reference is cut from its non-members too
        "shadow_reference": 16,
    }
    images = json.loads((out / "images.json").read_text())
    assert {c["path"] for c in images["shadow"]["candidates"] if c["member"] == 1} == _files(
        user["shadow_members"]
    )


def test_own_encoder_with_shadows_lpla_trains(user: dict[str, Path], tmp_path: Path) -> None:
    """--train-shadows: one lpla shadow on half of the evaluated non-members, cached on re-run."""
    from lpla.ssl.checkpoint import Checkpoint

    out = tmp_path / "run"
    args = ["audit", "--encoder", user["model"], "--members", user["members"],
            "--nonmembers", user["nonmembers"], "--train-shadows", "simclr/mlp",
            "--shadow-epochs", "2", *VIEWS, "--no-utility", "--out", out]  # fmt: skip
    res = _cli(args)
    assert res.exit_code == 0, res.output
    assert "[run] train_shadow0" in res.output and "shadow: " in res.output
    members, nonmembers = _files(user["members"]), _files(user["nonmembers"])
    results = _check_run(out, members, nonmembers)
    for name in ("lpla", "norm-threshold", "encodermi-t", "encodermi-v", "encodermi-s"):
        entry = results["attacks"][name]
        assert 0.0 <= entry["auc"] <= 1.0 and "0.01" in entry["tpr_at_fpr_ci95"], name
        assert entry["balanced_accuracy"] is not None  # a threshold chosen on the shadow
    # lpla-diff needs an encoder that saw none of the candidates; lpla-lira two shadows
    assert "lpla-diff" not in results["attacks"] and "lpla-lira" not in results["attacks"]
    assert results["knowledge"] == "lpla shadows (simclr/mlp) trained on your non-members"
    recipe = results["config"]["train_shadows"]
    assert recipe["recipe"] == "simclr/mlp" and recipe["dirs"] == ["shadows/shadow0"]
    assert recipe["train"]["epochs"] == 2 and recipe["shadows"] == 1
    ckpt = Checkpoint(out / "shadows" / "shadow0")
    meta = ckpt.meta()
    assert meta["finished"] and meta["epochs"] == 2 and meta["role"] == "shadow"
    assert (meta["framework"], meta["backbone"]) == ("simclr", "mlp")
    assert results["split"]["sizes"] == {
        "target_member": 32,
        "target_nonmember": 32,
        "reference": 32,
        "shadow_member": 16,  # a seeded half of the target's 32 evaluated non-members
        "shadow_nonmember": 16,
        "shadow_reference": 32,  # the target's reference set
    }
    images = json.loads((out / "images.json").read_text())
    evaluated = {c["path"] for c in images["target"]["candidates"] if c["member"] == 0}
    shadow = images["shadow"]
    assert shadow["encoder"] == "shadows/shadow0"
    assert {c["path"] for c in shadow["candidates"]} == evaluated
    # both answer the same queries: the exported target's weak views, not SimCLR's
    assert results["target"]["augmentation"] == results["shadow"]["augmentation"] == "weak"
    assert any(n.startswith("shadows trained by lpla: 1 x simclr/mlp") for n in results["notes"])
    assert not any("WARNING" in n for n in results["notes"])
    # a re-run reuses the trained shadow and every embedding
    digest = ckpt.weights_digest()
    again = _cli(args)
    assert again.exit_code == 0, again.output
    assert "[cached] train_shadow0" in again.output
    assert "[cached] embed_shadow_candidates" in again.output
    assert ckpt.weights_digest() == digest
    same = json.loads((out / "results.json").read_text())
    assert same["attacks"]["encodermi-t"]["auc"] == results["attacks"]["encodermi-t"]["auc"]


def test_own_encoder_with_paired_shadows_runs_lira(user: dict[str, Path], tmp_path: Path) -> None:
    """--shadows 2: paired halves of every candidate, so lpla-lira sees members IN and OUT."""
    out = tmp_path / "run"
    res = _cli(
        ["audit", "--encoder", user["model"], "--members", user["members"],
         "--nonmembers", user["nonmembers"], "--train-shadows", "simclr/mlp", "--shadows", "2",
         "--shadow-epochs", "1", *VIEWS, "--no-utility", "--out", out]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert "lpla-lira" in results["attacks"] and "norm-threshold" in results["attacks"]
    assert (
        results["knowledge"]
        == "2 lpla shadows (simclr/mlp) trained on paired halves of your images"
    )
    images = json.loads((out / "images.json").read_text())
    candidates = {c["path"] for c in images["target"]["candidates"]}
    trained = [
        {c["path"] for c in images[f"shadow{i}"]["candidates"] if c["member"]} for i in (0, 1)
    ]
    for i in (0, 1):  # every candidate, member or not, is IN for exactly one of the two
        assert {c["path"] for c in images[f"shadow{i}"]["candidates"]} == candidates
    assert trained[0] | trained[1] == candidates and not trained[0] & trained[1]
    assert (out / "shadows" / "shadow1" / "paired_halves.npz").is_file()
    assert results["split"]["sizes"]["shadow0_member"] + results["split"]["sizes"][
        "shadow1_member"
    ] == len(candidates)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing folder", "--members: image list not found"),
        ("a count with --encoder", "--members 128 is a number of images"),
        ("empty list", "lists no images"),
        ("images without --encoder", "needs --encoder"),
        ("same image twice", "is listed in both --members and --nonmembers"),
        ("shadow without its images", "needs --shadow-members and --shadow-nonmembers"),
        ("training option", "not for --encoder: --epochs"),
        ("encoder file as --target", "is a torch.export file, not an lpla checkpoint directory"),
        ("unknown recipe", "--train-shadows simclrr/mlp: unknown framework 'simclrr'"),
        ("unknown backbone", "--train-shadows simclr/mlpp: unknown backbone 'mlpp'"),
        ("train and bring shadows", "--train-shadows simclr has lpla train shadow encoders"),
        ("odd number of shadows", "--shadows must be 1 or an even number"),
        ("shadow epochs alone", "go with --train-shadows RECIPE: --shadow-epochs"),
    ],
)
def test_mistakes_exit_2_with_one_line_and_no_run_directory(
    user: dict[str, Path], tmp_path: Path, case: str, message: str
) -> None:
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    enc, m, n = user["model"], user["members"], user["nonmembers"]
    own = ["--encoder", enc, "--members", m, "--nonmembers", n]
    args = {
        "missing folder": ["--encoder", enc, "--members", tmp_path / "nope", "--nonmembers", n],
        "a count with --encoder": ["--encoder", enc, "--members", "128", "--nonmembers", n],
        "empty list": ["--encoder", enc, "--members", tmp_path / "empty.txt", "--nonmembers", n],
        "images without --encoder": ["--members", m, "--nonmembers", n],
        "same image twice": ["--encoder", enc, "--members", m, "--nonmembers", m],
        "shadow without its images": [
            *("--encoder", enc, "--members", m, "--nonmembers", n, "--shadow", user["shadow"])
        ],
        "training option": ["--encoder", enc, "--members", m, "--nonmembers", n, "--epochs", "3"],
        "encoder file as --target": ["--target", enc, "--no-utility"],
        "unknown recipe": [*own, "--train-shadows", "simclrr/mlp"],
        "unknown backbone": [*own, "--train-shadows", "simclr/mlpp"],
        "train and bring shadows": [
            *(*own, "--train-shadows", "simclr", "--shadow", user["shadow"]),
            *("--shadow-members", user["shadow_members"]),
            *("--shadow-nonmembers", user["shadow_nonmembers"]),
        ],
        "odd number of shadows": [*own, "--train-shadows", "simclr", "--shadows", "3"],
        "shadow epochs alone": [*own, "--shadow-epochs", "2"],
    }[case]
    out = tmp_path / "run"
    res = _cli(["audit", *args, "--out", out])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpla: error:") and message in lines[0], lines
    assert not out.exists()


def test_reference_cut_is_seeded_half_at_most_1000() -> None:
    from lpla.pipeline import reference_cut
    from lpla.pipeline.querying import REFERENCE_MAX

    keep, ref = reference_cut(9, seed=0)
    assert len(ref) == 4 and len(keep) == 5 and not set(keep) & set(ref)
    assert sorted([*keep, *ref]) == list(range(9))
    again, _ = reference_cut(9, seed=0)
    np.testing.assert_array_equal(keep, again)
    assert not np.array_equal(reference_cut(200, seed=1)[1], reference_cut(200, seed=2)[1])
    keep, ref = reference_cut(5000, seed=0)
    assert len(ref) == REFERENCE_MAX == 1000 and len(keep) == 4000
    with pytest.raises(LplaError, match="at least 2"):
        reference_cut(1, seed=0)


def test_combined_lists_share_class_labels_and_name_their_rows(tmp_path: Path) -> None:
    from lpla.data.lists import combine_image_lists

    idx = np.arange(6)
    a = _pngs(idx[:3], tmp_path / "a")
    b = _pngs(idx[3:], tmp_path / "b")
    ds = combine_image_lists([tmp_path / "a", tmp_path / "b"], flags=["--members", "--nonmembers"])
    assert ds.parts == ((str(tmp_path / "a"), 0, 3), (str(tmp_path / "b"), 3, 6))
    assert list(ds.paths) == [str(p.resolve()) for p in sorted(a) + sorted(b)]
    names = [ds.classes[int(v)] for v in ds.labels]  # one class index per folder name
    assert names == [Path(p).parent.name for p in ds.paths]
    assert ds.get_images(np.arange(6)).shape == (6, 1, 28, 28)
    with pytest.raises(LplaError, match="--nonmembers: image list not found"):
        combine_image_lists([tmp_path / "a", tmp_path / "c"], flags=["--members", "--nonmembers"])
