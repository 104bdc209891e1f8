"""The utility cost of a defense: linear probe and kNN on the features its encoder serves.

A training-side defense changes the encoder, so its cost is the defended encoder's utility. An
output-side defense changes the answers, so its cost is the utility of the *served* answers: the
clean image's features passed through the defense (fitted once, on the encoder's reference
answers, as the audit serves them) before the probe and kNN see them. Each probe image is served
under its own index: train-split image ``i`` as ``i`` (the index the audit's candidates use, so a
candidate's probe feature is its defended clean view), test-split image ``j`` as
``len(train) + j``, an index no train image has, so that no two images share noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lpla.data.base import ImageDataset
from lpla.defenses.output import Defense

__all__ = ["UTILITY_KEYS", "served_utility", "utility_entry"]

#: the keys of a defense's ``utility`` entry in results.json
UTILITY_KEYS = ("linear_probe", "knn")


def served_utility(
    encoder: nn.Module,
    train_ds: ImageDataset,
    test_ds: ImageDataset,
    defenses: Mapping[str, Defense | None],
    *,
    train_limit: int | None = 10000,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """``{name: {"linear_probe": acc, "knn": acc}}`` of ``encoder``'s features served through
    each fitted defense (``None``: unchanged), with the probe images, seed and read-out of
    :func:`lpla.utility.evaluate_utility` (kNN: k = 20); the features are extracted once."""
    from lpla.utility import (
        check_probe_datasets,
        extract_features,
        features_utility,
        probe_indices,
    )

    check_probe_datasets(train_ds, test_ds)
    train_idx, test_idx = probe_indices(train_ds, test_ds, train_limit, None, seed)
    train_y, test_y = train_ds.labels[train_idx], test_ds.labels[test_idx]
    n_cls = max(train_ds.info.num_classes, test_ds.info.num_classes)
    train_f = extract_features(encoder, train_ds, train_idx, batch_size=batch_size, device=device)
    test_f = extract_features(encoder, test_ds, test_idx, batch_size=batch_size, device=device)
    test_served_as = len(train_ds) + test_idx  # an index no train image has
    out: dict[str, dict[str, float]] = {}
    for name, defense in defenses.items():
        train_x, test_x = train_f, test_f
        if defense is not None:
            train_x = defense.apply(train_f[:, None, :], train_idx)[:, 0]
            test_x = defense.apply(test_f[:, None, :], test_served_as)[:, 0]
        got = features_utility(
            train_x, train_y, test_x, test_y, seed=seed, ks=(20,), num_classes=n_cls
        )
        out[name] = {"linear_probe": got["linear_probe_acc"], "knn": got["knn_acc"]}
    return out


def utility_entry(measured: Mapping[str, Any] | None, skipped: str | None = None) -> dict[str, Any]:
    """A results.json ``utility`` entry: both keys always there, ``None`` when not measured."""
    entry: dict[str, Any] = {k: (measured or {}).get(k) for k in UTILITY_KEYS}
    if skipped:
        entry["skipped"] = skipped
    return entry
