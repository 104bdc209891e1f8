"""Utility read-outs: weighted kNN (hand-computed votes), linear probe, pixel baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lpla.data.base import ArrayDataset
from lpla.errors import LplaError
from lpla.utility import evaluate_utility, knn_accuracy, linear_probe_accuracy


def _knn_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One query; its nearest neighbour (cos 1.0) is class 0, the next two (cos 0.9) class 1."""
    angle = np.arccos(0.9)
    train = np.array(
        [[1.0, 0.0], [np.cos(angle), np.sin(angle)], [np.cos(angle), -np.sin(angle)], [-1.0, 0.0]]
    )
    return train, np.array([0, 1, 1, 2]), np.array([[2.0, 0.0]]), np.array([0])


def test_knn_votes_are_weighted_by_exp_similarity_over_temperature() -> None:
    train, y, test, truth = _knn_case()
    # T = 0.07: e^(1/.07) = 1.6e6 beats 2 e^(.9/.07) = 7.7e5 -> class 0 (a plain vote says 1)
    assert knn_accuracy(train, y, test, truth, ks=(3,), temperature=0.07)[3] == 1.0
    # T = 1: e^1 = 2.72 loses to 2 e^0.9 = 4.92 -> class 1
    assert knn_accuracy(train, y, test, truth, ks=(3,), temperature=1.0)[3] == 0.0
    # k = 1: only the nearest neighbour votes
    assert knn_accuracy(train, y, test, truth, ks=(1,), temperature=1.0)[1] == 1.0
    # k larger than the train set is clipped, not an error
    assert knn_accuracy(train, y, test, truth, ks=(200,), temperature=0.07)[200] == 1.0


def test_knn_uses_cosine_not_euclidean() -> None:
    train = np.array([[10.0, 0.0], [0.1, 0.1]])
    y = np.array([0, 1])
    test = np.array([[0.1, 0.0]])  # Euclidean-nearest is class 1, cosine-nearest class 0
    assert knn_accuracy(train, y, test, np.array([0]), ks=(1,))[1] == 1.0


def test_linear_probe_separable_vs_random_labels(rng: np.random.Generator) -> None:
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] > 0).astype(int)
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) >= 0.97
    noise = rng.integers(0, 4, size=400)
    assert linear_probe_accuracy(x[:300], noise[:300], x[300:], noise[300:]) < 0.45


def test_evaluate_utility_identity_encoder_equals_the_pixel_baseline(tiny_dataset) -> None:
    test = ArrayDataset(
        tiny_dataset.images.flip(0),
        tiny_dataset.labels[::-1].copy(),
        name="tiny",
        split="test",
        num_classes=4,
    )
    result = evaluate_utility(torch.nn.Flatten(), tiny_dataset, test, train_limit=48, seed=0)
    assert result["linear_probe_acc"] == result["linear_probe_acc_pixels"]
    assert result["knn_acc"] == result["knn_acc_pixels"]
    assert result["num_train"] == 48 and result["num_test"] == 64 and result["chance"] == 0.25
    assert result["feature_dim"] == 144 and "knn_acc_k200" in result
    assert result["linear_probe_acc"] > 0.9  # the blobs are linearly separable


def test_untrained_encoder_and_shape_mismatch(tiny_dataset) -> None:
    from lpla.ssl.backbones import create_backbone

    torch.manual_seed(0)
    enc = create_backbone("cnn-small", 1, 12)
    enc.train()
    result = evaluate_utility(enc, tiny_dataset, tiny_dataset, pixel_baseline=False)
    assert enc.training  # the caller's mode is restored
    assert result["feature_dim"] == 128 and "linear_probe_acc_pixels" not in result
    other = ArrayDataset(np.zeros((4, 1, 8, 8), np.uint8), np.arange(4), name="x", split="test")
    with pytest.raises(LplaError, match=r"differ in shape"):
        evaluate_utility(enc, tiny_dataset, other)


def test_every_encoder_kind_goes_through_evaluate_utility(tiny_dataset, tmp_path) -> None:
    """``.eval()`` on a torch.export module used to raise NotImplementedError here."""
    import sys

    from lpla.encoders import load_any_encoder

    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_user_model import TinyEncoder

    torch.manual_seed(0)
    model = TinyEncoder().eval()
    program = torch.export.export(
        model, (torch.rand(4, 1, 12, 12),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, tmp_path / "enc.pt2")
    specs = [str(tmp_path / "enc.pt2"), "fixtures_user_model:tiny_encoder", "torchvision:resnet18"]
    for spec in specs:
        enc = load_any_encoder(spec)
        result = evaluate_utility(
            enc.module, tiny_dataset, tiny_dataset, train_limit=32, test_limit=16, ks=(5,)
        )
        assert 0.0 <= result["linear_probe_acc"] <= 1.0, spec
    exported = evaluate_utility(
        load_any_encoder(str(tmp_path / "enc.pt2")).module, tiny_dataset, tiny_dataset, ks=(5,)
    )
    eager = evaluate_utility(model, tiny_dataset, tiny_dataset, ks=(5,))
    assert exported["knn_acc"] == eager["knn_acc"]
    assert exported["linear_probe_acc"] == eager["linear_probe_acc"]


def test_unlabelled_images_are_refused(tiny_dataset) -> None:
    unlabelled = ArrayDataset(
        tiny_dataset.images, np.full(64, -1), name="mine", split="members", num_classes=0
    )
    with pytest.raises(LplaError, match=r"mine/members has images without a class label"):
        evaluate_utility(torch.nn.Flatten(), unlabelled, tiny_dataset)
