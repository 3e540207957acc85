"""Benchmark of the decoded-split cache: the first load of a category decodes, later ones map.

    python -m ulsad_bench.decode_bench [--images 200] [--width 1500] [--height 1000] [--size 256]
                                       [--workers N] [--compare-pools] [--min-ratio 20]

Writes a VisA-like test split into a temporary folder: ``images`` JPEGs of ``width`` x
``height`` (smooth random colour fields, shifted, with fine grain, quality 90, so that they decode
like photographs rather than flat colour), every fifth with a PNG defect mask. Then it loads the split
with :func:`~ulsad_bench.data.images.load_image_set` at ``size`` px, with masks, twice through a
:class:`~ulsad_bench.data.decoded.DecodedCache` in a fresh folder:

* first load: decode and resize every image and mask, store the entry;
* cached load: a new cache object, as another job would make, nothing remembered from the first
  load: every source file is hashed for the key (``cache.source_keys=content``), the entry is
  mapped, its checksum verified and every byte of images and masks read once (``clone``), so
  lazily mapped pages are not left unread.

It also prints what keying on the files' content costs: the digest of every image and mask
(xxh3 over their bytes, files in the page cache) against their stat alone.

It checks the two loads are bit-identical, prints one line per time and one for the ratio, and
exits 1 when the cached load is not at least ``min-ratio`` times faster.

``--compare-pools`` also times the decode alone (no cache) with one thread, ``workers`` threads
and ``workers`` processes (``concurrent.futures.ProcessPoolExecutor``, arrays sent back by
pickling), to see whether the thread pool is limited by the GIL on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.content import forget, stat_line
from .data.decoded import DecodedCache
from .data.images import decode_into, load_image_set, usable_cpus
from .data.sample import Sample, read_image, read_mask


def write_category(root: Path, images: int, width: int, height: int, seed: int = 0) -> list[Sample]:
    """``images`` JPEGs (and, for every fifth, a PNG mask) under ``root``, as test samples."""
    rng = np.random.default_rng(seed)
    fields = [  # a few smooth colour fields; every image is one of them, shifted, with fine grain
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)).resize(
                (width, height), Image.Resampling.BICUBIC
            )
        )
        for _ in range(4)
    ]
    grain = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> Sample:
        local = np.random.default_rng([seed, i])
        dy, dx = local.integers(0, height), local.integers(0, width)
        pixels = np.roll(fields[i % len(fields)], (dy, dx), axis=(0, 1))
        np.bitwise_xor(pixels, grain, out=pixels)
        path = root / "images" / f"{i:04d}.JPG"
        Image.fromarray(pixels).save(path, quality=90)
        if i % 5:
            return Sample(path, 0, "good", "good")
        mask = np.zeros((height, width), np.uint8)
        y, x = local.integers(0, height - height // 8), local.integers(0, width - width // 8)
        mask[y : y + height // 8, x : x + width // 10] = 255
        mask_path = root / "masks" / f"{i:04d}.png"
        Image.fromarray(mask).save(mask_path)
        return Sample(path, 1, "defect", "structural", (mask_path,))

    with ThreadPoolExecutor(usable_cpus()) as pool:
        return list(pool.map(write, range(images)))


def evict_from_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to drop the files' cached pages (``posix_fadvise(DONTNEED)``; no root needed),
    so the next read comes from the disk; a no-op where unsupported."""
    for path in paths:
        with open(path, "rb") as handle:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _decode_one(job: tuple[Sample, int, str]) -> tuple[np.ndarray, np.ndarray]:
    sample, size, resize = job
    return read_image(sample.path, size, resize), read_mask(sample, size, resize)


def compare_pools(samples: list[Sample], size: int, workers: int) -> list[tuple[str, float]]:
    """Seconds to decode ``samples`` (images and masks, no cache) with 1 thread, ``workers``
    threads and ``workers`` processes."""
    timings = []
    for name, pool_type, n in (
        ("1 thread", ThreadPoolExecutor, 1),
        (f"{workers} threads", ThreadPoolExecutor, workers),
        (f"{workers} processes", ProcessPoolExecutor, workers),
    ):
        start = time.perf_counter()
        if pool_type is ThreadPoolExecutor:
            images = np.empty((len(samples), 3, size, size), np.uint8)
            masks = np.zeros((len(samples), size, size), bool)
            decode_into(samples, size, "cv2_linear", images, masks, name, workers=n, progress=False)
        else:
            with ProcessPoolExecutor(max_workers=n) as pool:
                list(pool.map(_decode_one, [(s, size, "cv2_linear") for s in samples], chunksize=4))
        timings.append((name, time.perf_counter() - start))
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: the usable CPUs)")
    parser.add_argument("--compare-pools", action="store_true", help="also time 1 thread / threads / processes")
    parser.add_argument("--min-ratio", type=float, default=20.0)
    args = parser.parse_args(argv)
    workers = args.workers or usable_cpus()
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        samples = write_category(root / "category", args.images, args.width, args.height)
        megabytes = sum(s.path.stat().st_size for s in samples) / 1e6
        print(
            f"category: {args.images} JPEGs of {args.width} x {args.height} ({megabytes:.0f} MB), "
            f"loaded at {args.size} px with masks, {workers} decode threads "
            f"(written in {time.perf_counter() - start:.1f} s)"
        )
        if args.compare_pools:
            for name, seconds in compare_pools(samples, args.size, workers):
                print(f"decode only, {name}: {seconds:.2f} s")
        options = {"size": args.size, "with_masks": True, "desc": "decode", "workers": workers, "progress": False}
        start = time.perf_counter()
        first = load_image_set(samples, cache=DecodedCache(root / "features"), **options)
        first_s = time.perf_counter() - start
        forget()  # another job: no digest remembered from the first load
        start = time.perf_counter()
        cached = load_image_set(samples, cache=DecodedCache(root / "features"), **options)
        assert cached.masks is not None
        read = (cached.images.clone(), cached.masks.clone())  # every byte read once
        cached_s = time.perf_counter() - start
        assert first.masks is not None
        if not (torch.equal(first.images, read[0]) and torch.equal(first.masks, read[1])):
            print("cached load differs from the decode", file=sys.stderr)
            return 1
        files = [path for sample in samples for path in (sample.path, *sample.mask_paths)]
        for source_keys, cold in (("stat", False), ("content", False), ("content", True)):
            forget()
            if cold:
                evict_from_page_cache(files)
            start = time.perf_counter()
            for path in files:
                stat_line(path, source_keys)
            where = ", read from disk (evicted from the page cache first)" if cold else ""
            print(f"key on the files' {source_keys}{where}: {time.perf_counter() - start:.3f} s")
    ratio = first_s / cached_s
    print(f"first load (decode, resize, store): {first_s:.3f} s")
    print(f"cached load (map, read every byte): {cached_s:.4f} s")
    print(f"cached load is {ratio:.0f}x faster (required: at least {args.min_ratio:g}x)")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
