"""Loading encoders from outside: torch.export, TorchScript, module:factory + safetensors, ours."""

from __future__ import annotations

import re
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


# ------------------------------------------------------------------ timm / torchvision kinds


def _reference(model: nn.Module, x: torch.Tensor, mean, std) -> torch.Tensor:
    """What an ImageNet-style model computes on grey [0, 1] images: RGB, then (x - mean) / std."""
    rgb = x.expand(-1, 3, -1, -1)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()((rgb - m) / s)


def test_timm_model_with_safetensors_weights(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    trained = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    enc = load_any_encoder("timm:test_resnet", weights=str(tmp_path / "w.safetensors"))
    assert enc.kind == "timm" and enc.meta["weights"] == str((tmp_path / "w.safetensors").resolve())
    # the model's own mean/std (timm's pretrained_cfg: 0.5 for test_resnet), grey repeated
    assert enc.meta["normalize"] == {
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "source": "timm pretrained_cfg",
    }
    assert enc.meta["input_channels"] == 3 and "warning" not in enc.meta
    x = torch.rand(3, 1, 24, 24)
    with torch.no_grad():
        out = enc.module(x)
    assert out.shape == (3, trained.num_features)  # pooled features, no classifier
    torch.testing.assert_close(out, _reference(trained, x, [0.5] * 3, [0.5] * 3))
    # --normalize imagenet / none are honoured and recorded
    plain = load_any_encoder("timm:test_resnet", str(tmp_path / "w.safetensors"), normalize="none")
    assert plain.meta["normalize"] is None
    with torch.no_grad():
        torch.testing.assert_close(plain.module(x), trained(x.expand(-1, 3, -1, -1)))


def test_timm_classifier_weights_are_accepted_and_mismatches_named(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    full = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    save_file(full.state_dict(), str(tmp_path / "full.safetensors"))
    enc = load_any_encoder("timm:test_resnet", weights=str(tmp_path / "full.safetensors"))
    assert enc.meta["skipped_head_keys"] == ["fc.bias", "fc.weight"]
    state = dict(full.state_dict())
    del state["fc.weight"], state["fc.bias"]
    missing = next(iter(state))
    del state[missing]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(LplaError, match=rf"1 missing keys \['{re.escape(missing)}'\]"):
        load_any_encoder("timm:test_resnet", weights=str(tmp_path / "missing.safetensors"))
    prefixed = {f"backbone.{k}": v for k, v in full.state_dict().items()}
    save_file(prefixed, str(tmp_path / "prefixed.safetensors"))
    with pytest.raises(
        LplaError, match=r"keys start with 'backbone\.'.*model\.backbone\.state_dict"
    ):
        load_any_encoder("timm:test_resnet", weights=str(tmp_path / "prefixed.safetensors"))


def test_torchvision_resnet18_head_removed_and_random_init_noted(tmp_path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(4)
    classifier = tvm.resnet18(weights=None, num_classes=10).eval()
    save_file(classifier.state_dict(), str(tmp_path / "r18.safetensors"))
    enc = load_any_encoder("torchvision:resnet18", weights=str(tmp_path / "r18.safetensors"))
    assert enc.kind == "torchvision" and enc.meta["classifier_removed"] == ["fc"]
    assert enc.meta["skipped_head_keys"] == ["fc.bias", "fc.weight"]
    assert enc.meta["normalize"]["source"] == "imagenet"
    x = torch.rand(2, 1, 32, 32)
    classifier.fc = nn.Identity()
    from lpla.encoders import IMAGENET_MEAN, IMAGENET_STD

    with torch.no_grad():
        out = enc.module(x)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, _reference(classifier, x, IMAGENET_MEAN, IMAGENET_STD))
    random = load_any_encoder("torchvision:resnet18", image_shape=(3, 32, 32))
    assert random.meta["weights"] is None and "randomly initialised" in random.meta["warning"]
    assert random.output_dim == 512


def test_remove_classifier_covers_torchvision_head_layouts() -> None:
    from lpla.encoders import remove_classifier

    cases = {
        "vgg-like": (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "classifier.2"),
        "vit-like": (nn.Sequential(nn.Linear(4, 2)), "heads.0"),
        "squeezenet-like": (nn.Sequential(nn.Dropout(), nn.Conv2d(4, 2, 1)), "classifier.1"),
    }
    for name, (head, prefix) in cases.items():
        model = nn.Module()
        setattr(model, prefix.split(".")[0], head)
        assert remove_classifier(model) == prefix, name
    with pytest.raises(LplaError, match="cannot find the classification layer"):
        remove_classifier(nn.Sequential(nn.ReLU()))


def test_library_spec_errors() -> None:
    pytest.importorskip("timm")
    with pytest.raises(LplaError, match=r"timm has no model 'resnet_nope'"):
        load_any_encoder("timm:resnet_nope")
    with pytest.raises(
        LplaError, match=r"torchvision has no model 'resnet19'; did you mean .*resnet18"
    ):
        load_any_encoder("torchvision:resnet19")
    with pytest.raises(LplaError, match=r"cannot read --normalize 'imagenett'"):
        load_any_encoder("torchvision:resnet18", normalize="imagenett")
    with pytest.raises(LplaError, match=r"as many means as stds"):
        load_any_encoder("torchvision:resnet18", normalize="0.5,0.5/0.2")


def test_normalize_option_for_exported_models(trained, tmp_path) -> None:
    path = _export(trained, tmp_path / "enc.pt2")
    enc = load_any_encoder(str(path), normalize="0.25/0.5", image_shape=SHAPE)
    assert enc.meta["normalize"] == {"mean": [0.25], "std": [0.5], "source": "user"}
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(enc.module(x), trained((x - 0.25) / 0.5))
    assert "normalize" not in load_any_encoder(str(path)).meta  # default: none for exports


# ------------------------------------------------------------ exported programs and file hints


class _BatchNormEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.conv(x))).mean(dim=(2, 3))


