"""Untrusted files: a file that would run code when unpickled or executed is refused, never run.

Every malicious file here carries a payload that creates a marker file (``os.system("touch
...")`` through ``__reduce__``, or the equivalent through torch.export's graph or shape
expressions). Each test checks the one-line refusal (exit code 2, ``lpla: error:``) and that the
marker does not exist afterwards.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lpla.errors import LplaError
from test_reliability_common import (  # noqa: F401  (_tally: the module's count fixture)
    _tally,
    assert_user_error,
    count,
    invoke,
    run_cli,
    snapshot,
)


class Payload:
    """Unpickling this runs ``touch marker``: the canonical malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _torch_pickle(marker: Path, **kw: Any) -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": Payload(marker)}, buf, **kw)
    return buf.getvalue()


def _embed_args(encoder: str, out: Path, *extra: str) -> list[str]:
    return [
        "embed",
        "--encoder",
        encoder,
        "--dataset",
        "fashion-mnist",
        "--limit",
        "4",
        "--views",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "the payload ran"


# ------------------------------------------------------------------------------ torch pickles


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ts", ".jit"])
@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_checkpoint_as_encoder_is_refused(
    tmp_path: Path, marker: Path, suffix: str, legacy: bool
) -> None:
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(_torch_pickle(marker, _use_new_zipfile_serialization=not legacy))
    out = tmp_path / "out"
    before = snapshot(out)
    count("inputs")
    res = invoke(_embed_args(str(evil), out / "emb.npz"), cwd=tmp_path)
    assert_user_error(res, out, before=before, contains="never unpickles")


def test_pickle_dressed_as_torchscript_is_not_unpickled(tmp_path: Path, marker: Path) -> None:
    """A zip with TorchScript's names but a Python pickle inside: torch.jit.load's C++
    unpickler knows no Python globals, so it fails instead of calling os.system."""
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("evil/code/__torch__.py", "def forward(self, x):\n    return x\n")
        zf.writestr("evil/constants.pkl", pickle.dumps(Payload(marker), protocol=2))
        zf.writestr("evil/data.pkl", pickle.dumps(Payload(marker), protocol=2))
        zf.writestr("evil/version", "3\n")
    out = tmp_path / "out"
    count("inputs")
    res = invoke(_embed_args(str(evil), out / "emb.npz"), cwd=tmp_path)
    assert_user_error(res, out, before=set(), contains="cannot load TorchScript")


# ---------------------------------------------------------------------------- torch.export


class _Flat(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.flatten(1), torch.ones(3, 784))


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "ok.pt2"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))
    program = torch.export.export(
        model,
        (torch.rand(4, 1, 28, 28),),
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
    )
    torch.export.save(program, path)
    return path


