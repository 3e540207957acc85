"""Datasets: one :class:`Sample` type, readers for the published layouts, the synthetic set."""

from . import btad, mvtec_ad2, visa  # noqa: F401  (register the btad, mvtec_ad2 and visa readers)
from .images import ImageSet, load_image_set
from .sample import LOGICAL, NORMAL, STRUCTURAL, DatasetError, Sample, read_image, read_mask
from .splits import ALL, Splits, build_splits, categories_of, dataset_root, with_category

__all__ = [
    "ALL",
    "LOGICAL",
    "NORMAL",
    "STRUCTURAL",
    "DatasetError",
    "ImageSet",
    "Sample",
    "Splits",
    "build_splits",
    "categories_of",
    "dataset_root",
    "load_image_set",
    "read_image",
    "read_mask",
    "with_category",
]
