"""Batched image augmentations (kornia), one recipe per SSL framework plus query-time ones.

Augmentation strength decides how much an encoder memorises (weak crops + small member sets leak
most, see docs/training.md), so a recipe is chosen by name independently of the framework, and its
crop scale and colour-jitter magnitude can be overridden. Recipes follow each paper, scaled to the
image size: small images get a milder minimum crop (0.2 instead of 0.08) and no blur (a blur kernel
on 28 pixels erases the image). Grayscale images skip hue, saturation and grayscale ops.

Randomness comes from torch's global RNG, so ``torch.manual_seed`` makes a batch reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import kornia.augmentation as K
from torch import Tensor, nn

from lpla.errors import LplaError
from lpla.registry import Registry


@dataclass(frozen=True)
class ViewRecipe:
    """The knobs of one view's pipeline (paper values at strength 1)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


class Augmentation(nn.Module):
    """One pipeline per view (asymmetric recipes such as BYOL differ between views).

    ``forward`` applies view 0's pipeline; ``view(i, x)`` applies view ``i``'s (cycling).
    """

    def __init__(self, name: str, pipelines: list[nn.Module], recipes: list[ViewRecipe]) -> None:
        super().__init__()
        self.name = name
        self.pipelines = nn.ModuleList(pipelines)
        self.recipes = recipes

    def forward(self, x: Tensor) -> Tensor:
        return self.view(0, x)

    def view(self, index: int, x: Tensor) -> Tensor:
        return self.pipelines[index % len(self.pipelines)](x).clamp_(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of what was applied (stored in checkpoint.json)."""
        return {"name": self.name, "views": [asdict(r) for r in self.recipes]}


RecipeFactory = Callable[[int], list[ViewRecipe]]  # image size -> per-view recipes
AUGMENTATIONS: Registry[RecipeFactory] = Registry("augmentation")


def _min_crop(size: int, at_224: float, small: float) -> float:
    return at_224 if size >= 128 else small


@AUGMENTATIONS.register("simclr", "SimCLR (Chen et al. 2020): crop, flip, jitter .4/.4/.4/.1, gray")
def _simclr(size: int) -> list[ViewRecipe]:
    return [ViewRecipe(crop_scale=(_min_crop(size, 0.08, 0.2), 1.0), blur_p=0.5)]


@AUGMENTATIONS.register("moco-v2", "MoCo v2 (Chen et al. 2020): SimCLR's recipe with blur")
def _moco_v2(size: int) -> list[ViewRecipe]:
    return [ViewRecipe(crop_scale=(_min_crop(size, 0.2, 0.2), 1.0), blur_p=0.5)]


@AUGMENTATIONS.register("simsiam", "SimSiam (Chen & He 2021): MoCo v2's recipe")
def _simsiam(size: int) -> list[ViewRecipe]:
    return [ViewRecipe(crop_scale=(_min_crop(size, 0.2, 0.2), 1.0), blur_p=0.5)]


def _byol_pair(crop: tuple[float, float]) -> list[ViewRecipe]:
    base = ViewRecipe(crop_scale=crop, saturation=0.2)
    return [replace(base, blur_p=1.0), replace(base, blur_p=0.1, solarize_p=0.2)]


@AUGMENTATIONS.register("byol", "BYOL (Grill et al. 2020): asymmetric blur 1.0/0.1, solarize 0/0.2")
def _byol(size: int) -> list[ViewRecipe]:
    return _byol_pair((_min_crop(size, 0.08, 0.2), 1.0))


@AUGMENTATIONS.register("barlow-twins", "Barlow Twins (Zbontar et al. 2021): BYOL's recipe")
def _barlow_twins(size: int) -> list[ViewRecipe]:
    return _byol_pair((_min_crop(size, 0.08, 0.2), 1.0))


@AUGMENTATIONS.register("vicreg", "VICReg (Bardes et al. 2022): blur .5, solarize .1 (lightly)")
def _vicreg(size: int) -> list[ViewRecipe]:
    crop = (_min_crop(size, 0.08, 0.2), 1.0)
    return [ViewRecipe(crop_scale=crop, saturation=0.2, blur_p=0.5, solarize_p=0.1)]


@AUGMENTATIONS.register("dino", "DINO (Caron et al. 2021): 2 global crops .4-1, blur 1/.1, sol. .2")
def _dino(size: int) -> list[ViewRecipe]:
    return _byol_pair((0.4, 1.0))


@AUGMENTATIONS.register("weak", "query/leaky recipe: crop .8-1, flip, brightness/contrast .1")
def _weak(size: int) -> list[ViewRecipe]:
    return [
        ViewRecipe(
            crop_scale=(0.8, 1.0),
            brightness=0.1,
            contrast=0.1,
            saturation=0.0,
            hue=0.0,
            jitter_p=1.0,
            grayscale_p=0.0,
        )
    ]


@AUGMENTATIONS.register("none", "identity: the clean image")
def _none(size: int) -> list[ViewRecipe]:
    return []


def create_augmentation(
    name: str,
    image_shape: tuple[int, int, int],
    strength: float = 1.0,
    *,
    crop_scale_min: float | None = None,
    jitter: float | None = None,
) -> Augmentation:
    """Build recipe ``name`` for images ``(C, H, W)``.

    ``strength`` in [0, 1+] scales the jitter magnitudes and the crop range (0 = no crop, no
    jitter); ``crop_scale_min`` and ``jitter`` (brightness = contrast = saturation = jitter,
    hue = jitter / 4) override the recipe after scaling.
    """
    recipes = AUGMENTATIONS.get(name)(min(image_shape[1:]))
    if strength < 0:
        raise LplaError(f"augmentation strength must be >= 0, got {strength}")
    if crop_scale_min is not None and not 0.0 < crop_scale_min <= 1.0:
        raise LplaError(f"crop_scale_min must be in (0, 1], got {crop_scale_min}")
    if jitter is not None and not 0.0 <= jitter <= 1.0:
        raise LplaError(f"jitter must be in [0, 1], got {jitter}")
    if name == "none":
        identity = nn.Identity()
        return Augmentation(name, [identity], [])
    scaled = [_scale(r, strength, crop_scale_min, jitter) for r in recipes]
    return Augmentation(name, [_pipeline(r, image_shape) for r in scaled], scaled)


def _scale(
    r: ViewRecipe, strength: float, crop_scale_min: float | None, jitter: float | None
) -> ViewRecipe:
    lo = r.crop_scale[0] + (1.0 - min(1.0, strength)) * (1.0 - r.crop_scale[0])
    if crop_scale_min is not None:
        lo = crop_scale_min
    b, c, s, h = (strength * v for v in (r.brightness, r.contrast, r.saturation, r.hue))
    if jitter is not None:
        b, c, s, h = jitter, jitter, jitter, jitter / 4
    return replace(r, crop_scale=(lo, 1.0), brightness=b, contrast=c, saturation=s, hue=min(h, 0.5))


def _pipeline(r: ViewRecipe, image_shape: tuple[int, int, int]) -> nn.Module:
    channels, height, width = image_shape
    color = channels == 3
    ops: list[nn.Module] = []
    if r.crop_scale[0] < 1.0:
        ops.append(K.RandomResizedCrop((height, width), scale=r.crop_scale))
    if r.flip > 0:
        ops.append(K.RandomHorizontalFlip(p=r.flip))
    sat, hue = (r.saturation, r.hue) if color else (0.0, 0.0)
    if max(r.brightness, r.contrast, sat, hue) > 0 and r.jitter_p > 0:
        ops.append(K.ColorJitter(r.brightness, r.contrast, sat, hue, p=r.jitter_p))
    if color and r.grayscale_p > 0:
        ops.append(K.RandomGrayscale(p=r.grayscale_p))
    if min(height, width) >= 64 and r.blur_p > 0:  # blur erases small images
        kernel = 2 * (min(height, width) // 20) + 1  # ~10% of the side, odd (SimCLR)
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=r.blur_p))
    if r.solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=r.solarize_p))
    return nn.Sequential(*ops) if ops else nn.Identity()


def list_augmentations(pattern: str = "*") -> list[str]:
    return AUGMENTATIONS.names(pattern)
