"""Backbones: every name builds, maps [0,1] images to [B, feature_dim], and fails clearly."""

from __future__ import annotations

import sys

import pytest
import torch

from lpla.errors import LplaError
from lpla.ssl.backbones import BACKBONES, create_backbone

EXPECTED_DIM = {
    "cnn-small": 128,
    "mlp": 256,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet18-imagenet": 512,
    "resnet34-imagenet": 512,
    "resnet50-imagenet": 2048,
    "vit-tiny": 192,
}


def test_registry_has_the_contract_names() -> None:
    assert set(EXPECTED_DIM) <= set(BACKBONES.names())


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape_and_feature_dim(name: str, channels: int) -> None:
    torch.manual_seed(0)
    net = create_backbone(name, channels, 16).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, 16, 16))
    assert out.shape == (2, EXPECTED_DIM[name])
    assert net.feature_dim == EXPECTED_DIM[name]
    assert torch.isfinite(out).all()


def test_normalisation_lives_inside_the_model() -> None:
    net = create_backbone("cnn-small", 3, 16)
    state = net.state_dict()
    assert torch.allclose(state["mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    gray = create_backbone("cnn-small", 1, 16)
    assert gray.mean.shape == (1, 1, 1, 1) and gray.std.item() == pytest.approx(0.226, abs=1e-3)


def test_cifar_stem_keeps_resolution_imagenet_stem_reduces_it() -> None:
    cifar = create_backbone("resnet18", 1, 32).body
    imagenet = create_backbone("resnet18-imagenet", 1, 32).body
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.in_channels == 1
    x = torch.rand(1, 1, 32, 32)
    assert cifar.layer1(cifar.relu(cifar.bn1(cifar.conv1(x)))).shape[-1] == 32


def test_cnn_small_survives_tiny_images() -> None:
    net = create_backbone("cnn-small", 1, 5).eval()
    assert net(torch.rand(2, 1, 5, 5)).shape == (2, 128)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(LplaError, match=r"unknown backbone 'resnet9'.*cnn-small"):
        create_backbone("resnet9", 3, 32)


def test_vit_without_timm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(LplaError, match=r"pip install lpla\[vit\]"):
        create_backbone("vit-tiny", 3, 32)


def test_vit_rejects_sizes_its_patch_does_not_divide() -> None:
    with pytest.raises(LplaError, match=r"divisible"):
        create_backbone("vit-tiny", 1, 30)
