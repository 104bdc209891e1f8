"""PartCrop: the membership feature, the seeded crops, the feature-map access, the attack, the
audit end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from torch import nn

from lpla.attacks import AttackInput, applicable_attacks, compute_stats, create_attack
from lpla.attacks.base import answers_needed
from lpla.attacks.features import feature_stats
from lpla.data.base import ArrayDataset
from lpla.encoders import LoadedEncoder, PooledEncoder
from lpla.errors import LplaError
from lpla.partcrop import (
    PartCropRecipe,
    crop_boxes,
    cut_crops,
    gaussian_reference,
    membership_features,
    query_partcrop,
    spatial_encoder,
)
from lpla.ssl.backbones import create_backbone


@pytest.fixture(autouse=True)
def _one_thread():
    with threadpool_limits(1):
        yield


def _public_feature(fmap: torch.Tensor, local: torch.Tensor, gauss: torch.Tensor) -> torch.Tensor:
    """``obtain_membership_feature(feature_type='both')`` of the public code, transcribed, with
    its Gaussian passed in (the code draws it unseeded inside)."""
    b, length, d = fmap.shape
    local = local.view(b, -1, d)
    sim = torch.einsum("nik,njk->nij", [local, fmap])
    logit = F.log_softmax(sim, dim=2)
    uniform = torch.ones_like(sim) / length
    u = torch.sort((uniform * ((uniform + 1e-6).log() - logit)).sum(dim=2), 1, descending=True)[0]
    g = gauss.unsqueeze(0).repeat(b, 1, 1)
    gs = torch.sort((g * ((g + 1e-6).log() - logit)).sum(dim=2), 1, descending=True)[0]
    return torch.cat([u, gs], dim=1)


# --- the membership feature ------------------------------------------------------------------


def test_feature_matches_the_public_code() -> None:
    gen = torch.Generator().manual_seed(0)
    fmap, crops = torch.randn(3, 9, 5, generator=gen), torch.randn(3, 6, 5, generator=gen)
    gauss = gaussian_reference(6, 9, seed=1)
    ours = membership_features(fmap, crops, gauss, "both")
    torch.testing.assert_close(ours, _public_feature(fmap, crops, gauss))
    assert ours.shape == (3, 12)
    torch.testing.assert_close(membership_features(fmap, crops, None, "uniform"), ours[:, :6])
    torch.testing.assert_close(membership_features(fmap, crops, gauss, "gaussian"), ours[:, 6:])


def test_a_part_that_responds_at_one_position_has_a_high_energy() -> None:
    """Map = one-hot positions; a crop aligned with position 0 at strength a has
    sim = [a, 0, 0, 0], so its uniform energy is log(1/4 + 1e-6) + log(e^a + 3) - a/4; a crop
    with no response (zero features) has a flat softmax and energy ~0."""
    length, a = 4, 6.0
    fmap = torch.eye(length)[None]  # [1, L, C = L]
    crops = torch.stack([a * torch.eye(length)[0], torch.zeros(length)])[None]  # [1, 2, C]
    energy = membership_features(fmap, crops, None, "uniform")[0]
    expected = math.log(0.25 + 1e-6) + math.log(math.exp(a) + 3) - a / 4
    assert energy[0].item() == pytest.approx(expected, rel=1e-5)  # sorted: the peaked crop first
    assert energy[1].item() == pytest.approx(math.log(0.25 + 1e-6) - math.log(0.25), abs=1e-5)
    # a "member" whose parts respond sharply has the larger feature throughout
    member = membership_features(fmap, 8.0 * torch.eye(length)[None, :3], None, "uniform")
    nonmember = membership_features(fmap, 0.5 * torch.eye(length)[None, :3], None, "uniform")
    assert (member > nonmember).all()


def test_gaussian_reference_is_seeded_and_bell_shaped() -> None:
    ref = gaussian_reference(128, 16, seed=0)
    torch.testing.assert_close(ref, gaussian_reference(128, 16, seed=0))
    assert not torch.equal(ref, gaussian_reference(128, 16, seed=1))
    torch.testing.assert_close(ref.sum(dim=1), torch.ones(128))
    middle, ends = ref[:, 6:10].mean(), ref[:, [0, 15]].mean()
    assert middle > 3 * ends  # the sorted draws' density peaks in the middle positions


def test_feature_needs_one_layer_and_a_fitting_reference() -> None:
    with pytest.raises(LplaError, match="one layer"):
        membership_features(torch.zeros(2, 4, 8), torch.zeros(2, 3, 5), None, "uniform")
    with pytest.raises(LplaError, match=r"\[N, L\]"):
        membership_features(torch.zeros(2, 4, 8), torch.zeros(2, 3, 8), torch.zeros(3, 5))
    with pytest.raises(LplaError, match="feature="):
        PartCropRecipe(feature="max").validate()


# --- crops ------------------------------------------------------------------------------------


def test_crops_are_seeded_by_image_and_follow_the_recipe() -> None:
    recipe = PartCropRecipe()
    boxes, flip = crop_boxes(17, 0, 28, 28, recipe)
    again, flip_again = crop_boxes(17, 0, 28, 28, recipe)
    np.testing.assert_array_equal(boxes, again)
    np.testing.assert_array_equal(flip, flip_again)
    assert not np.array_equal(boxes, crop_boxes(18, 0, 28, 28, recipe)[0])
    assert not np.array_equal(boxes, crop_boxes(17, 1, 28, 28, recipe)[0])
    top, left, h, w = boxes.T
    assert boxes.shape == (128, 4) and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 28).all() and (left + w <= 28).all()
    area = h * w / 28**2
    assert 0.05 < area.min() and area.max() < 0.25  # 8-20 % of the image, up to rounding
    assert 0.35 < flip.mean() < 0.65


def test_cut_crops_resizes_the_box_and_flips() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4) / 15
    boxes = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2]]])  # top, left, h, w
    crops = cut_crops(image, boxes, torch.tensor([[False, True]]), (2, 2))
    torch.testing.assert_close(crops[0, 0], image[0, 0, 1:3, 1:3])
    torch.testing.assert_close(crops[1, 0], image[0, 0, 1:3, 1:3].flip(-1))


def _dataset(n: int = 12, size: int = 28) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 1, size, size), dtype=np.uint8)
    return ArrayDataset(images, np.zeros(n, np.int64), name="toy", split="train")


def test_the_same_image_gets_the_same_feature_in_every_file() -> None:
    torch.manual_seed(0)
    encoder = create_backbone("cnn-small", 1, 28).eval()
    ds = _dataset()
    recipe = PartCropRecipe(crops=16)
    whole = query_partcrop(encoder, ds, np.arange(12), recipe=recipe, batch_size=5)
    part = query_partcrop(encoder, ds, np.array([9, 3]), recipe=recipe, batch_size=1)
    assert whole.embeddings.shape == (12, 1, 32)
    np.testing.assert_allclose(part.embeddings[0], whole.embeddings[9], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(part.embeddings[1], whole.embeddings[3], rtol=1e-5, atol=1e-6)
    other_seed = query_partcrop(encoder, ds, np.array([9]), recipe=recipe, seed=1)
    assert not np.allclose(other_seed.embeddings[0], whole.embeddings[9])
    meta = whole.meta
    assert meta["partcrop"]["crop_size"] == [14, 14] and meta["partcrop"]["crops"] == 16
    assert meta["feature_map"] == {
        "source": "backbone:pooled-sequential",
        "positions": 16,
        "channels": 128,
    }


def test_a_fixed_size_vit_gets_crops_at_its_own_size() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = create_backbone("vit-tiny", 1, 16).eval()
    out = query_partcrop(vit, _dataset(2, 16), recipe=PartCropRecipe(crops=4), batch_size=2)
    assert out.meta["partcrop"]["crop_size"] == [16, 16]  # half the side breaks its pos-embed
    assert out.meta["feature_map"]["positions"] == 16  # 4x4 patches, the class token dropped


# --- where the feature map comes from ---------------------------------------------------------


def test_encoders_without_a_feature_map_are_refused() -> None:
    with pytest.raises(LplaError, match="'mlp' has no spatial feature map"):
        spatial_encoder(create_backbone("mlp", 1, 28))
    pooled_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(LplaError, match="pooled"):
        spatial_encoder(LoadedEncoder(pooled_only, "mine.pt2", "export"))
    with pytest.raises(LplaError, match="no spatial feature map"):
        query_partcrop(create_backbone("mlp", 1, 28), _dataset(2))


def test_an_outside_encoder_with_pool_exposes_its_map() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2), nn.ReLU())  # outputs [B, 6, H', W']
    spatial = spatial_encoder(LoadedEncoder(PooledEncoder(conv, "avg"), "mine", "factory"))
    x = torch.rand(2, 1, 28, 28)
    tokens = spatial.tokens(x)
    assert tokens.shape == (2, 13 * 13, 6)
    torch.testing.assert_close(tokens.mean(dim=1), spatial.embed(x))  # one layer, pooled
    vit_like = PooledEncoder(nn.Identity(), "cls")  # [B, T, C] tokens, class token first
    tokens = spatial_encoder(vit_like).tokens(torch.rand(2, 5, 3))
    assert tokens.shape == (2, 4, 3)


# --- the attack -------------------------------------------------------------------------------


def _input(seed: int, n: int = 200, signal: float = 1.0, with_answer: bool = True) -> AttackInput:
    rng = np.random.default_rng(seed)
    member = (rng.permutation(n) < n // 2).astype(np.int8)
    features = rng.normal(size=(n, 32))
    features[:, :4] += signal * member[:, None]  # members' parts respond more strongly
    stats = compute_stats(rng.normal(size=(n, 2, 6)), p=(2,))
    answers = {"partcrop": feature_stats(features)} if with_answer else {}
    return AttackInput(stats, member, np.arange(n), answers=answers)


def test_attack_finds_a_planted_signal_and_nothing_without_one() -> None:
    attack = create_attack("partcrop", hidden_layer_sizes=(32,))
    target = _input(2)
    auc = roc_auc_score(target.member, attack.fit(_input(1)).score(target))
    assert auc > 0.9
    null = create_attack("partcrop", hidden_layer_sizes=(32,)).fit(_input(3, signal=0.0))
    null_target = _input(4, signal=0.0)
    assert abs(roc_auc_score(null_target.member, null.score(null_target)) - 0.5) < 0.12


def test_attack_needs_its_answer() -> None:
    with pytest.raises(LplaError, match="needs the 'partcrop' answer for the shadow #0"):
        create_attack("partcrop").fit(_input(1, with_answer=False))
    fitted = create_attack("partcrop", hidden_layer_sizes=(8,), max_iter=20).fit(_input(1))
    with pytest.raises(LplaError, match="needs the 'partcrop' answer for the target"):
        fitted.score(_input(2, with_answer=False))
    assert "partcrop" not in applicable_attacks(10, 1, True, True)
    assert "partcrop" in applicable_attacks(10, 1, True, True, answers={"partcrop"})
    assert answers_needed(None) == () and answers_needed(["lpla", "partcrop"]) == ("partcrop",)


def test_subsets_keep_the_features_aligned() -> None:
    item = _input(5)
    rows = np.array([3, 0, 7])
    sub = item.subset(rows)
    np.testing.assert_array_equal(
        sub.answers["partcrop"].features, item.answers["partcrop"].features[rows]
    )
    fewer = item.first_views(1).answers["partcrop"].features
    np.testing.assert_array_equal(fewer, item.answers["partcrop"].features)


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_audit_reports_partcrop(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    out = tmp_path / "run"
    args = ["audit", "--backbone", "cnn-small", "--members", "32", "--nonmembers", "64"]
    args += ["--reference", "32", "--epochs", "1", "--views", "2", "--no-utility"]
    args += ["--n-bootstrap", "20", "--attacks", "partcrop,encodermi-t", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    entry = results["attacks"]["partcrop"]
    assert 0.0 <= entry["auc"] <= 1.0 and len(entry["auc_ci95"]) == 2
    assert entry["params"]["hidden_layer_sizes"] == [512, 256, 128]
    assert "partcrop" not in results["auc_vs_views"]  # it does not read the K views
    from lpla.embeddings import open_embeddings

    answer = open_embeddings(out / "embeddings" / "target_partcrop.npz")
    candidates = open_embeddings(out / "embeddings" / "target_candidates.npz")
    assert answer.embeddings.shape == (96, 1, 256)
    np.testing.assert_array_equal(answer.index, candidates.index)
    np.testing.assert_array_equal(answer.member, candidates.member)
    assert answer.meta["answer"] == "partcrop" and answer.meta["partcrop"]["crops"] == 128
