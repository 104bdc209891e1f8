"""Datasets (one registry), membership splits and the batch interface the other layers use."""

from lpla.data.base import ArrayDataset, DatasetInfo, ImageDataset
from lpla.data.registry import DATASETS, create_dataset, dataset_summaries, list_datasets
from lpla.data.splits import ROLES, MembershipSplit, PairedHalves, make_paired_halves, make_split

__all__ = [
    "DATASETS",
    "ROLES",
    "ArrayDataset",
    "DatasetInfo",
    "ImageDataset",
    "MembershipSplit",
    "PairedHalves",
    "create_dataset",
    "dataset_summaries",
    "list_datasets",
    "make_paired_halves",
    "make_split",
]
