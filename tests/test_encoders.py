"""Loading encoders from outside: torch.export, TorchScript, module:factory + safetensors, ours."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import kornia.augmentation as KA
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lpla.data.base import ArrayDataset
from lpla.embeddings import EmbeddingsFile
from lpla.encoders import (
    ENCODER_KINDS,
    detect_kind,
    is_torchscript_archive,
    load_any_encoder,
    module_fingerprint,
)
from lpla.errors import LplaError
from lpla.query import embed_dataset

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fixtures_user_model import TinyEncoder  # noqa: E402

SHAPE = (1, 12, 12)


@pytest.fixture
def trained() -> nn.Module:
    """The 'user's model': other weights than the factory's default ones."""
    torch.manual_seed(99)
    return TinyEncoder().eval()


def _views(encoder, ds: ArrayDataset) -> np.ndarray:
    aug = nn.Sequential(KA.RandomResizedCrop((12, 12), scale=(0.5, 1.0)), KA.RandomHorizontalFlip())
    out = embed_dataset(
        encoder, ds, np.arange(24), views=3, augmentation=aug, batch_size=8, seed=11, progress=False
    )
    assert isinstance(out, EmbeddingsFile)
    return out.embeddings


def _export(model: nn.Module, path: Path, dynamic: bool = True) -> Path:
    x = torch.rand(4, *SHAPE)
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)
    return path


def _no_jit_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.* is deprecated, still supported
    return ctx


def test_exported_program_gives_the_eager_embeddings(trained, tiny_dataset, tmp_path) -> None:
    path = _export(trained, tmp_path / "enc.pt2")
    enc = load_any_encoder(str(path), image_shape=SHAPE)
    assert enc.kind == "export" and enc.output_dim == 8 and enc.name == "enc.pt2"
    np.testing.assert_allclose(
        _views(enc, tiny_dataset), _views(trained, tiny_dataset), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_gives_the_eager_embeddings(trained, tiny_dataset, tmp_path, how) -> None:
    ctx = _no_jit_warnings()
    try:
        if how == "script":
            scripted = torch.jit.script(trained)
        else:
            scripted = torch.jit.trace(trained, torch.rand(2, *SHAPE))
        torch.jit.save(scripted, str(tmp_path / "enc.pt"))
        assert is_torchscript_archive(tmp_path / "enc.pt")
        enc = load_any_encoder(str(tmp_path / "enc.pt"))
    finally:
        ctx.__exit__(None, None, None)
    assert enc.kind == "torchscript" and enc.output_dim is None  # no shape known yet: no probe
    np.testing.assert_allclose(
        _views(enc, tiny_dataset), _views(trained, tiny_dataset), rtol=1e-5, atol=1e-6
    )


def test_factory_with_safetensors_gives_the_eager_embeddings(trained, tiny_dataset, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(weights))
    enc = load_any_encoder("fixtures_user_model:tiny_encoder", weights=str(weights))
    assert enc.kind == "factory" and enc.meta["weights"] == str(weights.resolve())
    assert module_fingerprint(enc.module) == module_fingerprint(trained)
    np.testing.assert_allclose(
        _views(enc, tiny_dataset), _views(trained, tiny_dataset), rtol=1e-6, atol=1e-7
    )
    # without --weights the factory's own (different) weights are used: the file mattered
    default = load_any_encoder("fixtures_user_model:tiny_encoder")
    assert np.abs(_views(default, tiny_dataset) - _views(trained, tiny_dataset)).max() > 1e-3


def test_safetensors_with_other_keys_lists_them(trained, tmp_path) -> None:
    state = dict(trained.state_dict())
    state["extra.weight"] = state.pop("head.weight")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(
        LplaError,
        match=r"1 missing keys \['head.weight'\], 1 unexpected keys "
        r"\['extra.weight'\]",
    ):
        load_any_encoder(
            "fixtures_user_model:tiny_encoder", weights=str(tmp_path / "w.safetensors")
        )
    state = dict(trained.state_dict())
    state["head.weight"] = torch.zeros(3, 6)
    save_file(state, str(tmp_path / "s.safetensors"))
    with pytest.raises(LplaError, match=r"other shapes, e\.g\. head\.weight \(3, 6\) vs \(8, 6\)"):
        load_any_encoder(
            "fixtures_user_model:tiny_encoder", weights=str(tmp_path / "s.safetensors")
        )


def test_pickled_checkpoints_are_refused_not_unpickled(trained, tmp_path) -> None:
    torch.save(trained.state_dict(), tmp_path / "sd.pt")
    torch.save(trained, tmp_path / "full.pt")
    for name in ("sd.pt", "full.pt"):
        with pytest.raises(
            LplaError, match=r"is a pickled checkpoint, not TorchScript; lpla never"
        ):
            load_any_encoder(str(tmp_path / name))
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    with pytest.raises(LplaError, match=r"only from \.safetensors"):
        load_any_encoder("fixtures_user_model:tiny_encoder", weights=str(tmp_path / "w.pt"))


def test_feature_map_output_error_and_pool_option() -> None:
    with pytest.raises(LplaError, match=r"returns shape \(2, 4, 12, 12\), a feature map.*--pool"):
        load_any_encoder("fixtures_user_model:feature_map_encoder", image_shape=SHAPE)
    enc = load_any_encoder("fixtures_user_model:feature_map_encoder", image_shape=SHAPE, pool="avg")
    assert enc.output_dim == 4
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(enc.module(x), enc.module.encoder(x).mean(dim=(2, 3)))
    flat = load_any_encoder(
        "fixtures_user_model:feature_map_encoder", image_shape=SHAPE, pool="flatten"
    )
    assert flat.output_dim == 4 * 12 * 12


def test_static_batch_export_gets_the_dynamic_shapes_hint(trained, tmp_path) -> None:
    path = _export(trained, tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(LplaError, match=r"failed on a dummy batch.*Dim\('batch'\)"):
        load_any_encoder(str(path), image_shape=SHAPE)


def test_spec_errors(tmp_path) -> None:
    with pytest.raises(LplaError, match="not found"):
        load_any_encoder(str(tmp_path / "missing.pt2"))
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(LplaError, match="not an lpla checkpoint"):
        load_any_encoder(str(tmp_path / "ckpt"))
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(LplaError, match="module:factory --weights"):
        load_any_encoder(str(tmp_path / "w.safetensors"))
    with pytest.raises(LplaError, match=r"cannot import 'no_such_pkg_xyz\.mod'.*PYTHONPATH"):
        load_any_encoder("no_such_pkg_xyz.mod:make")
    with pytest.raises(LplaError, match="no callable 'nope'"):
        load_any_encoder("fixtures_user_model:nope")
    with pytest.raises(LplaError, match=r"returned str, not a torch\.nn\.Module"):
        load_any_encoder("fixtures_user_model:not_a_module")
    with pytest.raises(LplaError, match="--weights applies only to module:factory"):
        load_any_encoder(str(_export(TinyEncoder().eval(), tmp_path / "e.pt2")), weights="w")
    with pytest.raises(LplaError, match="--layer projection applies only to lpla checkpoints"):
        load_any_encoder("fixtures_user_model:tiny_encoder", layer="projection")
    with pytest.raises(LplaError, match="unknown pool"):
        load_any_encoder("fixtures_user_model:tiny_encoder", pool="max")


def test_kind_detection_is_unambiguous(tmp_path) -> None:
    _export(TinyEncoder().eval(), tmp_path / "a.pt2")
    (tmp_path / "b.ts").write_bytes(b"")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.json").write_text("{}")
    specs = {
        str(tmp_path / "a.pt2"): "export",
        str(tmp_path / "b.ts"): "torchscript",
        str(tmp_path / "c"): "checkpoint",
        "pkg.mod:make": "factory",
    }
    for spec, kind in specs.items():
        assert detect_kind(spec) == kind
        assert [k for k in ENCODER_KINDS if ENCODER_KINDS.get(k).matches(spec)] == [kind]


def _make_checkpoint(directory: Path) -> nn.Module:
    ckpt = pytest.importorskip("lpla.ssl.checkpoint")
    if not all(hasattr(ckpt, f) for f in ("build_model", "save_model", "write_meta")):
        pytest.skip("lpla.ssl.checkpoint has no writer helpers")
    meta = {
        "format": "lpla-ssl-checkpoint",
        "format_version": 1,
        "image_shape": list(SHAPE),
        "backbone": "mlp",
        "framework": "simclr",
        "framework_params": {},
        "augmentation": "weak",
    }
    torch.manual_seed(0)
    model = ckpt.build_model(meta).eval()
    directory.mkdir()
    ckpt.save_model(directory / "model.safetensors", model)
    ckpt.write_meta(directory, meta)
    return model


def test_lpla_checkpoint_directory(tmp_path) -> None:
    model = _make_checkpoint(tmp_path / "run")
    enc = load_any_encoder(str(tmp_path / "run"))
    assert enc.kind == "checkpoint" and enc.augmentation == "weak" and enc.image_shape == SHAPE
    x = torch.rand(5, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(enc.module(x), model.backbone(x))
        proj = load_any_encoder(str(tmp_path / "run"), layer="projection")
        torch.testing.assert_close(proj.module(x), model.project(x))
    assert proj.layer == "projection" and proj.output_dim == model.project(x).shape[1]
