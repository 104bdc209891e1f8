"""Augmentations: shape and range kept, seeded reproducibility, recipes as documented."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from lpla.errors import LplaError
from lpla.ssl.augment import AUGMENTATIONS, create_augmentation

CONTRACT_NAMES = {
    "simclr",
    "moco-v2",
    "byol",
    "simsiam",
    "barlow-twins",
    "vicreg",
    "dino",
    "weak",
    "none",
}


def _ops(aug: torch.nn.Module, view: int = 0) -> list[type]:
    return [type(m) for m in aug.pipelines[view].modules()]


def test_registry_has_the_contract_names() -> None:
    assert CONTRACT_NAMES <= set(AUGMENTATIONS.names())


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
def test_shape_range_and_seeded_reproducibility(name: str, shape: tuple[int, int, int]) -> None:
    aug = create_augmentation(name, shape)
    x = torch.rand(8, *shape)
    torch.manual_seed(1)
    a = [aug.view(v, x) for v in range(2)]
    torch.manual_seed(1)
    b = [aug.view(v, x) for v in range(2)]
    torch.manual_seed(2)
    c = aug.view(0, x)
    for va, vb in zip(a, b, strict=True):
        assert va.shape == x.shape and va.dtype == torch.float32
        assert va.min() >= 0.0 and va.max() <= 1.0
        assert torch.equal(va, vb)
    if name == "none":
        assert torch.equal(a[0], x)
    else:
        assert not torch.equal(a[0], x)
        assert not torch.equal(a[0], c)


def test_grayscale_skips_colour_only_ops() -> None:
    gray = create_augmentation("simclr", (1, 28, 28))
    color = create_augmentation("simclr", (3, 28, 28))
    assert K.RandomGrayscale not in _ops(gray)
    assert K.RandomGrayscale in _ops(color)
    jitter = next(m for m in gray.pipelines[0].modules() if isinstance(m, K.ColorJitter))
    assert (jitter.brightness, jitter.saturation, jitter.hue) == (0.4, 0.0, 0.0)


def test_blur_only_for_images_of_64_pixels_or_more() -> None:
    assert K.RandomGaussianBlur not in _ops(create_augmentation("simclr", (3, 32, 32)))
    assert K.RandomGaussianBlur in _ops(create_augmentation("simclr", (3, 96, 96)))


def test_crop_scale_follows_image_size_and_overrides() -> None:
    assert create_augmentation("simclr", (3, 32, 32)).recipes[0].crop_scale == (0.2, 1.0)
    assert create_augmentation("simclr", (3, 224, 224)).recipes[0].crop_scale == (0.08, 1.0)
    assert create_augmentation("weak", (1, 28, 28)).recipes[0].crop_scale == (0.8, 1.0)
    over = create_augmentation("simclr", (1, 28, 28), crop_scale_min=0.8, jitter=0.1)
    r = over.recipes[0]
    assert r.crop_scale == (0.8, 1.0) and r.brightness == 0.1 and r.hue == pytest.approx(0.025)
    half = create_augmentation("simclr", (1, 28, 28), strength=0.5).recipes[0]
    assert half.crop_scale == (pytest.approx(0.6), 1.0) and half.brightness == pytest.approx(0.2)


def test_strength_zero_leaves_only_the_flip() -> None:
    aug = create_augmentation("simclr", (1, 12, 12), strength=0.0)
    x = torch.rand(4, 1, 12, 12)
    out = aug(x)
    flipped = x.flip(-1)
    for i in range(4):
        assert torch.allclose(out[i], x[i]) or torch.allclose(out[i], flipped[i])


def test_byol_views_are_asymmetric() -> None:
    aug = create_augmentation("byol", (3, 96, 96))
    v0, v1 = aug.recipes
    assert (v0.blur_p, v0.solarize_p) == (1.0, 0.0)
    assert (v1.blur_p, v1.solarize_p) == (0.1, 0.2)
    assert len(aug.pipelines) == 2 and aug.describe()["views"][1]["solarize_p"] == 0.2


def test_bad_parameters_are_user_errors() -> None:
    with pytest.raises(LplaError, match=r"unknown augmentation"):
        create_augmentation("heavy", (1, 28, 28))
    with pytest.raises(LplaError, match=r"crop_scale_min"):
        create_augmentation("weak", (1, 28, 28), crop_scale_min=0.0)
    with pytest.raises(LplaError, match=r"jitter"):
        create_augmentation("weak", (1, 28, 28), jitter=2.0)
