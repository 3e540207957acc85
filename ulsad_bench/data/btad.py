"""Reader for BTAD, the beanTech Anomaly Detection dataset (Mishra et al. 2021), as published.

``btad.zip`` (https://avires.dimi.uniud.it/papers/btad/btad.zip) extracts to
``BTech_Dataset_transformed/``, the folder to give as ``dataset.root``. Each product is a
category in the MVTec AD layout, with ``ok`` / ``ko`` for normal / anomalous::

    <01|02|03>/train/ok/*                normal training images
    <01|02|03>/test/ok/*                 normal test images
    <01|02|03>/test/ko/*                 anomalous test images
    <01|02|03>/ground_truth/ko/<stem>.*  one mask per anomalous image, named like the image

Images are ``.bmp`` (products 01 and 03) or ``.png`` (02). Masks are ``.png``, except for
product 03, whose masks are ``.bmp`` (the loaders of CFLOW-AD-derived code bases read
``ground_truth/ko/<stem>.bmp`` for 03 and ``<stem>.png`` otherwise). anomalib's copy of BTAD
converts every ``.bmp`` to ``.png`` in place; both are read here, so either copy works.
There is no validation split (``val_split: auto`` holds out training normals).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folder import CategorySplits, read_category
from .splits import register_reader

NORMAL_NAME = "ok"
MASK_SUFFIXES = (".png", ".bmp")


@register_reader("btad")
def read_btad(cfg: Any, directory: Path) -> CategorySplits:
    """Read one BTAD product folder (``01``, ``02`` or ``03``)."""
    return read_category(directory, normal_name=str(cfg.get("normal_name", NORMAL_NAME)), mask_suffixes=MASK_SUFFIXES)
