"""Throughput and peak memory of inference, measured the same way for every model.

Protocol (following EfficientAD's and the ULSAD paper's Table 4: batches of 32 images):

1. The model is in eval mode and runs under ``torch.inference_mode``.
2. One input batch of ``batch_size`` test images at the configured size is built and moved to
   the device *before* timing (test images are repeated if there are fewer): no data loading
   and no host-to-device copy is timed.
3. ``warmup_batches`` untimed calls of ``model.predict`` (kernel selection, caches, lazy init).
4. ``timed_batches`` calls timed with ``time.perf_counter``; on CUDA the device is
   synchronised before the clock starts and before it is read.
5. throughput = images processed / seconds.

Peak memory covers the timed calls: on CUDA ``torch.cuda.max_memory_allocated`` after a
reset (model weights included, as they stay allocated), reported as ``cuda_max_allocated``;
on CPU the peak resident set size of the process sampled every 5 ms during the timed calls
(``cpu_peak_rss``, which includes the Python interpreter and libraries).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torch

from .models.base import AnomalyModel


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Peak RSS of this process while the context is open (sampled in a thread)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_batch(images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``batch_size`` images ``[B, 3, S, S]`` float in [0, 1] on ``device`` (repeating if needed)."""
    if len(images) == 0:
        raise ValueError("profiling needs at least one image")
    index = torch.arange(batch_size) % len(images)
    batch = images[index]
    batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
    return batch.to(device)


@torch.inference_mode()
def profile_inference(
    model: AnomalyModel,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 32,
    warmup_batches: int = 2,
    timed_batches: int = 5,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Measure ``model.predict`` as described in the module docstring.

    Args:
        images: test images ``[N, 3, S, S]`` (uint8 or float in [0, 1]).

    Returns:
        ``throughput_img_s``, ``peak_memory_mb``, ``memory_kind``, ``device``, ``batch_size``,
        ``timed_batches``, ``warmup_batches``, ``precision``, ``image_size``, ``seconds``.
    """
    if timed_batches < 1:
        raise ValueError("timed_batches must be at least 1")
    model.eval()
    batch = build_batch(images, batch_size, device)
    for _ in range(warmup_batches):
        model.predict(batch)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(timed_batches):
            model.predict(batch)
        _sync(device)
        seconds = time.perf_counter() - start
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
        name = torch.cuda.get_device_name(device)
    else:
        with _RssSampler() as sampler:
            start = time.perf_counter()
            for _ in range(timed_batches):
                model.predict(batch)
            seconds = time.perf_counter() - start
        peak, kind = sampler.peak, "cpu_peak_rss"
        name = f"cpu ({torch.get_num_threads()} threads)"
    return {
        "throughput_img_s": round(batch_size * timed_batches / seconds, 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "memory_kind": kind,
        "device": name,
        "batch_size": batch_size,
        "timed_batches": timed_batches,
        "warmup_batches": warmup_batches,
        "precision": precision,
        "image_size": int(batch.shape[-1]),
        "seconds": round(seconds, 4),
    }
