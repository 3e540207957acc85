"""Reader for VisA (Zou et al. 2022), as distributed or as anomalib prepares it.

As distributed (``VisA_20220922.tar`` from amazon-science/spot-diff, extracted; its folder is
``dataset.root``)::

    split_csv/1cls.csv                     object,split,label,image,mask
    <object>/Data/Images/Normal/*.JPG
    <object>/Data/Images/Anomaly/*.JPG
    <object>/Data/Masks/Anomaly/*.png      defect pixels hold small non-zero values, not 255
    <object>/image_anno.csv                (not read)

``1cls.csv`` is the one-class split every paper uses (8,659 training normals, 962 test normals,
1,200 test anomalies over 12 objects): ``split`` is ``train`` or ``test``, ``label`` is
``normal`` or ``anomaly``, ``image`` and ``mask`` are paths relative to the root, and ``mask``
is empty for normal images. It is read as is; masks are binarised by :func:`read_mask` (any
non-zero pixel is a defect).

Prepared by anomalib's ``Visa`` datamodule (``<root>/visa_pytorch/``, copies of the images,
masks rewritten to 0/255): the MVTec AD layout ``<object>/train/good``,
``<object>/test/{good,bad}``, ``<object>/ground_truth/bad/<stem>.png``, read by
:func:`read_category`. ``dataset.root`` may be ``visa_pytorch`` or the folder holding it.

``dataset.layout`` chooses: ``csv``, ``prepared``, or ``auto`` (the default): the CSV when
``split_csv/1cls.csv`` is under the root, else the prepared layout. VisA has no validation
split; ``val_split: auto`` holds one out of the training normals.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .folder import CategorySplits, read_category
from .sample import NORMAL, STRUCTURAL, DatasetError, Sample
from .splits import register_reader

SPLIT_CSV = Path("split_csv") / "1cls.csv"
PREPARED_DIR = "visa_pytorch"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
SPLITS = ("train", "test")
LAYOUTS = ("auto", "csv", "prepared")
ANOMALY = "anomaly"  # defect_type of VisA's anomalous images: the CSV names no defect types


def _row_sample(row: dict[str, str], root: Path, where: str) -> tuple[str, Sample]:
    """The split and the :class:`Sample` of one CSV row (``where`` names the file and line)."""
    split, label = (row["split"] or "").strip(), (row["label"] or "").strip()
    if split not in SPLITS or label not in LABELS:
        raise DatasetError(
            f"{where}: split {split!r}, label {label!r}: expected a split in {SPLITS}, a label in {tuple(LABELS)}"
        )
    image = root / (row["image"] or "").strip()
    if not image.is_file():
        raise DatasetError(f"image file not found: {image} (listed in {where})")
    if LABELS[label] == 0:
        return split, Sample(image, 0, NORMAL, NORMAL)
    if split == "train":
        raise DatasetError(f"{where}: anomalous image {image} in the train split: expected only normal images")
    missing = f"no ground-truth mask for anomalous image {image}"
    mask_field = (row["mask"] or "").strip()
    if not mask_field:
        raise DatasetError(f"{missing}: the mask column of {where} is empty")
    mask = root / mask_field
    if not mask.is_file():
        raise DatasetError(f"{missing}: {mask} (listed in {where}) not found")
    return split, Sample(image, 1, ANOMALY, STRUCTURAL, (mask,))


def read_visa_csv(root: Path, category: str) -> CategorySplits:
    """Read one object of VisA from ``<root>/split_csv/1cls.csv`` and the files it names."""
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        raise DatasetError(f"missing split file {csv_path}: expected VisA's split_csv/1cls.csv (VisA_20220922.tar)")
    found: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{csv_path} has columns {reader.fieldnames}: expected the header {','.join(COLUMNS)} "
                f"(missing {', '.join(missing)})"
            )
        for row in reader:
            if (row["object"] or "").strip() == category:
                split, sample = _row_sample(row, root, f"{csv_path} line {reader.line_num}")
                found[split].append(sample)
    train, test = found["train"], found["test"]
    what = f"object {category!r} in {csv_path}"
    if not train and not test:
        raise DatasetError(f"no rows for {what}: expected rows '{category},train,normal,<image>,'")
    for present, images, rows in (
        (train, "training images", "split train"),
        ([s for s in test if s.label == 0], "normal test images", "split test, label normal"),
        ([s for s in test if s.label == 1], "anomalous test images", "split test, label anomaly"),
    ):
        if not present:
            raise DatasetError(f"no {images} for {what}: expected rows with {rows}")
    return CategorySplits(train=train, validation=[], test=test, inputs=(csv_path,))


def prepared_category_dir(root: Path, category: str) -> Path | None:
    """The category folder of anomalib's prepared copy under ``root``, if there is one."""
    for candidate in (root / category, root / PREPARED_DIR / category):
        if (candidate / "train").is_dir():
            return candidate
    return None


@register_reader("visa")
def read_visa(cfg: Any, directory: Path) -> CategorySplits:
    """Read one VisA object; ``directory`` is ``<dataset.root>/<object>``."""
    root, category = directory.parent, directory.name
    layout = str(cfg.get("layout", "auto"))
    if layout not in LAYOUTS:
        raise ValueError(f"dataset.layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "csv" or (layout == "auto" and (root / SPLIT_CSV).is_file()):
        return read_visa_csv(root, category)
    prepared = prepared_category_dir(root, category)
    if prepared is not None:
        return read_category(prepared)
    if layout == "prepared":
        raise DatasetError(
            f"missing folder {directory / 'train'} (or {root / PREPARED_DIR / category / 'train'}): expected "
            "anomalib's prepared VisA layout <object>/train/good, test/{good,bad}, ground_truth/bad"
        )
    raise DatasetError(
        f"{root} holds neither VisA layout for {category!r}: expected {root / SPLIT_CSV} with "
        f"{category}/Data/Images/ (VisA_20220922.tar as distributed), or {directory}/train/good, test/, "
        f"ground_truth/ (anomalib's prepared visa_pytorch/ copy; give visa_pytorch or its parent as dataset.root)"
    )
