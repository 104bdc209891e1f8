"""Checkpoints: save/load round trip, and one clear error per kind of broken input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lpla.errors import LplaError
from lpla.ssl.backbones import create_backbone
from lpla.ssl.checkpoint import FORMAT, FORMAT_VERSION, load_encoder, save_model, write_meta
from lpla.ssl.frameworks import create_framework


def _write(directory: Path, backbone: str = "cnn-small") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_framework("simclr", create_backbone(backbone, 1, 12), output_dim=32)
    with torch.no_grad():  # non-default values: a load must really restore them
        for p in model.parameters():
            p.add_(0.01)
    save_model(directory / "model.safetensors", model)
    write_meta(
        directory,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": backbone,
            "framework": "simclr",
            "framework_params": model.params,
            "image_shape": [1, 12, 12],
        },
    )
    return model


def test_round_trip_backbone_and_projection(tmp_path: Path) -> None:
    model = _write(tmp_path).eval()
    x = torch.rand(3, 1, 12, 12)
    enc, meta = load_encoder(tmp_path)
    assert not enc.training and meta["backbone"] == "cnn-small"
    assert torch.equal(enc(x), model.backbone(x))
    proj, _ = load_encoder(tmp_path / "model.safetensors", layer="projection")
    assert torch.equal(proj(x), model.project(x)) and proj(x).shape == (3, 32)


def test_missing_and_foreign_inputs(tmp_path: Path) -> None:
    with pytest.raises(LplaError, match=r"checkpoint directory not found"):
        load_encoder(tmp_path / "nope")
    with pytest.raises(LplaError, match=r"not an lpla checkpoint \(no checkpoint.json\)"):
        load_encoder(tmp_path)
    _write(tmp_path)
    with pytest.raises(LplaError, match=r"unknown layer"):
        load_encoder(tmp_path, layer="head")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(LplaError, match=r"model weights not found: .*model.safetensors"):
        load_encoder(tmp_path)


def test_corrupt_safetensors_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(LplaError, match=r"model.safetensors is not a readable safetensors file"):
        load_encoder(tmp_path)


def test_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    _write(tmp_path)
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LplaError, match=r"not one written by lpla train"):
        load_encoder(tmp_path)


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, backbone="mlp")
    meta_path = tmp_path / "checkpoint.json"
    meta_path.write_text(meta_path.read_text().replace('"mlp"', '"cnn-small"'))
    with pytest.raises(LplaError, match=r"does not match the model described.*missing"):
        load_encoder(tmp_path)


def test_corrupt_or_foreign_json(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{broken")
    with pytest.raises(LplaError, match=r"not valid JSON"):
        load_encoder(tmp_path)
    (tmp_path / "checkpoint.json").write_text('{"format": "other"}')
    with pytest.raises(LplaError, match=r"not an lpla SSL checkpoint"):
        load_encoder(tmp_path)
