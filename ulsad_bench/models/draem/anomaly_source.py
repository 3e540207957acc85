"""Where DRAEM's synthetic anomalies take their texture from, offline.

DRAEM (Zavrtanik et al., ICCV 2021, Sec. 3.3) fills Perlin-noise masks with images of the
Describable Textures Dataset (DTD); anomalib 2.7's ``Draem`` downloads DTD when its folder is
missing (``lightning_model.py:103-106``). The harness never downloads it:

``dtd``
    The paper's setting: every image below ``model.anomaly_source_dir`` (DTD's ``dtd/images``, or any
    folder of texture images), at any depth, in sorted order (anomalib lists the folder with
    ``rglob``, in the file system's order). Only files ``torchvision.io.read_image`` decodes
    (:data:`TEXTURE_SUFFIXES`), as anomalib reads them.
``generated``
    A substitute: the textures anomalib's ``PerlinAnomalyGenerator`` makes itself when it is given no
    source (``perlin.py:321-330``: the Perlin noise that draws the mask, scaled to [0.25, 0.75] and
    augmented like a DTD image); drawn from the run seed, nothing read.
``auto``
    ``dtd`` when ``model.anomaly_source_dir`` is set; else ``generated`` under a random-init run (the
    synthetic set, ``backbone.weights=random``), where no pretrained input is consistent; else the
    job stops with :func:`missing_source_message`.
"""

from __future__ import annotations

from pathlib import Path

from ...data import DatasetError
from ..backbone import WeightsNotFoundError

#: image files ``torchvision.io.read_image`` decodes (anomalib reads DTD's textures with it)
TEXTURE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
SOURCES = ("auto", "dtd", "generated")
DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"
#: what records and tables say a generated source is instead of the paper's
GENERATED_SUBSTITUTE = "anomaly source generated (Perlin-noise textures, not DTD)"


class AnomalySourceNotFoundError(WeightsNotFoundError):
    """DRAEM's paper setting needs DTD's textures and none were configured; the message says how."""


def missing_source_message() -> str:
    """The one message of a DRAEM job that needs DTD and has no folder for it."""
    return (
        "DRAEM in the paper's setting synthesises its training anomalies from the Describable Textures Dataset "
        "(DTD): pass model.anomaly_source_dir=/path/to/dtd/images (download dtd-r1.0.1.tar.gz from "
        f"{DTD_URL} and extract it; any folder of texture images works, read recursively). Nothing is "
        "downloaded. To train on textures the harness generates itself instead (Perlin noise, not the paper's "
        "setting), ask for it explicitly: model.anomaly_source=generated; records and tables mark it."
    )


def resolve_source(setting: str, folder: str | None, weights_policy: str) -> str:
    """``dtd`` or ``generated``: what ``model.anomaly_source=setting`` means for a job whose weights
    policy is ``weights_policy`` (module docstring); raises :class:`AnomalySourceNotFoundError` when
    DTD is needed and ``folder`` is None."""
    if setting not in SOURCES:
        raise ValueError(f"model.anomaly_source={setting!r}: must be one of {', '.join(SOURCES)} (draem)")
    source = setting
    if setting == "auto":
        source = "dtd" if folder is not None or weights_policy != "random" else "generated"
    if source == "dtd" and folder is None:
        raise AnomalySourceNotFoundError(missing_source_message())
    return source


def texture_files(folder: str) -> list[Path]:
    """Every texture image below ``folder`` (:data:`TEXTURE_SUFFIXES`, any depth), sorted; a
    :class:`~ulsad_bench.data.DatasetError` naming ``model.anomaly_source_dir`` when there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"model.anomaly_source_dir={folder!r}: no such folder ({root.resolve()}). Expected a folder of texture "
            f"images: DTD's dtd/images (dtd-r1.0.1.tar.gz from {DTD_URL}, extracted), or "
            "model.anomaly_source=generated for the harness's own textures (not the paper's setting)."
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXTURE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(
            f"model.anomaly_source_dir={folder!r}: no texture images ({', '.join(sorted(TEXTURE_SUFFIXES))}) below "
            f"{root.resolve()}. Expected DTD's dtd/images ({DTD_URL}) or any folder of texture images."
        )
    return files
