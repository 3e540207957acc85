"""MVTec AD 2's private test sets, exported as its evaluation server takes them; assembled and checked.

**Per job.** A job on a dataset with test sets without ground truth (MVTec AD 2's ``test_private`` and
``test_private_mixed``, :mod:`ulsad_bench.data.mvtec_ad2`) predicts every image of them and writes
(:func:`export_private_sets`), in its run folder::

    submission/anomaly_images/<category>/<split>/<image stem>.tiff              the anomaly map
    submission/anomaly_images_thresholded/<category>/<split>/<image stem>.png   the binary mask (0 / 255)

the layout of the official upload (MVTecAD2_public_code_utils/utils.py L39-79, its dataset class's
``get_relative_anomaly_image_out_path``, mvtec_ad_2_public_offline.py L120-143). Each anomaly map is
2-D **float16**, at its image's original width and height: the model's map (``dataset.image_size``
square, the whole frame; a centre-cropping model's crop is put back in its frame, the border at that
map's lowest value) upsampled bilinearly (half-pixel centres, as the harness brings every map to its
size) to the source image's size. The issue asked for 32-bit float TIFFs; the official checker
refuses any dtype but ``numpy.float16`` (utils.py ``_check_ad_images`` L269-296: ``img.dtype !=
np.float16`` is a ``SubmissionException``), so the checker decides. The evaluation needs the maps at
the original resolution (mvtec_ad_evaluation/README.md L35-37, commit f4630b3); the checker does not
check it. float16 keeps 11 significant bits between 6.1e-5 and 65504: when a job's maps reach beyond
2^15 or stay below 2^-6 they are all multiplied by one power of two (:func:`float16_scale`, in the
record): an order-preserving change, so AU-PRO is unchanged but for rounding, and the masks are
thresholded before it. The binary masks use SegF1's threshold (``metrics.seg_f1``: mean + 3 std of the
validation maps, :func:`ulsad_bench.metrics.segmentation_threshold`; ``score >= threshold`` is 255),
thresholded at the same native size; without a threshold only the maps are written (the server then
scores no threshold-dependent metric; the official checker warns, check_and_prepare_data_for_upload.py
L58-66). The record's ``submission`` says where, how many and how.

**One submission.** ``python -m ulsad_bench.submission RESULTS --model M --seed S [--variant V]
[--config KEY=VALUE ...] [--out DIR] [--replace] [--counts official|records]`` finds the ok records of
that model and seed on MVTec AD 2 under RESULTS, one per category (``--config`` narrows down runs that
differ, e.g. ``--config dataset.image_size=512``), links (else copies) their files into one submission
root (default ``RESULTS/submissions/<model>[-<variant>]-seed=<S>``; a list of the records it came
from goes beside it, ``<root>.sources.json``, since the root may hold nothing else) and checks it by
the official checker's rules (:func:`check_submission`): exactly ``anomaly_images`` (and
``anomaly_images_thresholded``) at the root, exactly the 8 categories in each, exactly ``test_private``
and ``test_private_mixed`` in each, exactly the files ``000_regular.tiff`` ... (the official count per
category, utils.py L24-33; ``--counts records`` takes the counts the records state, for a subset or a
test fixture), each TIFF 2-D float16, each PNG 2-D with values in {0, 255}; beyond the checker, each
mask as large as its map. Whatever is missing or wrong is named; the exit status is 1 then. Nothing is
uploaded and nothing is compressed: the official ``check_and_prepare_data_for_upload.py`` does both
(its check is the same; it writes ``<root>.tar.gz``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from .config import flatten
from .data.sample import Sample, image_size_of
from .records import find_records, inspect_record, is_attempt

SUBMISSION_DIR = "submission"
ANOMALY_IMAGES = "anomaly_images"
THRESHOLDED = "anomaly_images_thresholded"
KINDS = {ANOMALY_IMAGES: ".tiff", THRESHOLDED: ".png"}
DATASET = "mvtec_ad2"
#: the official number of images of each private test set (MVTecAD2_public_code_utils/utils.py L24-33)
OFFICIAL_COUNTS = {
    "can": 321,
    "fabric": 314,
    "fruit_jelly": 255,
    "rice": 277,
    "sheet_metal": 142,
    "vial": 276,
    "wallplugs": 232,
    "walnuts": 228,
}
#: the private test sets and the suffix of their files' names (utils.py L184, L202-205)
SPLIT_SUFFIX = {"test_private": "regular", "test_private_mixed": "mixed"}
TIFF_DTYPE = np.float16
#: the range float16 keeps at full precision: maps beyond it are scaled (:func:`float16_scale`)
FLOAT16_HIGH, FLOAT16_LOW = 2.0**15, 2.0**-6
CHECK_WORKERS = 8


class SubmissionError(ValueError):
    """A submission cannot be assembled: what is missing or ambiguous is named."""


# ----------------------------------------------------------------------------- one job's export


def float16_scale(maps: Sequence[np.ndarray]) -> float:
    """1, or the power of two that brings the largest absolute value of ``maps`` into [2^14, 2^15)
    when it lies at or beyond 2^15 (float16 ends at 65504) or below 2^-6 (float16's precision falls
    off towards 6.1e-5): one factor for all of a job's maps, so their order is kept."""
    peak = max((float(np.max(np.abs(m))) for m in maps if m.size), default=0.0)
    if peak == 0.0 or FLOAT16_LOW <= peak < FLOAT16_HIGH:
        return 1.0
    return 2.0 ** (14 - math.floor(math.log2(peak)))


