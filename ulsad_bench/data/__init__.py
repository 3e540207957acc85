"""Datasets: one :class:`Sample` type, readers for the published layouts, the synthetic set."""

from .images import ImageSet, load_image_set
from .sample import LOGICAL, NORMAL, STRUCTURAL, DatasetError, Sample, read_image, read_mask
from .splits import Splits, build_splits, dataset_root

__all__ = [
    "LOGICAL",
    "NORMAL",
    "STRUCTURAL",
    "DatasetError",
    "ImageSet",
    "Sample",
    "Splits",
    "build_splits",
    "dataset_root",
    "load_image_set",
    "read_image",
    "read_mask",
]
