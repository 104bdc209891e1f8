"""Backbones: image encoders f(x) -> feature vector, the thing an audit queries.

Every backbone takes float images ``[B, C, H, W]`` in ``[0, 1]`` and normalises them itself, so
callers never need to know a model's mean/std; its output is ``[B, feature_dim]``. Factories take
``(in_channels, image_size)`` because the same family must fit 1x28x28 Fashion-MNIST and
3x96x96 STL-10 (timm's ``create_model`` pattern: one registry, one factory, tests loop over names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lpla.errors import LplaError
from lpla.registry import Registry

BackboneFactory = Callable[[int, int], "Backbone"]
BACKBONES: Registry[BackboneFactory] = Registry("backbone")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """``normalise -> body``; ``feature_dim`` is the width of the output vector."""

    def __init__(self, body: nn.Module, in_channels: int, feature_dim: int) -> None:
        super().__init__()
        mean: tuple[float, ...] = _IMAGENET_MEAN
        std: tuple[float, ...] = _IMAGENET_STD
        if in_channels != 3:  # grayscale or other: one shared statistic per channel
            mean = (sum(_IMAGENET_MEAN) / 3,) * in_channels
            std = (sum(_IMAGENET_STD) / 3,) * in_channels
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.body = body
        self.in_channels = in_channels
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.body((x - self.mean) / self.std)

    @property
    def feature_map_rule(self) -> str | None:
        """The :data:`FEATURE_MAPS` rule that finds this body's last feature map, or None."""
        return next((n for n in FEATURE_MAPS if FEATURE_MAPS.get(n).matches(self.body)), None)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last spatial feature map as tokens ``[B, L, C]``: the layer ``forward`` pools.

        Part-aware attacks (PartCrop) compare crops' pooled features with the positions of the
        whole image's map, so both must come from one layer: ``forward`` is this map pooled.
        """
        rule = self.feature_map_rule
        if rule is None:
            name = getattr(self, "name", type(self.body).__name__)
            raise LplaError(
                f"backbone {name!r} has no spatial feature map (it pools or flattens before "
                "its last layer); use a conv or ViT backbone (cnn-small, resnet18, vit-tiny)"
            )
        return FEATURE_MAPS.get(rule).tokens(self.body, (x - self.mean) / self.std)


@dataclass(frozen=True)
class FeatureMapRule:
    """How to read the last feature map of one family of backbone bodies.

    ``tokens(body, normalised_images)`` returns ``[B, L, C]`` (L positions of C channels), the
    map the body's own output pools.
    """

    matches: Callable[[nn.Module], bool]
    tokens: Callable[[nn.Module, Tensor], Tensor]


#: Feature-map readers by backbone family, tried in order (``Backbone.feature_map``).
FEATURE_MAPS: Registry[FeatureMapRule] = Registry("feature map rule")


def _grid_tokens(fmap: Tensor) -> Tensor:
    return fmap.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]


def _ends_in_global_pool(body: nn.Module) -> bool:
    if not isinstance(body, nn.Sequential) or len(body) < 3:
        return False
    *_, pool, flatten = body
    return isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(flatten, nn.Flatten)


def _resnet_like(body: nn.Module) -> bool:
    return all(hasattr(body, a) for a in ("conv1", "bn1", "layer4", "avgpool"))


def _resnet_tokens(body: nn.Module, x: Tensor) -> Tensor:
    for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(body, part)(x)
    return _grid_tokens(x)


def _timm_vit(body: nn.Module) -> bool:
    return hasattr(body, "forward_features") and hasattr(body, "num_prefix_tokens")


def _vit_tokens(body: nn.Module, x: Tensor) -> Tensor:
    tokens = body.forward_features(x)  # type: ignore[operator]
    return tokens[:, int(body.num_prefix_tokens) :]  # type: ignore[arg-type]  # patches only


FEATURE_MAPS.add(
    "pooled-sequential",
    FeatureMapRule(_ends_in_global_pool, lambda body, x: _grid_tokens(body[:-2](x))),  # type: ignore[index]
    "conv layers, then AdaptiveAvgPool2d + Flatten (cnn-small): the map before the pool",
)
FEATURE_MAPS.add(
    "torchvision-resnet",
    FeatureMapRule(_resnet_like, _resnet_tokens),
    "torchvision ResNet: layer4's output, before avgpool",
)
FEATURE_MAPS.add(
    "timm-vit",
    FeatureMapRule(_timm_vit, _vit_tokens),
    "timm ViT: forward_features' patch tokens (class/register tokens dropped)",
)


def create_backbone(name: str, in_channels: int, image_size: int) -> Backbone:
    """Build a registered backbone for ``in_channels`` x ``image_size`` x ``image_size`` images."""
    if in_channels < 1 or image_size < 1:
        raise LplaError(
            f"backbone {name!r} needs positive in_channels and image_size, "
            f"got {in_channels} and {image_size}"
        )
    model = BACKBONES.get(name)(in_channels, image_size)
    model.name = name  # type: ignore[assignment]
    return model


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)


@BACKBONES.register("cnn-small", "3 conv blocks (32-64-128, BN, ReLU, max-pool), avg pool -> 128")
def cnn_small(in_channels: int, image_size: int) -> Backbone:
    """Fast on a CPU at 28x28: the audit's default CPU-scale encoder."""
    layers: list[nn.Module] = []
    width_in = in_channels
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(width_in, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),  # ceil: tiny images never shrink to 0 pixels
        ]
        width_in = width
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(body, in_channels, 128)


@BACKBONES.register("mlp", "pixels -> 512 -> 512 -> 256 (BN, ReLU); memorises fast on a CPU")
def mlp(in_channels: int, image_size: int) -> Backbone:
    pixels = in_channels * image_size * image_size
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 256),
    )
    return Backbone(body, in_channels, 256)


def _resnet(arch: str, feature_dim: int, cifar_stem: bool) -> BackboneFactory:
    def factory(in_channels: int, image_size: int) -> Backbone:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if cifar_stem:  # small images: a 3x3 stride-1 stem and no max-pool keep spatial detail
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        return Backbone(net, in_channels, feature_dim)

    return factory


for _arch, _dim in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)):
    BACKBONES.add(_arch, _resnet(_arch, _dim, True), f"torchvision {_arch}, CIFAR stem -> {_dim}")
    BACKBONES.add(
        f"{_arch}-imagenet",
        _resnet(_arch, _dim, False),
        f"torchvision {_arch}, ImageNet stem -> {_dim}",
    )


@BACKBONES.register("vit-tiny", "timm ViT-Tiny (patch 4 below 64 px, else 16) -> 192; needs timm")
def vit_tiny(in_channels: int, image_size: int) -> Backbone:
    try:
        import timm
    except ImportError:
        raise LplaError("backbone 'vit-tiny' needs timm; pip install lpla[vit]") from None
    patch = 4 if image_size < 64 else 16
    if image_size % patch:
        raise LplaError(
            f"vit-tiny needs an image size divisible by its patch size {patch}, got {image_size}; "
            "pass --image-size to resize"
        )
    net = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=image_size,
        patch_size=patch,
        in_chans=in_channels,
        num_classes=0,
    )
    return Backbone(net, in_channels, int(net.num_features))  # type: ignore[arg-type]