def full_frame(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps ``[N, c, c]`` of a model that saw the central ``c x c`` of each ``size x size`` image
    (``model.center_crop``, cut as :meth:`ulsad_bench.data.ImageSet.center_crop` cuts it) put back in
    their frame ``[N, size, size]``; the border the model never saw gets each map's lowest value."""
    crop = maps.shape[-1]
    if crop == size:
        return maps
    top = (size - crop) // 2
    frame = np.repeat(maps.reshape(len(maps), -1).min(axis=1), size * size).reshape(len(maps), size, size)
    frame[:, top : top + crop, top : top + crop] = maps
    return frame.astype(np.float32, copy=False)


def native_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """One map ``[S, S]`` at ``height x width``, bilinear with half-pixel centres (``align_corners=False``,
    as :func:`ulsad_bench.runner.predict_all` brings maps to the image size)."""
    tensor = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def _write_one(
    sample: Sample, amap: np.ndarray, folders: dict[str, Path], threshold: float | None, scale: float
) -> None:
    width, height = image_size_of(sample.path)
    native = native_map(amap, height, width)
    tifffile.imwrite(folders[ANOMALY_IMAGES] / f"{sample.path.stem}.tiff", (native * scale).astype(TIFF_DTYPE))
    if threshold is not None:
        mask = np.where(native >= threshold, 255, 0).astype(np.uint8)
        Image.fromarray(mask, mode="L").save(folders[THRESHOLDED] / f"{sample.path.stem}.png")


def export_private_sets(
    out: Path,
    category: str,
    sets: Mapping[str, tuple[Sequence[Sample], np.ndarray]],
    image_size: int,
    threshold: float | None,
) -> dict[str, Any]:
    """Write every map of the private test sets (module docstring) under ``out`` (the job's
    ``submission`` folder, made in its attempt folder and moved into the run folder with an ok
    record) and return the record's ``submission`` (the runner adds where it lies in the end).

    Args:
        sets: split name -> (its samples, their maps ``[N, c, c]`` as the model scored them).
        image_size: ``dataset.image_size`` (the frame of a centre-cropped model's maps).
        threshold: SegF1's threshold for the binary masks; None: no masks.
    """
    framed = {split: full_frame(np.asarray(maps, dtype=np.float32), image_size) for split, (_, maps) in sets.items()}
    scale = float16_scale(list(framed.values()))
    written: dict[str, Any] = {}
    for split, (samples, _) in sets.items():
        folders = {kind: out / kind / category / split for kind in KINDS}
        for kind, folder in folders.items():
            if kind == ANOMALY_IMAGES or threshold is not None:
                folder.mkdir(parents=True, exist_ok=True)
        maps = framed[split]
        for index, sample in enumerate(samples):
            _write_one(sample, maps[index], folders, threshold, scale)
        written[split] = {"images": len(samples)}
    return {
        "layout": f"{ANOMALY_IMAGES}/<category>/<split>/<stem>.tiff, {THRESHOLDED}/<category>/<split>/<stem>.png",
        "category": category,
        "sets": written,
        "tiff": "2-D float16 at each image's original size (bilinear from the model's map)",
        "scale": scale,
        "thresholded": None if threshold is None else {"threshold": threshold, "values": "score >= threshold: 255"},
    }


# ----------------------------------------------------------------------------- the official checker's rules


def expected_names(count: int, split: str, suffix: str) -> set[str]:
    """``000_regular.tiff`` ... for ``count`` images of ``split`` (utils.py L202-205)."""
    return {f"{index:03d}_{SPLIT_SUFFIX[split]}{suffix}" for index in range(count)}


def _listing(folder: Path, dirs: set[str], files: set[str]) -> list[str]:
    """What differs between ``folder``'s content and the required ``dirs`` and ``files`` (hidden
    entries count, as the official ``compare_found_vs_required``, utils.py L89-141, counts them)."""
    found_dirs = {p.name for p in folder.iterdir() if p.is_dir()}
    found_files = {p.name for p in folder.iterdir() if not p.is_dir()}
    problems = []
    for what, names in (
        ("superfluous folders", found_dirs - dirs),
        ("missing folders", dirs - found_dirs),
        ("superfluous files", found_files - files),
        ("missing files", files - found_files),
    ):
        if names:
            shown = sorted(names)
            more = f" (+{len(shown) - 6} more)" if len(shown) > 6 else ""
            problems.append(f"{what} in {folder}: {', '.join(shown[:6])}{more}")
    return problems


def _image_problem(path: Path) -> tuple[str | None, tuple[int, ...] | None]:
    """Why one TIFF or PNG would be refused (None when it would not), and its shape."""
    if path.suffix == ".tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), series.dtype
        except Exception as err:  # not a TIFF tifffile reads
            return f"unreadable anomaly image {path}: {type(err).__name__}: {err}", None
        if len(shape) != 2:
            return f"anomaly image {path} is not a single-channel image (shape {shape})", shape
        if dtype != TIFF_DTYPE:
            return f"anomaly image {path} is {dtype}, not float16 (the official checker takes float16 only)", shape
        return None, shape
    try:
        values = np.asarray(Image.open(path))
    except Exception as err:
        return f"unreadable thresholded image {path}: {type(err).__name__}: {err}", None
    if values.ndim != 2:
        return f"thresholded image {path} is not a single-channel image (shape {values.shape})", values.shape
    if not np.isin(np.unique(values), (0, 255)).all():
        return f"thresholded image {path} has values other than 0 and 255", values.shape
    return None, values.shape


def check_submission(root: Path, counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Every reason the official checker (check_and_prepare_data_for_upload.py L26-83, utils.py
    L89-325) would refuse the submission at ``root``, and masks whose size differs from their map's;
    empty when it passes. ``counts``: category -> split -> number of images (:data:`OFFICIAL_COUNTS`)."""
    root = Path(root)
    if not (root / ANOMALY_IMAGES).is_dir():
        return [f"{root / ANOMALY_IMAGES} was not found: the submission needs it (and may have {THRESHOLDED})"]
    kinds = [kind for kind in KINDS if (root / kind).is_dir()]
    problems = _listing(root, set(kinds), set())
    files: list[Path] = []
    for kind in kinds:
        problems += _listing(root / kind, set(counts), set())
        for category in sorted(set(counts) & {p.name for p in (root / kind).iterdir()}):
            problems += _listing(root / kind / category, set(SPLIT_SUFFIX), set())
            for split, count in counts[category].items():
                folder = root / kind / category / split
                if folder.is_dir():
                    names = expected_names(count, split, KINDS[kind])
                    problems += _listing(folder, set(), names)
                    files += [folder / name for name in sorted(names) if (folder / name).is_file()]
    with ThreadPoolExecutor(max_workers=CHECK_WORKERS) as pool:
        checked = dict(zip(files, pool.map(_image_problem, files), strict=True))
    problems += [problem for problem, _ in checked.values() if problem]
    for path, (_, shape) in checked.items():
        if path.suffix == ".png" and shape is not None:
            tiff = root / ANOMALY_IMAGES / path.relative_to(root / THRESHOLDED).with_suffix(".tiff")
            other = checked.get(tiff, (None, None))[1]
            if other is not None and other != shape:
                problems.append(f"thresholded image {path} is {shape}, its anomaly image {tiff} is {other}")
    return problems


# ----------------------------------------------------------------------------- assembling one submission


def _matches(record: Mapping[str, Any], model: str, seed: int, variant: str | None, where: Mapping[str, str]) -> bool:
    if record.get("status") != "ok" or record.get("dataset") != DATASET:
        return False
    if record.get("model") != model or record.get("seed") != seed or (record.get("variant") or None) != variant:
        return False
    config = flatten(record.get("config") or {})
    return all(json.dumps(config.get(key), default=str).strip('"') == value for key, value in where.items())


def find_jobs(
    results: Path, model: str, seed: int, variant: str | None = None, where: Mapping[str, str] | None = None
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """category -> (its run folder, its ok record) of ``model`` / ``seed`` / ``variant`` on MVTec AD 2
    under ``results`` (failed attempts left out); ``where``: flattened config keys and their values as
    JSON prints them. Two matching records of one category are a :class:`SubmissionError` naming them."""
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in find_records(results):
        record = None if is_attempt(path) else inspect_record(path).record
        if record is not None and _matches(record, model, seed, variant, where or {}):
            found.setdefault(str(record["category"]), []).append((path.parent, record))
    for category, jobs in found.items():
        if len(jobs) > 1:
            folders = ", ".join(str(folder) for folder, _ in jobs)
            raise SubmissionError(
                f"{len(jobs)} ok records of {model} seed {seed} on {DATASET}/{category}: {folders}; choose one with "
                "--config KEY=VALUE (a config key in which they differ, e.g. --config dataset.image_size=512)"
            )
    return {category: jobs[0] for category, jobs in found.items()}


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # no second copy of gigabytes of maps where the file system allows it
    except OSError:
        shutil.copy2(source, target)


def _copy_job(folder: Path, category: str, out: Path) -> list[str]:
    """Link a job's exported files into the submission root; what is missing from it, named."""
    source = folder / SUBMISSION_DIR
    if not (source / ANOMALY_IMAGES / category).is_dir():
        return [f"{source / ANOMALY_IMAGES / category} is missing: the job exported no private test set"]
    for kind in KINDS:
        for path in sorted((source / kind / category).rglob("*")) if (source / kind / category).is_dir() else []:
            if path.is_file():
                _place(path, out / path.relative_to(source))
    return []


def required_counts(jobs: Mapping[str, tuple[Path, dict[str, Any]]], mode: str) -> dict[str, dict[str, int]]:
    """category -> split -> images: the official counts, or (``records``) those the records state."""
    if mode == "official":
        return {category: dict.fromkeys(SPLIT_SUFFIX, count) for category, count in OFFICIAL_COUNTS.items()}
    counts = {}
    for category, (_, record) in jobs.items():
        sets = (record.get("submission") or {}).get("sets") or {}
        counts[category] = {split: int(sets.get(split, {}).get("images", 0)) for split in SPLIT_SUFFIX}
    return counts


def configured_categories(jobs: Mapping[str, tuple[Path, dict[str, Any]]]) -> list[str]:
    """The categories the jobs' configs list (``dataset.categories``), in their order; those found
    otherwise after them."""
    listed: dict[str, None] = {}
    for _, record in jobs.values():
        listed.update(
            dict.fromkeys(str(c) for c in ((record.get("config") or {}).get("dataset") or {}).get("categories") or ())
        )
    return [*listed, *sorted(set(jobs) - set(listed))]


def assemble(
    results: Path,
    model: str,
    seed: int,
    out: Path,
    variant: str | None = None,
    where: Mapping[str, str] | None = None,
    counts: str = "official",
    replace: bool = False,
) -> list[str]:
    """Assemble one submission root at ``out`` from the jobs under ``results`` (module docstring) and
    check it; returns the problems (empty: ready to upload). Raises :class:`SubmissionError` when
    nothing can be assembled (ambiguous records, ``out`` not empty without ``replace``)."""
    jobs = find_jobs(results, model, seed, variant, where)
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise SubmissionError(f"{out} exists and is not empty: remove it, give another --out, or pass --replace")
        shutil.rmtree(out)
    required = required_counts(jobs, counts)
    expected = sorted(required) if counts == "official" else configured_categories(jobs)
    problems = [
        f"no ok record of {model}{'/' + variant if variant else ''} seed {seed} on {DATASET}/{category} under "
        f"{results}: run it (make sweep DATASET={DATASET} ...) before assembling"
        for category in expected
        if category not in jobs
    ]
    out.mkdir(parents=True, exist_ok=True)
    for category in expected:
        if category in jobs:
            problems += _copy_job(jobs[category][0], category, out)
    sources = {category: str(jobs[category][0]) for category in expected if category in jobs}
    (out.parent / f"{out.name}.sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    return problems + check_submission(out, {c: required[c] for c in expected if c in required})


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring). Exit status 0: assembled and passing the official
    checks; 1: something is missing or wrong (named); 2: nothing could be assembled."""
    parser = argparse.ArgumentParser(description="Assemble and check an MVTec AD 2 submission (nothing is uploaded).")
    parser.add_argument("results", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--replace", action="store_true")
    parser.add_argument("--counts", choices=("official", "records"), default="official")
    args = parser.parse_args(argv)
    for item in args.config:
        if "=" not in item:
            parser.error(f"--config {item!r}: expected KEY=VALUE, e.g. --config dataset.image_size=512")
    name = f"{args.model}{'-' + args.variant if args.variant else ''}-seed={args.seed}"
    out = args.out or args.results / "submissions" / name
    try:
        where = dict(item.split("=", 1) for item in args.config)
        problems = assemble(args.results, args.model, args.seed, out, args.variant, where, args.counts, args.replace)
    except (SubmissionError, ValueError) as err:
        print(f"submission: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"submission: {problem}", file=sys.stderr)
    if problems:
        print(f"submission: {out} would be refused ({len(problems)} problems); nothing was uploaded", file=sys.stderr)
        return 1
    print(f"submission ready: {out} (passes the official checks; upload it with MVTec's tools, not from here)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
