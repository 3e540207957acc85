"""Device discipline on a machine without a GPU: every model's whole job on a stand-in accelerator.

On a GPU, DFR failed in ``pca_latent_dim`` (``torch.searchsorted`` of a CUDA tensor and a CPU
one); on the CPU every tensor is on one device and nothing noticed. The stand-in device
(:mod:`tests.device_check`) carries real values and refuses what CUDA refuses (a host tensor
meeting a device tensor, ``.numpy()`` of a device tensor, a CPU generator for a device tensor),
so each model's job (set-up, fit, calibration, prediction, profiling, metrics, the record) runs
on it end to end, and must give the scores of the same job on the CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.device_check import DeviceMismatchError, stand_in_accelerator
from tests.test_baselines import EFFICIENTAD_FAST
from tests.test_model_cflow import CFLOW_FAST
from tests.test_model_fastflow import FASTFLOW_FAST
from tests.test_model_reverse_distillation import RD_FAST
from ulsad_bench import bench, runner
from ulsad_bench.models.dfr.model import pca_latent_dim
from ulsad_bench.records import config_hash
from ulsad_bench.report import load_results

JOBS = {
    "ulsad": ["model=ulsad", "model.feature_dim=16", "model.epochs=2", "model.batch_size=4"],
    "padim": ["model=padim"],
    "patchcore": ["model=patchcore"],
    "dfr": ["model=dfr", "model.epochs=2", "model.layers=[relu1_1,relu1_2,relu2_1,relu2_2]"],
    "efficientad": EFFICIENTAD_FAST,
    "fastflow": FASTFLOW_FAST,
    "reverse_distillation": [*RD_FAST[:2], "model.epochs=3", *RD_FAST[3:]],
    "cflow": CFLOW_FAST,
}


def test_the_stand_in_device_refuses_what_cuda_refuses() -> None:
    with stand_in_accelerator() as device:
        on_device = torch.linspace(0, 1, 5, device=device)
        with pytest.raises(DeviceMismatchError):
            torch.searchsorted(on_device, torch.tensor([0.5]))  # the pattern DFR failed on, on the H200
        with pytest.raises(TypeError, match="numpy"):
            on_device.numpy()
        with pytest.raises(DeviceMismatchError, match="generator"):
            torch.randperm(4, generator=torch.Generator().manual_seed(0), device=device)
        with pytest.raises(DeviceMismatchError):
            on_device[:2] @ torch.ones(2)
        # what CUDA accepts: CPU indices, 0-dim CPU scalars, copies both ways, a list index
        assert (on_device[torch.tensor([1, 2])] * torch.tensor(2.0)).cpu().tolist() == [0.5, 1.0]
        assert on_device[[0, 4]].cpu().tolist() == [0.0, 1.0] and on_device.sum().item() == 2.5
        assert torch.searchsorted(on_device, torch.tensor([0.5], device=device)).cpu().item() == 2


def test_pca_latent_dim_runs_on_the_device() -> None:
    vectors = torch.randn(64, 12, generator=torch.Generator().manual_seed(0)) * torch.linspace(3, 0.1, 12)
    expected = pca_latent_dim(vectors, 0.9)
    with stand_in_accelerator() as device:
        assert pca_latent_dim(vectors.to(device), 0.9) == expected


def _scores(run_dir: Path) -> np.ndarray:
    with (run_dir / "predictions.csv").open() as handle:
        return np.array([float(row["score"]) for row in csv.DictReader(handle)])


@pytest.mark.parametrize("name", list(JOBS))
def test_a_whole_job_runs_on_the_device_and_scores_as_on_the_cpu(tiny_cfg, tmp_path: Path, name: str) -> None:
    overrides = [*JOBS[name], "feature_cache=false", "dataset.category=texture", "profile.enabled=true"]
    overrides += ["profile.batch_size=2", "dataset.synthetic.n_test_good=3", "dataset.synthetic.n_per_defect=1"]
    with stand_in_accelerator() as device:
        record = runner.run(tiny_cfg(*overrides, f"device={device}"), tmp_path / "device")
    assert record["status"] == "ok", record.get("traceback")
    assert record["device"] == str(device) and record["efficiency"]["throughput_img_s"] > 0
    if name == "efficientad":  # its CPU job, at 256 px, is tested in test_baselines.py; here the device path
        return
    on_cpu = runner.run(tiny_cfg(*overrides, "device=cpu"), tmp_path / "cpu")
    assert on_cpu["status"] == "ok", on_cpu.get("traceback")
    # the same computation: the same scores, to float rounding (operators are split into kernels
    # differently off the CPU; a training compounds it), relative to the scores' scale
    cpu_scores = _scores(tmp_path / "cpu")
    np.testing.assert_allclose(_scores(tmp_path / "device"), cpu_scores, rtol=0, atol=1e-4 * np.abs(cpu_scores).max())
    assert record["metrics"]["image_auroc"] == pytest.approx(on_cpu["metrics"]["image_auroc"], abs=0.02)


def test_the_device_type_is_part_of_a_results_identity(tiny_cfg, tmp_path: Path) -> None:
    """The same job on another device type is another result (its training trajectory and PatchCore's
    coreset differ by device): another config hash, never skipped on the other's record, and the
    report does not average seeds run on both. The device's index is not."""
    devices = ("cpu", "cuda", "cuda:0", "cuda:1")
    hashes = {device: config_hash(resolved(tiny_cfg(f"device={device}"))) for device in devices}
    assert hashes["cpu"] != hashes["cuda"] == hashes["cuda:0"] == hashes["cuda:1"]
    assert resolved(tiny_cfg("device=cuda:1"))["device_type"] == "cuda"
    out = tmp_path / "outputs"
    runs = {seed: out / "synthetic" / "pinbox" / "padim" / f"seed={seed}" for seed in (0, 1)}
    job = ["model=padim", "profile.enabled=false"]
    assert runner.run(tiny_cfg(*job, "device=cpu", "seed=0"), runs[0])["status"] == "ok"
    with stand_in_accelerator() as device:
        again = runner.run(tiny_cfg(*job, f"device={device}", "seed=0"), runs[0])  # resume=strict
        assert again["status"] == "ok" and again["device"] == str(device)  # ran again: not the CPU's record
        assert runner.run(tiny_cfg(*job, f"device={device}", "seed=1"), runs[1])["status"] == "ok"
    assert runner.run(tiny_cfg(*job, "device=cpu", "seed=1"), runs[1])["status"] == "ok"  # seed 1 back on the CPU
    results = load_results(out)
    (conflict,) = results.conflicts  # seed 0 on the stand-in device, seed 1 on the CPU: not one experiment
    assert "device_type" in conflict["detail"] and results.ok.empty


def resolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def test_make_bench_runs_on_the_device(tmp_path: Path, shared_cache: Path) -> None:
    """The bench's own code (its timing jobs, ULSAD's epochs with features recomputed per batch, batch 1)."""
    tiny = ["dataset.image_size=64", "backbone=resnet18", "dataset.synthetic.n_train=8", "profile.batch_size=2"]
    tiny += ["profile.timed_batches=1", "profile.warmup_batches=1", "profile.latency_calls=1"]
    tiny += ["dataset.synthetic.n_test_good=2", "dataset.synthetic.n_per_defect=1", "dataset.synthetic.n_validation=4"]
    tiny += [f"cache_dir={shared_cache}", "model.feature_dim=16", "model.epochs=2"]
    with stand_in_accelerator() as device:
        code = bench.main(["--models", "ulsad", "--out", str(tmp_path), f"device={device}", *tiny])
    assert code == 0
    report = json.loads((tmp_path / "efficiency.json").read_text())
    assert report["device"] == str(device)
    assert report["models"]["ulsad"]["training"]["variants"]["features_recomputed"]["steady_s"] > 0
    assert all("error" not in result and result["latency_ms"] > 0 for result in report["models"].values())
