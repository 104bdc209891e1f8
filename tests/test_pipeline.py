"""The one audit pipeline: every command goes through it, so the same inputs give the same run.

Covers issue #13: `lpla attack` and `lpla audit` on the same encoders agree exactly; how views were
made travels with the embeddings; bad input leaves no output; every default is set once; the
checkpoint layout is spelled in one module; the layers hold and nothing imports in a cycle.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lpla.cli import app
from lpla.embeddings import open_embeddings, write_embeddings

SRC = Path(__file__).resolve().parents[1] / "src" / "lpla"


def _cli(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train(out: Path, role: str) -> Path:
    res = _cli(
        [
            "train", "--dataset", "fashion-mnist", "--framework", "simclr", "--backbone", "mlp",
            "--members", "32", "--epochs", "3", "--batch-size", "16", "--seed", "3",
            "--role", role, "--no-utility", "--out", out,
        ]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return _train(root / "A", "target"), _train(root / "B", "shadow")


@pytest.mark.slow
def test_attack_and_audit_agree_on_the_same_encoders(
    encoders: tuple[Path, Path], tmp_path: Path
) -> None:
    """The issue's reproduction: the two commands used to differ by up to 0.067 AUC."""
    a, b = encoders
    common = ["--target", a, "--shadow", b, "--views", "4", "--n-bootstrap", "50"]
    res = _cli(["attack", *common, "--out", tmp_path / "X"])
    assert res.exit_code == 0, res.output
    res = _cli(["audit", *common, "--no-utility", "--out", tmp_path / "Y"])
    assert res.exit_code == 0, res.output
    x = json.loads((tmp_path / "X" / "results.json").read_text())
    y = json.loads((tmp_path / "Y" / "results.json").read_text())
    assert set(x["attacks"]) == set(y["attacks"]) and "lpla-diff" in x["attacks"]
    for name in x["attacks"]:
        for key in ("auc", "auc_ci95", "tpr_at_fpr", "threshold", "roc"):
            assert x["attacks"][name][key] == y["attacks"][name][key], (name, key)
    assert x["auc_vs_views"] == y["auc_vs_views"]
    assert x["config"]["clean_view0"] is True  # the one default, through both commands
    files = sorted(p.name for p in (tmp_path / "X" / "embeddings").glob("*.npz"))
    assert files == sorted(p.name for p in (tmp_path / "Y" / "embeddings").glob("*.npz"))
    assert "shadow_on_target_candidates.npz" in files
    for name in files:
        ex, ey = (open_embeddings(tmp_path / d / "embeddings" / name) for d in ("X", "Y"))
        np.testing.assert_array_equal(np.asarray(ex.embeddings), np.asarray(ey.embeddings))
        np.testing.assert_array_equal(ex.member, ey.member)
        assert ex.clean_view0 and ey.clean_view0
    assert (tmp_path / "Y" / "report.html").is_file()
    assert not (tmp_path / "X" / "report.html").exists()


def _files(tmp: Path, clean_target: bool, clean_shadow: bool) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    member = (np.arange(40) < 20).astype(np.int8)

    def write(name: str, clean: bool) -> Path:
        meta = {"clean_view0": clean}
        emb = rng.normal(size=(40, 3, 8)).astype(np.float32)
        return write_embeddings(tmp / f"{name}.npz", emb, member, np.arange(40), meta=meta)

    return write("t", clean_target), write("s", clean_shadow)