def _rewrite(src: Path, dst: Path, edit: Any) -> None:
    """Copy a zip, letting ``edit(name, data) -> data | None`` change (or drop) members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)


def _pt2_attacks(marker: Path) -> dict[str, Any]:
    """name -> (edit function, extra members) making a .pt2 that runs ``touch marker`` on load."""
    evil_pickle = _torch_pickle(marker)
    shell = f"touch {marker}"

    def sample_inputs(name: str, data: bytes) -> bytes:  # torch falls back to weights_only=False
        return evil_pickle if name.endswith("sample_inputs/model.pt") else data

    def pickled_weight(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"].values()))
            first["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/weight_0"):
            return evil_pickle
        return data

    def graph_target(name: str, data: bytes) -> bytes:  # getattr chain from torch to os.system
        if name.endswith(".json") and "/models/" in name:
            text = data.decode().replace(
                '"torch.ops.aten.view.default"', '"torch.serialization.os.system"'
            )
            text = text.replace(
                '"torch.ops.aten.linear.default"', '"torch.serialization.os.system"'
            )
            return text.encode()
        return data

    def shape_expr(name: str, data: bytes) -> bytes:  # sympy.sympify is eval
        if name.endswith(".json") and "/models/" in name:
            prog = json.loads(data)
            expr = f"__import__('os').system('{shell}')"
            prog_text = json.dumps(prog)
            assert '"expr_str"' in prog_text
            import re

            prog_text = re.sub(r'"expr_str": "[^"]*"', f'"expr_str": "{expr}"', prog_text, count=1)
            return prog_text.encode()
        return data

    def builtin_call(name: str, data: bytes) -> bytes:  # open() truncates a file: no __ needed
        if name.endswith(".json") and "/models/" in name:
            import re

            text = re.sub(
                r'"expr_str": "[^"]*"',
                "\"expr_str\": \"open('victim', 'w')\"",
                data.decode(),
                count=1,
            )
            return text.encode()
        return data

    return {
        "sample-inputs-pickle": (sample_inputs, {}),
        "pickled-weight": (pickled_weight, {}),
        "opaque-constant": (
            lambda n, d: d,
            {"data/constants/opaque_obj_0": pickle.dumps(Payload(marker))},
        ),
        "aoti-shared-library": (lambda n, d: d, {"data/aotinductor/model/evil.so": b"\x7fELF"}),
        "graph-target-os-system": (graph_target, {}),
        "shape-expression-eval": (shape_expr, {}),
        "shape-expression-builtin": (builtin_call, {}),
    }


@pytest.mark.parametrize(
    "attack",
    [
        "sample-inputs-pickle",
        "pickled-weight",
        "opaque-constant",
        "aoti-shared-library",
        "graph-target-os-system",
        "shape-expression-eval",
        "shape-expression-builtin",
    ],
)
def test_malicious_torch_export_archive_is_refused(
    tmp_path: Path, marker: Path, good_pt2: Path, attack: str
) -> None:
    from lpla.encoders import load_any_encoder

    edit, extra = _pt2_attacks(marker)[attack]
    evil = tmp_path / "evil.pt2"
    _rewrite(good_pt2, evil, edit)
    root = zipfile.ZipFile(good_pt2).namelist()[0].split("/")[0]
    with zipfile.ZipFile(evil, "a") as zf:
        for name, data in extra.items():
            zf.writestr(f"{root}/{name}", data)
    count("inputs")
    with pytest.raises(LplaError):
        load_any_encoder(str(evil), image_shape=(1, 28, 28))
    assert not (tmp_path / "victim").exists()
    out = tmp_path / "out"
    res = invoke(_embed_args(str(evil), out / "emb.npz"), cwd=tmp_path)
    assert_user_error(res, out, before=set())
    assert not (tmp_path / "victim").exists()


def test_the_pt2_checks_keep_real_exports_working(good_pt2: Path) -> None:
    """The allow-lists must not refuse what torch.export.save writes (dynamic batch included)."""
    from lpla.encoders import load_any_encoder

    enc = load_any_encoder(str(good_pt2), image_shape=(1, 28, 28))
    assert enc.kind == "export" and enc.output_dim == 5
    count("inputs")


def test_torch_load_is_weights_only_again_after_an_export_load(good_pt2: Path) -> None:
    from lpla.encoders import load_any_encoder

    before = {
        k: os.environ.get(k)
        for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    load_any_encoder(str(good_pt2))
    after = {k: os.environ.get(k) for k in before}
    assert after == before  # the forcing switch is scoped to the load


# --------------------------------------------------------------------------- data files


def test_npz_with_pickled_object_array_is_refused(tmp_path: Path, marker: Path) -> None:
    evil = tmp_path / "evil.npz"
    np.savez(
        evil,
        embeddings=np.array([Payload(marker)], dtype=object),
        member=np.array([1], np.int8),
        index=np.array([0]),
    )
    out = tmp_path / "out"
    for cmd in (
        [
            "attack",
            "--target-embeddings",
            str(evil),
            "--shadow-embeddings",
            str(evil),
            "--out",
            str(out),
        ],
        [
            "audit",
            "--target-embeddings",
            str(evil),
            "--shadow-embeddings",
            str(evil),
            "--out",
            str(out),
        ],
    ):
        count("inputs")
        res = invoke(cmd, cwd=tmp_path)
        assert_user_error(res, out, before=snapshot(out), contains="object arrays")


def test_npz_with_object_member_array_is_refused(tmp_path: Path, marker: Path) -> None:
    from lpla.embeddings import open_embeddings

    evil = tmp_path / "evil.npz"
    np.savez(
        evil,
        embeddings=np.zeros((2, 2, 3), np.float32),
        member=np.array([Payload(marker), 1], dtype=object),
        index=np.arange(2),
    )
    count("inputs")
    with pytest.raises(LplaError, match="object arrays"):
        open_embeddings(evil)


def test_pickle_named_safetensors_is_refused(tmp_path: Path, marker: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(_torch_pickle(marker))
    out = tmp_path / "out"
    count("inputs")
    res = invoke(
        _embed_args("fixtures_user_model:tiny_encoder", out / "e.npz", "--weights", str(weights)),
        cwd=tmp_path,
    )
    assert_user_error(res, out, before=set(), contains="safetensors")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) lpla checkpoint to tamper with."""
    out = tmp_path_factory.mktemp("ckpt") / "enc"
    res = invoke(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--members",
            "16",
            "--backbone",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--no-utility",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    return out


def test_checkpoint_with_pickle_in_place_of_safetensors_is_refused(
    tmp_path: Path, marker: Path, checkpoint: Path
) -> None:
    ckpt = tmp_path / "enc"
    shutil.copytree(checkpoint, ckpt)
    (ckpt / "model.safetensors").write_bytes(_torch_pickle(marker))
    count("inputs")
    res = invoke(_embed_args(str(ckpt), tmp_path / "out" / "e.npz"), cwd=tmp_path)
    assert_user_error(res, tmp_path / "out", before=set(), contains="safetensors")


def test_malicious_cifar_batch_is_refused(tmp_path: Path, marker: Path) -> None:
    from lpla.data.registry import create_dataset

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload(marker)}, protocol=2))
    count("inputs", 2)
    with pytest.raises(LplaError, match="refusing to unpickle"):
        create_dataset("cifar10", split="test", root=str(tmp_path / "cifar"))
    out = tmp_path / "out"
    res = invoke(
        [
            "embed",
            "--encoder",
            "fixtures_user_model:tiny_encoder",
            "--dataset",
            "cifar10",
            "--data-root",
            str(tmp_path / "cifar"),
            "--out",
            str(out / "e.npz"),
            "--no-progress",
        ],
        cwd=tmp_path,
    )
    assert_user_error(res, out, before=set(), contains="refusing to unpickle")


