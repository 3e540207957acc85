"""The one sample type every dataset loader yields, and how its image and mask are read.

A :class:`Sample` names one image file with its label, defect type, anomaly kind and the
ground-truth mask files (none for normal images). Images and masks are read and resized by
:func:`read_image` / :func:`read_mask`, the same way for every dataset and every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

NORMAL = "good"
LOGICAL = "logical"
STRUCTURAL = "structural"


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout or content.

    The message always names the offending path and what was expected there.
    """


@dataclass(frozen=True)
class Sample:
    """One image of a dataset split.

    Attributes:
        path: the image file.
        label: 0 for normal, 1 for anomalous.
        defect_type: the folder the image came from (``good``, ``scratch``,
            ``logical_anomalies``, ...).
        kind: ``good`` for normal images, else ``logical`` or ``structural``
            (MVTec LOCO's two anomaly kinds; other datasets' defects are structural).
        mask_paths: ground-truth mask files; their union is the pixel mask. Empty for
            normal images.
    """

    path: Path
    label: int
    defect_type: str
    kind: str
    mask_paths: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label} for {self.path}")
        if self.label == 0 and self.kind != NORMAL:
            raise ValueError(f"normal sample {self.path} must have kind {NORMAL!r}, got {self.kind!r}")


def _open(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as err:
        raise DatasetError(f"{what} file not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"unreadable {what} file {path}: expected a PNG/JPEG/BMP image ({err})") from err
    return image


def read_image(path: Path, size: int) -> np.ndarray:
    """Read an image as RGB (grayscale becomes 3 identical channels), resized to ``size``.

    Returns:
        uint8 array ``[3, size, size]``.
    """
    image = _open(path, "image").convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as err:
        raise DatasetError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"unreadable image file {path}: expected a PNG/JPEG/BMP image ({err})") from err


def read_mask(sample: Sample, size: int) -> np.ndarray:
    """The binary pixel mask of a sample: union of its mask files, any non-zero pixel set.

    Masks must have the same width and height as their image (checked, with the file named).

    Returns:
        bool array ``[size, size]``; all False for normal samples.
    """
    if not sample.mask_paths:
        return np.zeros((size, size), dtype=bool)
    expected = image_size_of(sample.path)
    union: np.ndarray | None = None
    for mask_path in sample.mask_paths:
        mask_image = _open(mask_path, "mask")
        if mask_image.size != expected:
            raise DatasetError(
                f"mask {mask_path} is {mask_image.size[0]}x{mask_image.size[1]} but its image "
                f"{sample.path} is {expected[0]}x{expected[1]}: expected the same size"
            )
        values = np.asarray(mask_image)
        if values.ndim == 3:
            values = values.max(axis=2)
        binary = values > 0
        union = binary if union is None else union | binary
    assert union is not None
    if union.shape != (size, size):
        resized = Image.fromarray(union.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
        union = np.asarray(resized) > 0
    return union
