"""MVTec LOCO's ground-truth channels for sPRO: one mask file = one channel, with the saturation
threshold of its defect type from the category's ``defects_config.json``.

The file (Bergmann et al. 2022; the official evaluation's ``src/image.py``) is a JSON list of
``{"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"}``. Each mask
file holds 0 and one pixel value, which names its defect type. The channel's saturation area is
``int(threshold * area)`` when relative (a fraction in (0, 1] of the channel's area), else
``min(threshold, area)`` (a pixel count).

The harness scores maps at ``dataset.image_size``, so channels are resized (nearest) to that
size; a relative threshold applies to the resized area, an absolute one is scaled by the area
ratio ``S^2 / (W H)`` first. A channel that vanishes at that size is dropped and counted (the
official code refuses empty channels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics import Channel
from .sample import DatasetError, Sample, _open, resize_mask

DEFECTS_CONFIG = "defects_config.json"


@dataclass(frozen=True)
class DefectType:
    name: str
    pixel_value: int
    saturation_threshold: float
    relative: bool


def read_defects_config(path: Path) -> dict[int, DefectType]:
    """``pixel value -> defect type`` from a ``defects_config.json``; errors name the file."""
    try:
        entries = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise DatasetError(
            f"no {DEFECTS_CONFIG} at {path}: sPRO needs MVTec LOCO's per-category file (a list of defect_name, "
            "pixel_value, saturation_threshold, relative_saturation); the other metrics are computed without it"
        ) from err
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"unreadable {path}: expected a JSON list of defect types ({err})") from err
    types: dict[int, DefectType] = {}
    for entry in entries if isinstance(entries, list) else [None]:
        try:
            defect = DefectType(
                str(entry["defect_name"]),
                int(entry["pixel_value"]),
                float(entry["saturation_threshold"]),
                bool(entry["relative_saturation"]),
            )
        except (TypeError, KeyError, ValueError) as err:
            raise DatasetError(
                f"{path}: each entry needs defect_name, pixel_value, saturation_threshold, relative_saturation "
                f"(got {entry!r})"
            ) from err
        if not 0 < defect.pixel_value < 256 or (defect.relative and not 0 < defect.saturation_threshold <= 1):
            raise DatasetError(f"{path}: {entry!r}: pixel_value must be 1-255, a relative threshold in (0, 1]")
        types[defect.pixel_value] = defect
    return types


def load_channels(
    samples: Sequence[Sample], category_dir: Path, size: int, resize: str = "cv2_linear"
) -> tuple[list[Channel], int]:
    """The channels of the anomalous ``samples`` at ``size`` x ``size``, and how many vanished."""
    types = read_defects_config(Path(category_dir) / DEFECTS_CONFIG)
    channels: list[Channel] = []
    dropped = 0
    for index, sample in enumerate(samples):
        for mask_path in sample.mask_paths:
            image = _open(mask_path, "mask")
            values = np.asarray(image)
            if values.ndim == 3:
                values = values.max(axis=2)
            present = np.unique(values[values > 0])
            if present.size == 0:
                dropped += 1
                continue
            if present.size > 1 or int(present[0]) not in types:
                raise DatasetError(
                    f"mask {mask_path} has pixel values {present.tolist()}: expected one value listed in "
                    f"{Path(category_dir) / DEFECTS_CONFIG} ({sorted(types)})"
                )
            defect = types[int(present[0])]
            binary = values > 0
            resized = resize_mask(binary, size, resize)
            area = int(resized.sum())
            if area == 0:
                dropped += 1
                continue
            if defect.relative:
                saturation = float(int(defect.saturation_threshold * area))
            else:
                scale = size * size / binary.size
                saturation = min(defect.saturation_threshold * scale, float(area))
            channels.append(Channel(index, resized, saturation))
    return channels, dropped
