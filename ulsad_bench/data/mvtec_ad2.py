"""Reader for MVTec AD 2 (Heckler-Kram et al. 2025, arXiv:2503.21622), in its published layout.

The archive extracts to one folder per category (``can``, ``fabric``, ``fruit_jelly``, ``rice``,
``sheet_metal``, ``vial``, ``wallplugs``, ``walnuts``); that folder's parent is ``dataset.root``.
One category holds::

    train/good/*.png                               normal training images
    validation/good/*.png                          normal validation images: the validation split
    test_public/good/*.png                         normal test images (with ground truth: scored here)
    test_public/bad/*.png                          anomalous test images
    test_public/ground_truth/bad/<stem>_mask.png   one mask per anomalous image, 255 = anomalous
    test_private/NNN_regular.png                   test images without ground truth (the leaderboard's)
    test_private_mixed/NNN_mixed.png               the same under seen and unseen lighting, mixed

As the official dataset class reads it (MVTecAD2_public_code_utils/mvtec_ad_2_public_offline.py
L71-81: ``<split>/[gb][oa][od]*/[0-9][0-9][0-9]*.png`` for train, validation and test_public,
``<split>/[0-9][0-9][0-9]*.png`` for the private sets; masks ``test_public/ground_truth/bad/<stem>_mask.png``,
L164-167) and anomalib 2.7 (``anomalib/data/datasets/image/mvtecad2.py`` L230-283, which names a
missing mask). The private sets' file counts per category are the evaluation server's
(MVTecAD2_public_code_utils/utils.py L24-33); :mod:`ulsad_bench.submission` checks them.

``dataset.private_sets`` names the private folders a job reads (default both; ``[]`` for a copy
without them, which then exports nothing). The validation folder is the validation split
(``val_split: folder``, as MVTec LOCO's), and the images the segmentation threshold of SegF1 is
computed from (:func:`ulsad_bench.data.splits.build_splits`, ``metrics.seg_f1``), for every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folder import UNLABELLED, CategorySplits, require_images
from .sample import NORMAL, STRUCTURAL, DatasetError, Sample
from .splits import register_reader

#: the test sets published without ground truth, in the order the evaluation server lists them
PRIVATE_SETS = ("test_private", "test_private_mixed")
PUBLIC_TEST = "test_public"
ANOMALOUS = "bad"
MASK_SUFFIX = "_mask.png"
LAYOUT = (
    "train/good, validation/good, test_public/{good,bad}, test_public/ground_truth/bad/<stem>_mask.png, "
    "test_private/, test_private_mixed/ (MVTec AD 2's published layout)"
)


def _mask_of(image: Path, ground_truth: Path) -> Path:
    mask = ground_truth / f"{image.stem}{MASK_SUFFIX}"
    if not mask.is_file():
        raise DatasetError(f"no ground-truth mask for anomalous image {image}: looked for {mask}")
    return mask


def _public_test(directory: Path, normal_name: str) -> list[Sample]:
    """``test_public/{good,bad}`` with the masks of the anomalous images."""
    public = directory / PUBLIC_TEST
    if not public.is_dir():
        raise DatasetError(f"missing folder {public}: expected {PUBLIC_TEST}/{normal_name}, {PUBLIC_TEST}/{ANOMALOUS}")
    good = require_images(public / normal_name, "normal test images")
    bad = require_images(public / ANOMALOUS, "anomalous test images")
    ground_truth = public / "ground_truth" / ANOMALOUS
    return [Sample(path, 0, NORMAL, NORMAL) for path in good] + [
        Sample(path, 1, ANOMALOUS, STRUCTURAL, (_mask_of(path, ground_truth),)) for path in bad
    ]


def private_sets_of(cfg: Any) -> tuple[str, ...]:
    """``dataset.private_sets``, each one of :data:`PRIVATE_SETS` (a ``ValueError`` names any other)."""
    chosen = tuple(str(name) for name in (cfg.get("private_sets", PRIVATE_SETS) or ()))
    unknown = [name for name in chosen if name not in PRIVATE_SETS]
    if unknown:
        raise ValueError(f"dataset.private_sets={list(chosen)}: {unknown} not among {list(PRIVATE_SETS)}")
    return chosen


@register_reader("mvtec_ad2")
def read_mvtec_ad2(cfg: Any, directory: Path) -> CategorySplits:
    """Read one MVTec AD 2 category (module docstring); a missing folder, an empty one or a missing
    mask is a :class:`DatasetError` naming the path."""
    if not directory.is_dir():
        raise DatasetError(f"missing category folder {directory}: expected {LAYOUT}")
    normal_name = str(cfg.get("normal_name", NORMAL))
    train = require_images(directory / "train" / normal_name, "normal training images")
    validation = require_images(directory / "validation" / normal_name, "normal validation images")
    private = {
        name: [
            Sample(path, 0, UNLABELLED, NORMAL)
            for path in require_images(
                directory / name, f"the {name} images (or leave them out: dataset.private_sets without {name})"
            )
        ]
        for name in private_sets_of(cfg)
    }
    return CategorySplits(
        train=[Sample(path, 0, NORMAL, NORMAL) for path in train],
        validation=[Sample(path, 0, NORMAL, NORMAL) for path in validation],
        test=_public_test(directory, normal_name),
        private=private,
    )
