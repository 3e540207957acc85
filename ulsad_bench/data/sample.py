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


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb8(image: Image.Image, path: Path) -> Image.Image:
    """An opened image as 8-bit RGB.

    8-bit images (any PIL mode with 8-bit channels: ``L``, ``P``, ``RGB``, ``RGBA``, ...) are
    converted by PIL as usual. 16-bit grayscale (``I;16*``, and ``I`` whose values lie in
    [0, 65535], as PIL opens some 16-bit files) is scaled from the full 16-bit range to 8 bit,
    ``round(v / 257)``, the same factor for every image, so that relative brightness between
    images is kept (a per-image stretch would hide a uniformly darker defect); PIL's own
    ``convert`` would clip every value above 255 to white. Other high-depth images (32-bit
    integers outside the 16-bit range, floating point) are refused, naming the file.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DatasetError(
                f"image {path} is a 32-bit integer image with values in [{values.min()}, {values.max()}]: "
                "expected an 8- or 16-bit image"
            )
        gray = np.rint(values / 257.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        raise DatasetError(f"image {path} is a 32-bit floating-point image: expected an 8- or 16-bit image")
    return image.convert("RGB")


#: ``dataset.resize``: how images are brought to ``dataset.image_size``.
#: ``cv2_linear`` (default): OpenCV ``INTER_LINEAR``, no antialiasing, as anomalib 0.x's
#: albumentations ``A.Resize`` did for the paper's numbers (masks: OpenCV ``INTER_NEAREST``, as
#: albumentations resizes masks); ``pil_bilinear``: PIL's bilinear filter, which antialiases when
#: shrinking (masks: PIL nearest).
RESIZE_METHODS = ("cv2_linear", "pil_bilinear")


def check_resize(method: str) -> str:
    if method not in RESIZE_METHODS:
        raise ValueError(f"dataset.resize={method!r}: expected one of {', '.join(RESIZE_METHODS)}")
    return method


def resize_image(rgb: np.ndarray, size: int, method: str = "cv2_linear") -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[size, size, 3]`` uint8 (see :data:`RESIZE_METHODS`)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    if check_resize(method) == "cv2_linear":
        import cv2

        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(binary: np.ndarray, size: int, method: str = "cv2_linear") -> np.ndarray:
    """``[H, W]`` bool -> ``[size, size]`` bool by nearest neighbour (OpenCV's or PIL's)."""
    if binary.shape == (size, size):
        return binary
    values = binary.astype(np.uint8) * 255
    if check_resize(method) == "cv2_linear":
        import cv2

        return cv2.resize(values, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return np.asarray(Image.fromarray(values).resize((size, size), Image.Resampling.NEAREST)) > 0


def read_image(path: Path, size: int, resize: str = "cv2_linear") -> np.ndarray:
    """Read an image as RGB (grayscale becomes 3 identical channels; 16-bit images are scaled
    to 8 bit, see :func:`to_rgb8`), resized to ``size`` (``resize``: :data:`RESIZE_METHODS`).

    Returns:
        uint8 array ``[3, size, size]``.
    """
    rgb = np.asarray(to_rgb8(_open(path, "image"), path), dtype=np.uint8)
    return resize_image(rgb, size, resize).transpose(2, 0, 1).copy()


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as err:
        raise DatasetError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"unreadable image file {path}: expected a PNG/JPEG/BMP image ({err})") from err


def read_mask(sample: Sample, size: int, resize: str = "cv2_linear") -> np.ndarray:
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
        values = np.asarray(mask_image)  # 16-bit and 32-bit masks keep their integer values here
        if values.ndim == 3:
            values = values.max(axis=2)
        binary = values > 0
        union = binary if union is None else union | binary
    assert union is not None
    return resize_mask(union, size, resize)