def test_exported_module_accepts_eval_and_train(tmp_path) -> None:
    torch.manual_seed(0)
    model = _BatchNormEncoder().eval()
    model.bn.running_mean.fill_(0.3)
    enc = load_any_encoder(str(_export(model, tmp_path / "bn.pt2")), image_shape=SHAPE)
    assert enc.module.eval() is enc.module and enc.module.train() is enc.module  # no raise
    enc.module.eval()
    x = torch.rand(5, *SHAPE)
    with torch.no_grad():  # still the eval-mode graph: running statistics, no dropout
        torch.testing.assert_close(enc.module(x), model(x))
        torch.testing.assert_close(enc.module(x[:1]), model(x[:1]))
    pooled = load_any_encoder(str(tmp_path / "bn.pt2"), pool="avg", normalize="0.5/0.5")
    pooled.module.train().eval()  # wrappers propagate to children: still fine


def test_training_mode_export_is_refused(tmp_path) -> None:
    path = _export(_BatchNormEncoder().train(), tmp_path / "train.pt2")
    with pytest.raises(
        LplaError, match=r"exported in training mode \(batch_norm, dropout.*eval\(\)"
    ):
        load_any_encoder(str(path))


def test_files_are_recognised_by_content(trained, tmp_path) -> None:
    from lpla.encoders import sniff_encoder_file

    export_pt = _export(trained, tmp_path / "model.pt")  # torch.export.save to a .pt name
    assert sniff_encoder_file(export_pt) == "export" and detect_kind(str(export_pt)) == "export"
    assert load_any_encoder(str(export_pt), image_shape=SHAPE).output_dim == 8
    ctx = _no_jit_warnings()
    try:
        torch.jit.save(torch.jit.script(trained), str(tmp_path / "script.pt2"))
    finally:
        ctx.__exit__(None, None, None)
    assert detect_kind(str(tmp_path / "script.pt2")) == "torchscript"
    torch.save(trained.state_dict(), tmp_path / "sd.pth")
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    assert sniff_encoder_file(tmp_path / "sd.pth") == "pickle"
    assert sniff_encoder_file(tmp_path / "w.safetensors") == "safetensors"
    assert sniff_encoder_file(tmp_path) is None


def test_encoder_file_hint(trained, tmp_path) -> None:
    from lpla.encoders import encoder_file_hint

    pt2 = _export(trained, tmp_path / "model.pt2")
    hint = encoder_file_hint(pt2)
    assert hint == (
        f"{pt2} is a torch.export file, not an lpla checkpoint directory; pass it with "
        f"--encoder (lpla audit --encoder {pt2} --members ... --nonmembers ...)"
    )
    assert encoder_file_hint(pt2 / "checkpoint.json") == hint  # the path an error message names
    with pytest.raises(LplaError) as err:  # a checkpoint was asked for, a file was given
        load_any_encoder(str(pt2), kind="checkpoint")
    assert str(err.value) == hint
    ctx = _no_jit_warnings()
    try:
        torch.jit.save(torch.jit.script(trained), str(tmp_path / "s.pt"))
    finally:
        ctx.__exit__(None, None, None)
    assert "is a TorchScript file" in (encoder_file_hint(tmp_path / "s.pt") or "")
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    assert "--encoder package.module:factory --weights" in (
        encoder_file_hint(tmp_path / "w.safetensors") or ""
    )
    torch.save(trained, tmp_path / "full.pt")
    assert "pickled torch.save file, which lpla never loads" in (
        encoder_file_hint(tmp_path / "full.pt") or ""
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.json").write_text("{}")
    save_file(trained.state_dict(), str(run / "model.safetensors"))
    for inside in (run / "model.safetensors", run / "checkpoint.json"):
        assert (
            encoder_file_hint(inside)
            == f"{inside} is part of an lpla checkpoint; pass its directory {run}"
        )
    with pytest.raises(LplaError, match=r"part of an lpla checkpoint; pass its directory"):
        load_any_encoder(str(run / "model.safetensors"))
    assert encoder_file_hint(run) is None and encoder_file_hint(tmp_path / "nope.pt2") is None


def test_library_kinds_are_detected_unambiguously() -> None:
    for spec, kind in {"timm:resnet10t": "timm", "torchvision:resnet18": "torchvision"}.items():
        assert detect_kind(spec) == kind
        assert [k for k in ENCODER_KINDS if ENCODER_KINDS.get(k).matches(spec)] == [kind]
