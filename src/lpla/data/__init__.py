"""Datasets (one registry), membership splits and the batch interface the other layers use."""

from lpla.data.base import ArrayDataset, DatasetInfo, ImageDataset
from lpla.data.registry import DATASETS, create_dataset, dataset_summaries, list_datasets
from lpla.data.splits import (
    ROLES,
    KeepMatrix,
    MembershipSplit,
    PairedHalves,
    make_keep_matrix,
    make_paired_halves,
    make_split,
)

__all__ = [
    "DATASETS",
    "ROLES",
    "ArrayDataset",
    "DatasetInfo",
    "ImageDataset",
    "KeepMatrix",
    "MembershipSplit",
    "PairedHalves",
    "create_dataset",
    "dataset_summaries",
    "list_datasets",
    "make_keep_matrix",
    "make_paired_halves",
    "make_split",
]
