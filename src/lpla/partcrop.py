"""PartCrop's query: crops of each image against the image's own feature map -> one feature row.

Zhu et al., "A Unified Membership Inference Method for Visual Self-supervised Encoder via
Part-aware Capability", CCS 2024 (code: github.com/JiePKU/PartCrop, ``mia_lib/mia_util.py``).
For each candidate image the attacker queries the encoder with

- the whole image, reading its last feature map ``[L, C]`` (L positions: a conv net's grid
  cells, a ViT's patch tokens), and
- N small crops of it (``RandomResizedCrop`` of 8-20 % of the area, resized to half the image
  side, flipped half of the time), reading their pooled features ``[N, C]`` from the same layer.

Each crop's dot products with the L positions go through a log-softmax over positions; the
KL-style energy of a reference distribution against it (uniform, and a fixed bell-shaped one)
says how peaked the crop's response is. The N energies of each reference, sorted, make the
membership feature ``[2N]`` (``obtain_membership_feature`` in the public code), which
:class:`lpla.attacks.partcrop.PartCrop` classifies.

Fixed from the public code: its Gaussian reference is resampled, unseeded, on every call (two
batches of the same images get different features); here it is drawn once from a seed, so
target and shadow share it. Its members' whole image is a random resized crop while its
non-members' is the plain image (train vs test transform); here every image is queried the
same way. Crops are seeded by ``(seed, image index)``: the same image gets the same crops in
every file, whatever the batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lpla
from lpla.data.base import ImageDataset
from lpla.embeddings import EmbeddingsFile, EmbeddingsWriter, validate_member_index
from lpla.encoders import LoadedEncoder, PooledEncoder, module_fingerprint
from lpla.errors import LplaError
from lpla.query import CPU_FORWARD_ROWS, FORMAT, _ProgressBar
from lpla.runtime import resolve_device
from lpla.ssl.backbones import Backbone

__all__ = [
    "FEATURE_KINDS",
    "PartCropRecipe",
    "SpatialEncoder",
    "crop_boxes",
    "cut_crops",
    "gaussian_reference",
    "membership_features",
    "query_partcrop",
    "spatial_encoder",
]

#: which energies make the feature: the public code's ``--feature`` (its default: both)
FEATURE_KINDS = ("both", "uniform", "gaussian")
#: crop rows held at once: a batch of images is cut so that its crops stay within this
CROP_ROWS = 8192
#: keeps crop seeds apart from the other seeded streams of a query (the views' batch seeds)
_CROP_STREAM = 0x50C7


@dataclass(frozen=True)
class PartCropRecipe:
    """How the PartCrop answer is made; the defaults are the paper's and its code's.

    Args:
        crops: N, crops per image (``--local_crops_number 128`` in the README's command).
        scale: crop area as a fraction of the image (``local_crops_scale`` 0.08-0.2).
        ratio: crop aspect ratio range (torchvision ``RandomResizedCrop``'s default).
        crop_size: side the crops are resized to; None: half the image side (the code's
            CIFAR ``part_size``) when the encoder takes that size, else the image side (an
            encoder with a fixed input size, such as a ViT with fixed position embeddings).
        flip: probability of a horizontal flip of each crop.
        feature: ``both`` (uniform and Gaussian energies, 2N values), ``uniform`` or
            ``gaussian`` (N values).
        reference_seed: seed of the Gaussian reference, drawn once (shared by every encoder).
    """

    crops: int = 128
    scale: tuple[float, float] = (0.08, 0.2)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_size: int | None = None
    flip: float = 0.5
    feature: str = "both"
    reference_seed: int = 0

    def validate(self) -> None:
        if int(self.crops) < 1:
            raise LplaError(f"partcrop: crops must be >= 1; got {self.crops}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise LplaError(f"partcrop: scale must satisfy 0 < min <= max <= 1; got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise LplaError(f"partcrop: ratio must satisfy 0 < min <= max; got {self.ratio}")
        if self.crop_size is not None and int(self.crop_size) < 1:
            raise LplaError(f"partcrop: crop_size must be >= 1; got {self.crop_size}")
        if not 0 <= self.flip <= 1:
            raise LplaError(f"partcrop: flip must be a probability; got {self.flip}")
        if self.feature not in FEATURE_KINDS:
            raise LplaError(
                f"partcrop: feature={self.feature!r} is not one of {', '.join(FEATURE_KINDS)}"
            )

    @property
    def width(self) -> int:
        """F, the length of the membership feature."""
        return int(self.crops) * (2 if self.feature == "both" else 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


# --------------------------------------------------------------------- the feature map access


@dataclass
class SpatialEncoder:
    """An encoder seen two ways from one layer: pooled features and the feature map.

    ``embed(x)`` is the encoder as every query sees it (``[B, D]``); ``tokens(x)`` is the map
    that ``embed`` pools, as ``[B, L, C]`` (L positions, C = D channels).
    """

    embed: nn.Module
    tokens: Callable[[Tensor], Tensor]
    source: str  # where the map comes from, for the answer's meta


def _map_tokens(out: Tensor, pool: str) -> Tensor:
    if out.ndim == 4:  # [B, C, H, W]
        return out.flatten(2).transpose(1, 2)
    if out.ndim == 3:  # [B, T, C]; the class token is not a position of the image
        return out[:, 1:] if pool == "cls" else out
    raise LplaError(
        f"partcrop: the encoder's unpooled output has shape {tuple(out.shape)}; a feature map "
        "is [B, C, H, W] or tokens [B, T, C]"
    )


def spatial_encoder(encoder: LoadedEncoder | nn.Module) -> SpatialEncoder:
    """The feature-map access PartCrop needs, or a clear error where the encoder has none.

    lpla backbones (cnn-small, ResNets, vit-tiny) expose their last map
    (:meth:`lpla.ssl.backbones.Backbone.feature_map`); an outside encoder that outputs a feature
    map, loaded with ``--pool``, exposes the map it outputs. The ``mlp`` backbone, the
    projection layer and encoders that return pooled ``[B, D]`` features have none.
    """
    module = encoder.module if isinstance(encoder, LoadedEncoder) else encoder
    name = encoder.name if isinstance(encoder, LoadedEncoder) else type(encoder).__name__
    if isinstance(module, Backbone):
        rule = module.feature_map_rule
        if rule is None:
            backbone = getattr(module, "name", type(module.body).__name__)
            raise LplaError(
                f"partcrop does not apply to {name}: its backbone {backbone!r} has no spatial "
                "feature map (it flattens the image before its layers), and PartCrop compares "
                "crops with the positions of that map",
                hint="audit a conv or ViT backbone (cnn-small, resnet18, vit-tiny), or leave "
                "partcrop out of --attacks",
            )
        return SpatialEncoder(module, module.feature_map, f"backbone:{rule}")
    if isinstance(module, PooledEncoder):
        inner, pool = module.encoder, module.pool
        return SpatialEncoder(module, lambda x: _map_tokens(inner(x), pool), f"pool:{pool}")
    raise LplaError(
        f"partcrop does not apply to {name}: it needs the encoder's last feature map, and this "
        "encoder returns pooled [B, D] features only (the mlp backbone and --layer projection "
        "have none)",
        hint="audit an lpla conv or ViT backbone, or export an encoder that returns its "
        "feature map and pass --pool avg (or cls)",
    )


# ------------------------------------------------------------------------------------ crops


def crop_boxes(
    index: int, seed: int, height: int, width: int, recipe: PartCropRecipe
) -> tuple[np.ndarray, np.ndarray]:
    """The crops of one image: ``(boxes [N, 4] as (top, left, h, w), flip [N] bool)``.

    torchvision's ``RandomResizedCrop.get_params`` (up to 10 tries per crop for a box that
    fits, then a centre crop), drawn from ``(seed, index)`` alone: an image's crops do not
    depend on the batch or on the other images.
    """
    rng = np.random.default_rng(np.random.SeedSequence([_CROP_STREAM, int(seed), int(index)]))
    n, tries, area = int(recipe.crops), 10, float(height * width)
    target = area * rng.uniform(recipe.scale[0], recipe.scale[1], size=(n, tries))
    log_lo, log_hi = np.log(recipe.ratio[0]), np.log(recipe.ratio[1])
    aspect = np.exp(rng.uniform(log_lo, log_hi, size=(n, tries)))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    ok = fits[rows, first]
    if not ok.all():  # torchvision's fallback: the largest centre crop within the ratio range
        in_ratio = width / height
        if in_ratio < recipe.ratio[0]:
            cw, ch = width, round(width / recipe.ratio[0])
        elif in_ratio > recipe.ratio[1]:
            ch, cw = height, round(height * recipe.ratio[1])
        else:
            cw, ch = width, height
        h, w = np.where(ok, h, ch), np.where(ok, w, cw)
    top = np.floor(rng.uniform(size=n) * (height - h + 1)).astype(np.int64)
    left = np.floor(rng.uniform(size=n) * (width - w + 1)).astype(np.int64)
    top, left = np.where(ok, top, (height - h) // 2), np.where(ok, left, (width - w) // 2)
    flip = rng.uniform(size=n) < recipe.flip
    return np.stack([top, left, h, w], axis=1), flip


def cut_crops(images: Tensor, boxes: Tensor, flip: Tensor, size: tuple[int, int]) -> Tensor:
    """Crops of float images ``[B, C, H, W]``, resized (bicubic, as the public code) to ``size``.

    ``boxes`` ``[B, N, 4]`` (top, left, h, w) and ``flip`` ``[B, N]``; the result is
    ``[B * N, C, *size]``, image-major (row ``b * N + n`` is crop n of image b), in [0, 1].
    """
    from kornia.geometry.transform import crop_and_resize

    b, n = boxes.shape[:2]
    top, left, h, w = (boxes[..., i].to(images.dtype) for i in range(4))
    x0, y0, x1, y1 = left, top, left + w - 1, top + h - 1
    corners = torch.stack(
        [torch.stack(p, dim=-1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], dim=-2
    )  # [B, N, 4, 2]: (x, y) pixel centres clockwise from the top left
    source = images.repeat_interleave(n, dim=0)
    crops = crop_and_resize(source, corners.reshape(b * n, 4, 2), size, mode="bicubic")
    crops = crops.clamp_(0.0, 1.0)  # bicubic overshoots; a resized image stays in [0, 1]
    flipped = flip.reshape(-1).to(images.device)
    crops[flipped] = crops[flipped].flip(-1)
    return crops


# -------------------------------------------------------------------------- the feature


def gaussian_reference(crops: int, length: int, seed: int = 0) -> Tensor:
    """The public code's Gaussian reference ``[N, L]``, drawn once from ``seed``.

    Each row: L standard-normal draws, sorted, mapped through the normal density of their own
    mean and sd, normalised to sum to 1: a bell over the L positions (with a little jitter).
    """
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((crops, length), generator=gen, dtype=torch.float64).sort(dim=1)[0]
    mean = noise.mean(dim=1, keepdim=True)
    sd = noise.std(dim=1, keepdim=True) if length > 1 else torch.ones_like(mean)
    density = torch.exp(-((noise - mean) ** 2) / (2 * sd**2)) / (np.sqrt(2 * np.pi) * sd)
    return (density / density.sum(dim=1, keepdim=True)).float()


def _energy(reference: Tensor, log_p: Tensor) -> Tensor:
    """``sum_l q_l (log(q_l + 1e-6) - log p_l)`` per crop, sorted descending: ``[B, N]``."""
    energy = (reference * ((reference + 1e-6).log() - log_p)).sum(dim=2)
    return torch.sort(energy, dim=1, descending=True)[0]


def membership_features(
    feature_map: Tensor, crop_features: Tensor, gaussian: Tensor | None, feature: str = "both"
) -> Tensor:
    """``obtain_membership_feature``: ``[B, L, C]`` map, ``[B, N, C]`` crops -> ``[B, F]``.

    ``sim = crops . map^T`` ``[B, N, L]``, log-softmax over the L positions, then the energy of
    the uniform distribution and of ``gaussian`` ``[N, L]`` against it, each sorted over crops.
    """
    if feature not in FEATURE_KINDS:
        raise LplaError(f"partcrop: feature={feature!r} is not one of {', '.join(FEATURE_KINDS)}")
    b, length, channels = feature_map.shape
    if crop_features.shape[0] != b or crop_features.shape[2] != channels:
        raise LplaError(
            f"partcrop: crop features {tuple(crop_features.shape)} do not fit the feature map "
            f"{tuple(feature_map.shape)}; both must come from one layer (C = D)"
        )
    sim = torch.einsum("bnc,blc->bnl", crop_features, feature_map)
    log_p = F.log_softmax(sim, dim=2)
    parts = []
    if feature in ("both", "uniform"):
        parts.append(_energy(torch.full_like(sim, 1.0 / length), log_p))
    if feature in ("both", "gaussian"):
        if gaussian is None or tuple(gaussian.shape) != tuple(sim.shape[1:]):
            raise LplaError(
                f"partcrop: the Gaussian reference must be [N, L] = {list(sim.shape[1:])}"
            )
        parts.append(_energy(gaussian.to(sim)[None], log_p))
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------------- the query


def _crop_size(
    spatial: SpatialEncoder, image_shape: tuple[int, int, int], recipe: PartCropRecipe, dev: Any
) -> tuple[int, int]:
    """The recipe's crop side, or half the image side when the encoder takes it, else the
    image side (one dummy forward tells)."""
    c, h, w = image_shape
    if recipe.crop_size is not None:
        return int(recipe.crop_size), int(recipe.crop_size)
    half = (max(1, h // 2), max(1, w // 2))
    try:
        with torch.inference_mode():
            spatial.embed(torch.rand((2, c, *half), device=dev))
    except Exception:  # a fixed input size (position embeddings, a static export)
        return h, w
    return half


def query_partcrop(
    encoder: LoadedEncoder | nn.Module,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    *,
    member: np.ndarray | None = None,
    recipe: PartCropRecipe | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> Path | EmbeddingsFile:
    """PartCrop's membership feature of ``dataset[indices]``: an embeddings file ``[N, 1, F]``.

    Streamed: at most ``batch_size`` images (and :data:`CROP_ROWS` crops) at a time, written to
    ``out`` (or returned in memory when ``out`` is None). ``meta["partcrop"]`` records the
    recipe with the crop size used; ``meta["feature_map"]`` the map's source and shape.
    """
    recipe = recipe or PartCropRecipe()
    recipe.validate()
    if batch_size < 1:
        raise LplaError(f"batch size must be >= 1, got {batch_size}")
    enc = encoder if isinstance(encoder, LoadedEncoder) else None
    spatial = spatial_encoder(encoder)
    dev = torch.device(resolve_device(device))
    spatial.embed.to(dev)
    try:
        spatial.embed.eval()
    except (NotImplementedError, RuntimeError):  # exported GraphModules refuse eval()
        pass
    idx = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices)
    member_arr = np.full(len(idx), -1, np.int8) if member is None else np.asarray(member)
    member_arr, idx = validate_member_index(member_arr, idx, len(idx), "query_partcrop")
    shape = tuple(int(s) for s in dataset.info.image_shape)
    if enc is not None and enc.image_shape is not None and tuple(enc.image_shape) != shape:
        raise LplaError(
            f"encoder {enc.name} expects images {tuple(enc.image_shape)} but "
            f"{dataset.info.name} gives {shape}"
        )
    size = _crop_size(spatial, shape, recipe, dev)  # type: ignore[arg-type]
    with torch.inference_mode():
        probe = spatial.tokens(torch.rand((1, *shape), device=dev))
    length, channels = int(probe.shape[1]), int(probe.shape[2])
    gaussian = gaussian_reference(int(recipe.crops), length, recipe.reference_seed).to(dev)
    full_meta: dict[str, Any] = {
        "format": FORMAT,
        "answer": "partcrop",
        "encoder": enc.name if enc else type(encoder).__name__,
        "encoder_kind": enc.kind if enc else "module",
        "encoder_fingerprint": module_fingerprint(spatial.embed),
        "layer": enc.layer if enc else "backbone",
        "dataset": dataset.info.name,
        "split": dataset.info.split,
        "image_shape": list(shape),
        "num_images": len(idx),
        "views": 1,
        "dim": recipe.width,
        "clean_view0": False,
        "seed": seed,
        "dtype": dtype,
        "partcrop": recipe.to_dict() | {"crop_size": list(size)},
        "feature_map": {"source": spatial.source, "positions": length, "channels": channels},
        "lpla_version": lpla.__version__,
    } | dict(meta or {})
    step = max(1, min(int(batch_size), CROP_ROWS // int(recipe.crops)))
    rows = None if dev.type == "cuda" else CPU_FORWARD_ROWS

    def run(write: Callable[[np.ndarray], None]) -> None:
        with _ProgressBar(progress, len(idx), 0, dataset.info.name) as advance:
            with torch.inference_mode():
                for chunk, images in dataset.iter_batches(idx, step):
                    write(_batch(spatial, images, chunk, size, gaussian, recipe, seed, rows, dev))
                    advance(len(chunk))

    if out is None:
        done: list[np.ndarray] = []
        run(done.append)
        array = np.concatenate(done) if done else np.empty((0, 1, recipe.width), dtype=dtype)
        return EmbeddingsFile(array.astype(dtype), member_arr, idx, full_meta, None)
    with EmbeddingsWriter(
        out, len(idx), 1, recipe.width, dtype, member_arr, idx, full_meta
    ) as writer:
        run(writer.write)
        return writer.close()


def _batch(
    spatial: SpatialEncoder,
    images: Tensor,
    indices: np.ndarray,
    size: tuple[int, int],
    gaussian: Tensor,
    recipe: PartCropRecipe,
    seed: int,
    rows: int | None,
    dev: torch.device,
) -> np.ndarray:
    """One batch of uint8 images -> membership features ``[B, 1, F]`` (float32, CPU)."""
    x = images.to(dev).float().div_(255.0)
    _, _, h, w = x.shape
    drawn = [crop_boxes(int(i), seed, h, w, recipe) for i in indices]
    boxes = torch.as_tensor(np.stack([d[0] for d in drawn]), device=dev)
    flip = torch.as_tensor(np.stack([d[1] for d in drawn]), device=dev)
    crops = cut_crops(x, boxes, flip, size)
    parts = crops.split(rows) if rows else (crops,)
    pooled = torch.cat([spatial.embed(part) for part in parts]).float()
    crop_features = pooled.reshape(x.shape[0], int(recipe.crops), -1)
    feature_map = spatial.tokens(x).float()
    features = membership_features(feature_map, crop_features, gaussian, recipe.feature)
    return features[:, None, :].to("cpu", torch.float32).numpy()
