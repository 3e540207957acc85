"""The profiler returns positive, finite figures with every field (not a timed test)."""

from __future__ import annotations

import math

import pytest
import torch

from ulsad_bench import runner
from ulsad_bench.models.base import AnomalyModel, Prediction
from ulsad_bench.profiling import build_batch, cpu_tensor_peak_bytes, profile_inference

FIELDS = {
    "throughput_img_s",
    "peak_memory_mb",
    "memory_measure",
    "device",
    "batch_size",
    "timed_batches",
    "warmup_batches",
    "precision",
    "image_size",
    "seconds",
    "malloc_mmap_threshold",
}
CPU_FIELDS = FIELDS | {"cpu_peak_rss_mb"}
LATENCY_FIELDS = {"latency_ms", "throughput_batch1_img_s", "latency_calls"}
MiB = 2**20


class _Counting(AnomalyModel):
    """A model that records how it was called."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.training_flag = True

    def fit(self, train, val):
        return {}

    def eval(self) -> None:
        self.training_flag = False

    def predict(self, images: torch.Tensor) -> Prediction:
        assert not torch.is_grad_enabled()
        self.calls.append(tuple(images.shape))
        maps = images.mean(dim=1)
        return Prediction(maps=maps, scores=maps.amax(dim=(-2, -1)))

    def hyperparameters(self):
        return {}


def test_profile_counts_warmup_and_timed_batches() -> None:
    model = _Counting()
    result = profile_inference(
        model,
        torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8),
        torch.device("cpu"),
        batch_size=32,
        warmup_batches=2,
        timed_batches=3,
    )
    assert set(result) == CPU_FIELDS
    # 5 images repeated up to a batch of 32; 2 warm-up + 3 timed calls + 1 untimed for memory
    assert model.calls == [(32, 3, 16, 16)] * 6
    assert not model.training_flag
    assert result["throughput_img_s"] > 0 and math.isfinite(result["throughput_img_s"])
    assert result["peak_memory_mb"] > 0 and result["memory_measure"] == "cpu_tensor_peak"
    assert result["cpu_peak_rss_mb"] > 0
    assert result["batch_size"] == 32 and result["timed_batches"] == 3 and result["image_size"] == 16


def test_batch1_latency_times_single_images_one_by_one() -> None:
    model = _Counting()
    images = torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)
    result = profile_inference(model, images, torch.device("cpu"), 8, 1, 1, latency_calls=4)
    assert set(result) == CPU_FIELDS | LATENCY_FIELDS
    # batches of 8 (1 warm-up, 1 timed, 1 for memory), then 2 untimed and 4 timed single images
    assert model.calls == [(8, 3, 16, 16)] * 3 + [(1, 3, 16, 16)] * 6
    assert result["latency_ms"] > 0 and result["throughput_batch1_img_s"] > 0 and result["latency_calls"] == 4


class _Holding(AnomalyModel):
    """4 MiB of inference state, a training-feature cache kept aside, 8 MiB of scratch per call."""

    name = "holding"

    def __init__(self) -> None:
        self.state = torch.nn.Module()
        self.state.register_buffer("bank", torch.zeros(MiB))  # 4 MiB (float32): state, like a memory bank
        self.state.register_buffer("bank_view", self.state.bank[:10], persistent=False)  # same storage: counted once
        self.bank = self.state.bank
        self.training_cache = {"features": torch.zeros(4 * MiB)}  # 16 MiB, not inference state
        self.scratch_attribute = torch.zeros(MiB)  # a tensor outside inference_modules(): not counted

    def inference_modules(self) -> list[torch.nn.Module]:
        return [self.state]

    def fit(self, train, val):
        return {}

    def predict(self, images: torch.Tensor) -> Prediction:
        scratch = torch.ones(2 * MiB, dtype=torch.float32)  # 8 MiB alive at once
        total = scratch.sum()
        del scratch
        near = self.bank[:100] + total  # a view of the state is not new memory; the sum is
        maps = images.mean(dim=1) + near[0]
        return Prediction(maps=maps, scores=maps.amax(dim=(-2, -1)))

    def hyperparameters(self):
        return {}


def test_cpu_memory_is_state_plus_batch_plus_peak_live_tensors() -> None:
    """The CPU analogue of cuda.max_memory_allocated, checked against known sizes."""
    model = _Holding()
    batch = torch.zeros(4, 3, 16, 16)
    with torch.inference_mode():
        peak = cpu_tensor_peak_bytes(model, batch)
    expected = 4 * MiB + batch.nbytes + 8 * MiB
    assert expected <= peak < expected + 16 * 1024, (peak, expected)  # plus a few small temporaries
    result = profile_inference(model, batch, torch.device("cpu"), batch_size=4, warmup_batches=0, timed_batches=1)
    assert result["peak_memory_mb"] == pytest.approx(expected / MiB, abs=0.05)
    assert result["cpu_peak_rss_mb"] > 16  # the process holds the cache too; the measure does not


def test_batch_is_built_once_as_float_on_the_device() -> None:
    batch = build_batch(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), 3, torch.device("cpu"))
    assert batch.shape == (3, 3, 4, 4) and batch.dtype == torch.float32 and batch.max() == 1.0
    with pytest.raises(ValueError):
        build_batch(torch.zeros(0, 3, 4, 4), 3, torch.device("cpu"))


def test_every_record_carries_efficiency(tiny_cfg, tmp_path) -> None:
    record = runner.run(tiny_cfg("model=padim"), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    efficiency = record["efficiency"]
    assert set(efficiency) == CPU_FIELDS | LATENCY_FIELDS
    assert efficiency["throughput_img_s"] > 0 and efficiency["batch_size"] == 8
    assert efficiency["latency_ms"] > 0 and efficiency["latency_calls"] == 2
