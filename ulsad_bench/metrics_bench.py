"""``make bench-metrics``: time and peak memory of every pixel metric on a VisA-size test set.

    python -m ulsad_bench.metrics_bench [--images 200] [--size 256] [--repeats 3]

A test set of ``images`` maps of ``size`` x ``size`` (200 x 256 x 256 = 13.1 M pixels, about a
VisA category at 256 px), float32 maps with ties, half the images with defects. It times
:func:`ulsad_bench.metrics.score_test_set` (image and pixel AUROC, AP, F1-max, AUPRO from one
sort of the normal pixels) on one core, and measures the peak of the memory it allocates
(``tracemalloc``, which numpy reports to) in bytes per pixel. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the goal is stated

import numpy as np

from .metrics import score_test_set


def make_test_set(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    labels = np.zeros(images, dtype=np.int64)
    for i in range(images // 2):
        y, x = rng.integers(0, size - size // 4, 2)
        masks[i, y : y + size // 8, x : x + size // 6] = True
        labels[i] = 1
    maps = rng.random(masks.shape, dtype=np.float32)
    maps += 0.5 * masks
    maps = np.round(maps, 4)  # ties, as quantised maps have
    return labels, maps.reshape(images, -1).max(axis=1), masks, maps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    labels, scores, masks, maps = make_test_set(args.images, args.size)
    pixels = masks.size
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics, _ = score_test_set(labels, scores, masks, maps)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    score_test_set(labels, scores, masks, maps)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"pixels: {pixels / 1e6:.1f} M ({args.images} maps of {args.size} x {args.size}, float32)")
    print(f"all pixel and image metrics: {min(times):.2f} s (best of {args.repeats}; goal < 10 s on one core)")
    print(f"peak memory allocated: {peak / 2**20:.0f} MiB = {peak / pixels:.1f} bytes per pixel (goal < 40)")
    print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
