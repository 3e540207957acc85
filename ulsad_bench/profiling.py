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
6. Batch-1 latency (what a deployment sees, nearer the paper's Table 4 protocol than batches of
   32): ``latency_calls`` single-image calls after two untimed ones, each timed alone (the device
   synchronised before and after); the median in milliseconds (``latency_ms``) and images per
   second over all of them (``throughput_batch1_img_s``). ``latency_calls=0`` skips it.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset, covering the timed
calls (model weights, memory banks and the input batch included, as they stay allocated),
reported as ``cuda_max_allocated``. On CPU its analogue, ``cpu_tensor_peak``: the bytes of the
model's state (parameters, buffers and tensor attributes: weights, PatchCore's memory bank,
PaDiM's Gaussians) plus the input batch, plus the peak of the tensors alive at once during one
extra, untimed ``predict`` call, followed operation by operation with a
``TorchDispatchMode`` (scratch buffers private to one kernel are not seen). The process's
resident set size is *not* the measure, because it also holds what the job keeps besides
inference (the training set, ULSAD's cached training features, freed-but-kept heap pages of
earlier models); its peak during the timed calls is recorded as ``cpu_peak_rss_mb`` for
reference.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .environment import heap_mmap_threshold, synchronize
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


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the context and alive at the same time.

    Every operator output's storage is counted once when it first appears and released when
    Python frees it (a ``weakref.finalize`` on the storage); views share their base's storage.
    Storages in ``ignore`` (data pointers of state that exists before the context) are not
    counted when an operation returns a view of them.
    """

    def __init__(self, ignore: set[int] | None = None) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}
        self._ignore = set(ignore or ())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                self._track(value.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live or key in self._ignore:
            return
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


def model_state_storages(model: AnomalyModel) -> dict[int, int]:
    """Data pointer -> bytes of every storage the model holds for inference: the parameters and
    buffers (persistent or not) of its :meth:`~ulsad_bench.models.base.AnomalyModel.inference_modules`,
    which hold everything ``predict`` uses."""
    tensors: list[torch.Tensor] = []
    for module in model.inference_modules():
        tensors.extend(module.parameters())
        tensors.extend(module.buffers())
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return storages


def cpu_tensor_peak_bytes(model: AnomalyModel, batch: torch.Tensor) -> int:
    """Model state + input batch + peak of the tensors alive during one ``predict`` (CPU)."""
    state = model_state_storages(model)
    state[batch.untyped_storage().data_ptr()] = batch.untyped_storage().nbytes()
    with LiveTensorPeak(ignore=set(state)) as tracker:
        model.predict(batch)
    return sum(state.values()) + tracker.peak


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
    latency_calls: int = 0,
) -> dict[str, Any]:
    """Measure ``model.predict`` as described in the module docstring.

    Args:
        images: test images ``[N, 3, S, S]`` (uint8 or float in [0, 1]).

    Returns:
        ``throughput_img_s``, ``peak_memory_mb``, ``memory_measure``, ``device``, ``batch_size``,
        ``timed_batches``, ``warmup_batches``, ``precision``, ``image_size``, ``seconds``,
        ``malloc_mmap_threshold``; on CPU
        also ``cpu_peak_rss_mb`` (for reference, see the module docstring); with
        ``latency_calls`` also ``latency_ms``, ``throughput_batch1_img_s`` and ``latency_calls``.
    """
    if timed_batches < 1:
        raise ValueError("timed_batches must be at least 1")
    model.eval()
    batch = build_batch(images, batch_size, device)
    for _ in range(warmup_batches):
        model.predict(batch)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(timed_batches):
            model.predict(batch)
        synchronize(device)
        seconds = time.perf_counter() - start
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
        name = torch.cuda.get_device_name(device)
    else:
        with _RssSampler() as sampler:
            start = time.perf_counter()
            for _ in range(timed_batches):
                model.predict(batch)
            seconds = time.perf_counter() - start
        rss_peak_mb = round(sampler.peak / 2**20, 1)
        peak, kind = cpu_tensor_peak_bytes(model, batch), "cpu_tensor_peak"
        name = f"cpu ({torch.get_num_threads()} threads)"
    result = {
        "throughput_img_s": round(batch_size * timed_batches / seconds, 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "memory_measure": kind,
        "device": name,
        "batch_size": batch_size,
        "timed_batches": timed_batches,
        "warmup_batches": warmup_batches,
        "precision": precision,
        "image_size": int(batch.shape[-1]),
        "seconds": round(seconds, 4),
        # glibc's mmap threshold if PatchCore set it in this process (slows CPU work), else None
        "malloc_mmap_threshold": heap_mmap_threshold(),
    }
    if device.type != "cuda":
        result["cpu_peak_rss_mb"] = rss_peak_mb
    if latency_calls > 0:
        result.update(batch1_latency(model, batch[:1], device, latency_calls))
    return result


def batch1_latency(model: AnomalyModel, image: torch.Tensor, device: torch.device, calls: int) -> dict[str, Any]:
    """Step 6 of the module docstring for one image ``[1, 3, S, S]`` on ``device``."""
    for _ in range(2):
        model.predict(image)
    seconds = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        model.predict(image)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {
        "latency_ms": round(1000 * statistics.median(seconds), 3),
        "throughput_batch1_img_s": round(calls / sum(seconds), 3),
        "latency_calls": calls,
    }
