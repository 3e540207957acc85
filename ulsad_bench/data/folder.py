"""Reader for the MVTec AD folder layout and its relatives (MPDD, MVTec LOCO, BTAD, synthetic).

One category directory holds::

    train/<normal>/*.png                    normal training images
    validation/<normal>/*.png               (MVTec LOCO and the synthetic scene) validation normals
    test/<normal>/*.png                     normal test images
    test/<defect>/*.png                     anomalous test images, one folder per defect type
    ground_truth/<defect>/<stem>_mask.png   MVTec AD, MPDD
    ground_truth/<defect>/<stem>.png        BTAD (``.bmp`` for its product 03), anomalib's VisA copy
    ground_truth/<defect>/<stem>/*.png      MVTec LOCO: several masks per image, united

``<normal>`` is ``good`` (``ok`` for BTAD). The mask convention is found per image; a missing
mask is an error naming the paths that were looked for. Mask files end in ``.png`` unless the
reader passes other ``mask_suffixes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .sample import LOGICAL, NORMAL, STRUCTURAL, DatasetError, Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: files of a category folder that a job reads besides its images, when present (MVTec LOCO's
#: sPRO saturation thresholds, :mod:`.channels`): part of the data fingerprint
CATEGORY_INPUTS = ("defects_config.json",)
#: defect type of the images of a test set without ground truth (:attr:`CategorySplits.private`)
UNLABELLED = "unlabelled"
KIND_BY_DEFECT = {"logical_anomalies": LOGICAL, "structural_anomalies": STRUCTURAL}


@dataclass(frozen=True)
class CategorySplits:
    """The samples of one category as found on disk (before any validation hold-out), and the
    other files a job reads (``inputs``: :data:`CATEGORY_INPUTS`, VisA's split CSV).

    ``private``: test sets published without ground truth, by folder name (MVTec AD 2's
    ``test_private`` and ``test_private_mixed``, :mod:`.mvtec_ad2`): their images are predicted and
    exported for the evaluation server, never scored here. Their samples carry label 0 and defect
    type :data:`UNLABELLED` only because :class:`Sample` needs a label; nothing reads it.
    """

    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]
    inputs: tuple[Path, ...] = ()
    private: dict[str, list[Sample]] = field(default_factory=dict)


def is_hidden(path: Path) -> bool:
    """Hidden files and folders (``.DS_Store``, macOS ``._*`` AppleDouble files, ``.ipynb_checkpoints``)."""
    return path.name.startswith(".")


def list_images(directory: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name; hidden files are skipped."""
    allowed = {s.lower() for s in suffixes}
    return sorted(p for p in directory.iterdir() if p.is_file() and not is_hidden(p) and p.suffix.lower() in allowed)


def require_images(directory: Path, what: str) -> list[Path]:
    """The image files directly in ``directory``; a missing or empty folder is a :class:`DatasetError`
    naming it and ``what`` was expected there."""
    if not directory.is_dir():
        raise DatasetError(f"missing folder {directory}: expected {what}")
    images = list_images(directory)
    if not images:
        raise DatasetError(f"empty folder {directory}: expected {what} (image files {', '.join(IMAGE_SUFFIXES)})")
    return images


def find_masks(
    ground_truth: Path, defect: str, image: Path, mask_suffixes: tuple[str, ...] = (".png",)
) -> tuple[Path, ...]:
    """The mask file(s) of one anomalous image, in whichever convention the dataset uses."""
    folder = ground_truth / defect
    stem = image.stem
    candidates = [folder / f"{stem}_mask{suffix}" for suffix in mask_suffixes]
    candidates += [folder / f"{stem}{suffix}" for suffix in mask_suffixes]
    for candidate in candidates:
        if candidate.is_file():
            return (candidate,)
    per_image_dir = folder / stem
    if per_image_dir.is_dir():
        masks = list_images(per_image_dir, mask_suffixes)
        if masks:
            return tuple(masks)
        raise DatasetError(f"empty mask folder {per_image_dir}: expected 000.png, 001.png, ... for {image}")
    looked = ", ".join(str(c) for c in [*candidates, per_image_dir / "000.png"])
    raise DatasetError(f"no ground-truth mask for anomalous image {image}: looked for {looked}")


def read_category(
    category_dir: Path, normal_name: str = NORMAL, mask_suffixes: tuple[str, ...] = (".png",)
) -> CategorySplits:
    """Read one category in the MVTec AD layout (see module docstring)."""
    if not category_dir.is_dir():
        raise DatasetError(f"missing category folder {category_dir}")
    train = [
        Sample(path, 0, NORMAL, NORMAL)
        for path in require_images(category_dir / "train" / normal_name, "normal training images")
    ]
    validation_dir = category_dir / "validation" / normal_name
    validation = []
    if validation_dir.exists():
        validation = [
            Sample(path, 0, NORMAL, NORMAL) for path in require_images(validation_dir, "normal validation images")
        ]
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"missing folder {test_dir}: expected test/{normal_name} and test/<defect> folders")
    ground_truth = category_dir / "ground_truth"
    test: list[Sample] = []
    defect_dirs = sorted(d for d in test_dir.iterdir() if d.is_dir() and not is_hidden(d))
    if not any(d.name == normal_name for d in defect_dirs):
        raise DatasetError(f"missing folder {test_dir / normal_name}: expected normal test images")
    for defect_dir in defect_dirs:
        images = require_images(defect_dir, "test images")
        if defect_dir.name == normal_name:
            test.extend(Sample(path, 0, NORMAL, NORMAL) for path in images)
            continue
        kind = KIND_BY_DEFECT.get(defect_dir.name, STRUCTURAL)
        test.extend(
            Sample(path, 1, defect_dir.name, kind, find_masks(ground_truth, defect_dir.name, path, mask_suffixes))
            for path in images
        )
    if not any(s.label == 1 for s in test):
        raise DatasetError(f"no anomalous test images under {test_dir}: expected test/<defect>/ folders")
    inputs = tuple(category_dir / name for name in CATEGORY_INPUTS if (category_dir / name).is_file())
    return CategorySplits(train=train, validation=validation, test=test, inputs=inputs)
