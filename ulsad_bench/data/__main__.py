"""Check a dataset on disk before a long sweep.

    python -m ulsad_bench.data dataset=NAME dataset.root=PATH [dataset.category=CAT|all] [other overrides]

The arguments are Hydra overrides of the real config (``conf/``). For each category (all of
them for ``dataset.category=all``) the splits are built exactly as a job builds them and one
JSON object is printed per line::

    {"dataset": ..., "category": ..., "train": N, "val": N, "test_normal": N, "test_anomalous": N,
     ["logical": N, "structural": N,]  "anomalous_pixel_fraction": F, "image_size": S,
     "val_source": ..., "path": <the folder holding the category's images>}

``logical`` / ``structural`` appear for datasets with logical anomalies (MVTec LOCO); the test sets
without ground truth (MVTec AD 2's ``test_private``, ``test_private_mixed``) follow with their
counts, their images' headers read too (``test_normal`` / ``test_anomalous`` are then
``test_public``'s ``good`` / ``bad``).
``anomalous_pixel_fraction`` is the share of anomalous pixels over all test images (normal
images count as all-normal masks) at ``dataset.image_size``, i.e. after the same resize the
metrics see: the positive rate of the pixel AUROC. Every image's header is read (a file that
is not an image is reported); every mask is decoded, checked against its image's size and
binarised. Image pixels are not decoded, so a file truncated after its header is not caught.

Exit status: 0 when every category is complete; 1 when any is not (its ``DatasetError``,
naming the path and what was expected, is printed to stderr; the others are still checked);
2 for a config that does not compose.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ..config import compose
from .sample import LOGICAL, STRUCTURAL, DatasetError, image_size_of, read_mask
from .splits import Splits, build_splits, categories_of, dataset_root, with_category

WORKERS = 4


def _counts(splits: Splits) -> dict[str, int]:
    counts = splits.counts()
    out = {key: counts[key] for key in ("train", "val", "test_normal", "test_anomalous")}
    if counts.get(f"test_{LOGICAL}", 0):
        out[LOGICAL] = counts[f"test_{LOGICAL}"]
        out[STRUCTURAL] = counts.get(f"test_{STRUCTURAL}", 0)
    out.update({name: len(samples) for name, samples in splits.private.items()})
    return out


def check_splits(splits: Splits, size: int, workers: int = WORKERS, resize: str = "cv2_linear") -> float:
    """Read every image header and every mask of ``splits``; return the anomalous pixel fraction.

    Raises:
        DatasetError: for an unreadable image or mask, or a mask whose size differs from its image.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        private = [s for samples in splits.private.values() for s in samples]
        list(pool.map(lambda s: image_size_of(s.path), [*splits.train, *splits.val, *splits.test, *private]))
        anomalous = sum(int(m.sum()) for m in pool.map(lambda s: read_mask(s, size, resize), splits.test))
    return anomalous / (len(splits.test) * size * size)


def check_category(dataset_cfg: Any, cache_dir: Path) -> dict[str, Any]:
    """Build one category's splits as a job does, read its files, and summarise it."""
    splits = build_splits(dataset_cfg, cache_dir)
    size = int(dataset_cfg.image_size)
    fraction = check_splits(splits, size, resize=str(dataset_cfg.get("resize", "cv2_linear")))
    return {
        "dataset": str(dataset_cfg.name),
        "category": str(dataset_cfg.category),
        **_counts(splits),
        "anomalous_pixel_fraction": round(fraction, 6),
        "image_size": size,
        "val_source": splits.val_source,
        "path": os.path.commonpath([str(s.path.parent) for s in (*splits.train, *splits.test)]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the check; see the module docstring. Returns the exit status."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in overrides):
        print(__doc__)
        return 0
    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as err:  # unknown dataset name, malformed override, ...
        print(f"config error: {err}", file=sys.stderr)
        return 2
    dataset, cache_dir = cfg.dataset, Path(str(cfg.cache_dir))
    try:
        categories = categories_of(dataset)
        dataset_root(dataset, cache_dir)
    except DatasetError as err:
        print(f"dataset error: {err}", file=sys.stderr)
        return 1
    failed = 0
    for category in categories:
        try:
            summary = check_category(with_category(dataset, category), cache_dir)
        except DatasetError as err:
            failed += 1
            print(f"dataset error ({dataset.name}/{category}): {err}", file=sys.stderr, flush=True)
            continue
        print(json.dumps(summary), flush=True)
    if failed:
        print(f"{failed} of {len(categories)} categories of {dataset.name} are incomplete", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
