"""The files of one job's run folder, written and read here only.

- ``record.json``: the job's record (its schema, checks and writer: :mod:`ulsad_bench.records`);
- ``predictions.csv``: one row per test image (path, label, anomaly kind, defect type, score),
  from which the image metrics can be recomputed;
- ``maps.npz``: a few test images per defect type with their masks and anomaly maps, for the
  report's figures and the tracker's panels.

Readers get typed objects (:class:`PredictionRow`, :class:`MapPreview`), never arrays by key.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RECORD_NAME = "record.json"
PREDICTIONS_NAME = "predictions.csv"
MAPS_NAME = "maps.npz"
#: the files a job writes beside its record (moved into the run folder with an ok record)
JOB_FILES = (PREDICTIONS_NAME, MAPS_NAME)
#: maps.npz keys of the branch maps (``map_<name>``)
EXTRA_PREFIX = "map_"


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(payload, out, indent=2, sort_keys=False, default=str)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class PredictionRow:
    """One test image's score (``label`` 1 = anomalous; ``kind``: its anomaly kind)."""

    path: str
    label: int
    kind: str
    defect_type: str
    score: float


def write_predictions(run_dir: Path, samples: Sequence[Any], scores: np.ndarray) -> Path:
    """``predictions.csv`` for test ``samples`` (:class:`~ulsad_bench.data.sample.Sample`) and their scores."""
    path = Path(run_dir) / PREDICTIONS_NAME
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "kind", "defect_type", "score"])
        for sample, score in zip(samples, scores, strict=True):
            writer.writerow([str(sample.path), sample.label, sample.kind, sample.defect_type, f"{score:.9g}"])
    return path


def read_predictions(run_dir: Path) -> list[PredictionRow]:
    """The rows of ``<run_dir>/predictions.csv``."""
    with open(Path(run_dir) / PREDICTIONS_NAME, newline="") as handle:
        return [
            PredictionRow(row["path"], int(row["label"]), row["kind"], row["defect_type"], float(row["score"]))
            for row in csv.DictReader(handle)
        ]


# ----------------------------------------------------------------------------- map previews


@dataclass
class MapPreview:
    """Test images with their masks and maps (``K`` images of size ``S``).

    Attributes:
        image: uint8 ``[K, 3, S, S]``.
        mask: bool ``[K, S, S]`` (empty when the test set had no masks).
        map: float16 ``[K, S, S]``, the model's anomaly map.
        path: ``[K]`` image paths; defect_type: ``[K]``.
        extras: branch maps by name (ULSAD: ``local``, ``global``), each like ``map``.
    """

    image: np.ndarray
    mask: np.ndarray
    map: np.ndarray
    path: np.ndarray
    defect_type: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image)

    def index_of(self, path: str) -> int | None:
        """The index of the image at ``path``, None when it is not in the preview."""
        hits = np.flatnonzero(self.path == path)
        return int(hits[0]) if hits.size else None

    def mask_of(self, i: int) -> np.ndarray | None:
        """Image ``i``'s mask as float, None when there are no masks."""
        return self.mask[i].astype(np.float32) if self.mask.ndim == 3 and i < len(self.mask) else None


def choose_preview(defect_types: Sequence[str], per_defect: int) -> list[int]:
    """The first ``per_defect`` test images of every defect type (normal ones included)."""
    chosen: list[int] = []
    seen: dict[str, int] = {}
    for i, defect in enumerate(defect_types):
        if seen.get(defect, 0) < per_defect:
            seen[defect] = seen.get(defect, 0) + 1
            chosen.append(i)
    return chosen


def write_maps(run_dir: Path, preview: MapPreview) -> Path:
    """``maps.npz`` (compressed; maps as float16)."""
    path = Path(run_dir) / MAPS_NAME
    payload: dict[str, np.ndarray] = {
        "image": preview.image,
        "mask": preview.mask,
        "map": preview.map.astype(np.float16),
        "path": np.asarray(preview.path),
        "defect_type": np.asarray(preview.defect_type),
    }
    for name, extra in preview.extras.items():
        payload[f"{EXTRA_PREFIX}{name}"] = extra.astype(np.float16)
    np.savez_compressed(path, **payload)
    return path


def read_maps(run_dir: Path) -> MapPreview | None:
    """``<run_dir>/maps.npz``, or None when the run saved no maps (or none of its images)."""
    path = Path(run_dir) / MAPS_NAME
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if "image" not in arrays or not len(arrays["image"]):
        return None
    extras = {key[len(EXTRA_PREFIX) :]: value for key, value in arrays.items() if key.startswith(EXTRA_PREFIX)}
    return MapPreview(
        image=arrays["image"],
        mask=arrays.get("mask", np.zeros(0, bool)),
        map=arrays["map"],
        path=arrays["path"],
        defect_type=arrays["defect_type"],
        extras=extras,
    )