def test_how_views_were_made_is_read_from_the_files(tmp_path: Path) -> None:
    t, s = _files(tmp_path, clean_target=True, clean_shadow=False)
    out = tmp_path / "out"
    res = _cli(["attack", "--target-embeddings", t, "--shadow-embeddings", s, "--out", out])
    assert res.exit_code == 2 and "query both the same way" in res.output
    assert not out.exists()
    t, s = _files(tmp_path, clean_target=True, clean_shadow=True)
    res = _cli(
        ["attack", "--target-embeddings", t, "--shadow-embeddings", s, "--no-clean-view0",
         "--out", out]
    )  # fmt: skip
    assert res.exit_code == 2 and "says clean_view0=True" in res.output
    res = _cli(
        ["attack", "--target-embeddings", t, "--shadow-embeddings", s, "--n-bootstrap", "20",
         "--out", out]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["clean_view0"] is True
    assert "lpla" in results["attacks"]  # LpLA runs without a reference (self-calibrated)
    assert any("calibrated on the candidates" in n for n in results["notes"])


def _broken_files(tmp: Path, good: Path) -> dict[str, Path]:
    """Eleven kinds of broken embeddings file, each given as the target's."""
    e = open_embeddings(good)
    emb, member, index = np.asarray(e.embeddings), np.asarray(e.member), np.asarray(e.index)
    out: dict[str, Path] = {}

    def raw(name: str, **arrays: np.ndarray) -> None:
        out[name] = tmp / f"{name}.npz"
        np.savez(out[name], **arrays)

    raw("missing-member", embeddings=emb, index=index)
    raw("missing-embeddings", member=member, index=index)
    raw("2-d embeddings", embeddings=emb[:, 0], member=member, index=index)
    raw("short member", embeddings=emb, member=member[:-1], index=index)
    raw("member value 2", embeddings=emb, member=np.full_like(member, 2), index=index)
    nan = emb.copy()
    nan[3, 1, 2] = np.nan
    raw("nan", embeddings=nan, member=member, index=index)
    raw("no members", embeddings=emb, member=np.zeros_like(member), index=index)
    raw("object array", embeddings=emb, member=member, index=index.astype(object))
    for name, data in (("not a zip", b"hello"), ("truncated", good.read_bytes()[:200])):
        out[name] = tmp / f"{name}.npz"
        out[name].write_bytes(data)
    out["missing file"] = tmp / "nowhere.npz"
    return out


@pytest.mark.parametrize("command", ["attack", "audit"])
def test_bad_embeddings_leave_no_output(tmp_path: Path, command: str) -> None:
    _, good = _files(tmp_path, clean_target=True, clean_shadow=True)
    broken = _broken_files(tmp_path, good)
    assert len(broken) == 11
    for name, path in broken.items():
        out = tmp_path / f"out-{command}"
        res = _cli(
            [command, "--target-embeddings", path, "--shadow-embeddings", good, "--out", out]
        )
        assert res.exit_code == 2, (name, res.output)
        assert "Traceback" not in res.output and res.output.startswith("lpla: error:"), name
        assert not out.exists(), f"{name}: {command} left {sorted(out.rglob('*'))}"


def test_a_failed_query_removes_the_run_directory_it_created(
    encoders: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = encoders
    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "out"
    res = _cli(["attack", "--target", broken, "--shadow", a, "--out", out])
    assert res.exit_code == 2 and "safetensors" in res.output
    assert not out.exists()


def test_every_default_is_set_once() -> None:
    from lpla.audit import AUDIT_RECIPE, AuditConfig, EncoderSpec
    from lpla.pipeline import AttackSettings, QuerySettings
    from lpla.ssl.config import TrainConfig

    cfg, query, attack = AuditConfig(), QuerySettings(), AttackSettings()
    assert cfg.query_settings() == dataclasses.replace(query, device=cfg.device)
    assert cfg.attack_settings() == attack
    train = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(EncoderSpec):
        if f.name == "dataset":
            continue
        assert f.name in train, f"EncoderSpec.{f.name} is not a TrainConfig field"
        assert f.default == AUDIT_RECIPE.get(f.name, train[f.name]), f.name


def test_checkpoint_file_names_are_spelled_in_one_module() -> None:
    names = ("checkpoint.json", "model.safetensors", "train_state.safetensors", "split.json",
             "paired_halves.npz")  # fmt: skip
    owner = SRC / "ssl" / "checkpoint.py"
    offenders = [
        f"{path.relative_to(SRC)}: {name}"
        for path in SRC.rglob("*.py")
        if path != owner
        for name in names
        if re.search(rf"[\"']{re.escape(name)}[\"']", path.read_text())
    ]
    assert offenders == []


def test_layers_hold_and_no_module_imports_in_a_cycle() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint)], capture_output=True, text=True, cwd=SRC.parents[1])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    import grimp

    graph = grimp.build_graph("lpla")
    modules = sorted(graph.modules)
    cycles = [
        (a, b)
        for i, a in enumerate(modules)
        for b in modules[i + 1 :]
        if graph.chain_exists(importer=a, imported=b)
        and graph.chain_exists(importer=b, imported=a)
        and a != "lpla"
        and b != "lpla"
    ]
    assert cycles == []


@pytest.mark.parametrize("command", ["attack", "audit"])
def test_zero_bootstrap_resamples_is_one_clear_line(tmp_path: Path, command: str) -> None:
    t, s = _files(tmp_path, clean_target=True, clean_shadow=True)
    out = tmp_path / "out"
    res = _cli(
        [command, "--target-embeddings", t, "--shadow-embeddings", s, "--n-bootstrap", "0",
         "--out", out]
    )  # fmt: skip
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "--n-bootstrap must be >= 1" in res.output
    assert not out.exists()


def test_swapped_labels_read_below_chance_not_no_leakage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    member = (np.arange(400) < 200).astype(np.int8)
    norms = np.exp(0.3 * rng.normal(size=400) + 0.6 * member)  # members: larger norms

    def write(name: str, flags: np.ndarray) -> Path:
        d = rng.normal(size=(400, 2, 8))
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        emb = (d * norms[:, None, None]).astype(np.float32)
        return write_embeddings(tmp_path / f"{name}.npz", emb, flags, np.arange(400))

    t = write("t", 1 - member)  # the target's labels are swapped
    s = write("s", member)
    out = tmp_path / "out"
    res = _cli(["audit", "--target-embeddings", t, "--shadow-embeddings", s, "--attacks",
                "norm-threshold", "--n-bootstrap", "200", "--out", out])  # fmt: skip
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert "below chance" in html and "labels swapped" in html
    assert "No leakage" not in html