@pytest.mark.parametrize("where", ["audit-config", "train-config", "train-param"])
def test_yaml_python_tags_are_refused(tmp_path: Path, marker: Path, where: str) -> None:
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"members: {tag}\n")
    args = {
        "audit-config": ["audit", "--config", str(cfg), "--out", str(tmp_path / "run")],
        "train-config": ["train", "--config", str(cfg), "--out", str(tmp_path / "run")],
        "train-param": [
            "train",
            "--param",
            f"output_dim={tag}",
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--members",
            "8",
        ],
    }[where]
    count("inputs")
    res = invoke(args, cwd=tmp_path)
    assert_user_error(res, tmp_path / "run", before=set())


def test_paired_halves_with_object_arrays_is_refused(tmp_path: Path, marker: Path) -> None:
    from lpla.data.splits import PairedHalves

    evil = tmp_path / "halves.npz"
    np.savez(
        evil,
        index=np.array([Payload(marker)], dtype=object),
        membership=np.ones((2, 1), bool),
        seed=np.int64(0),
    )
    count("inputs")
    with pytest.raises(LplaError):
        PairedHalves.load(evil)


def test_report_of_a_run_with_pickled_scores_is_refused(tmp_path: Path, marker: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"attacks": {}, "notes": []}))
    np.savez(run / "scores.npz", member=np.array([Payload(marker)], dtype=object))
    np.savez(run / "norms.npz", p=np.array([Payload(marker)], dtype=object))
    count("inputs")
    res = invoke(["report", str(run)], cwd=tmp_path)
    assert res.exit_code != 0 or not marker.exists()
    assert "Traceback" not in res.output


def test_cli_subprocess_refuses_a_pickle_encoder(tmp_path: Path, marker: Path) -> None:
    """The real entry point (not CliRunner): one line, exit 2, no payload run."""
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_torch_pickle(marker))
    count("inputs")
    res = run_cli(_embed_args(str(evil), tmp_path / "out" / "e.npz"), cwd=tmp_path)
    assert_user_error(res, tmp_path / "out", before=set(), contains="never unpickles")


def test_every_deserialisation_point_is_known() -> None:
    """A new torch.load / pickle / jit.load / allow_pickle call must be reviewed and listed in
    docs/reliability.md: this fails when one appears that is not in the reviewed list."""
    import re

    root = Path(__file__).resolve().parents[1] / "src" / "lpla"
    pattern = re.compile(
        r"torch\.load\(|pickle\.loads?\(|Unpickler|jit\.load\(|export\.load\(|allow_pickle"
        r"|weights_only|np\.load\(|safe_open\(|load_file\(|yaml\.(safe_)?load\(|loadmat\("
        r"|Image\.open\("
    )
    found = set()
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            if pattern.search(code) and not code.strip().startswith(('"', "'", "``")):
                found.add(str(path.relative_to(root)))
    reviewed = {
        "embeddings.py",
        "encoders.py",
        "report/rundir.py",
        "data/safe_pickle.py",
        "data/splits.py",
        "data/registry.py",
        "data/formats.py",
        "data/folder.py",
        "ssl/checkpoint.py",
        "ssl/config.py",
        "audit/config.py",
        "cli/train.py",
        "cli/_common.py",
    }
    assert found <= reviewed, f"unreviewed deserialisation in {sorted(found - reviewed)}"
    docs = (root.parents[1] / "docs" / "reliability.md").read_text()
    for name in sorted(found):
        assert name in docs, f"{name} not listed in docs/reliability.md"
