"""``make bench`` end to end on tiny settings: fields and files, not timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ulsad_bench import bench, runner
from ulsad_bench.report import efficiency as efficiency_report


def test_bench_writes_efficiency_report(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def prepare(spec, *args):  # bench builds its jobs with the runner's one pipeline, from their specs
        seen.append(spec)
        return runner.prepare(spec, *args)

    monkeypatch.setattr(bench, "prepare", prepare)
    code = bench.main(
        [
            "--models",
            "ulsad,padim",
            "--out",
            str(tmp_path),
            "dataset.image_size=64",
            "backbone=resnet18",
            "dataset.synthetic.n_train=8",
            "profile.batch_size=4",
            "profile.warmup_batches=1",
            "profile.timed_batches=1",
            "profile.latency_calls=2",
            f"cache_dir={shared_cache}",
            "seed=3",
            "ulsad:model.feature_dim=16",
            "ulsad:model.epochs=2",
        ]
    )
    assert code == 0
    # ULSAD twice (features precomputed, then recomputed per batch), PaDiM once; all with the job's seed
    assert [(s.model, s.model_settings.get("precompute_features")) for s in seen] == [
        ("ulsad", True),
        ("ulsad", False),
        ("padim", None),
    ]
    assert all(s.seed == 3 and s.data.image_size == 64 for s in seen) and seen[0].model_settings["feature_dim"] == 16
    report = json.loads((tmp_path / "efficiency.json").read_text())
    assert report["image_size"] == 64 and report["train_images"] == 8
    for name in ("ulsad", "padim"):
        result = report["models"][name]
        assert result["throughput_img_s"] > 0 and result["peak_memory_mb"] > 0
        assert result["batch_size"] == 4 and result["device"] and result["memory_measure"] == "cpu_tensor_peak"
    # ULSAD trains in epochs: the first apart, the steady state the median of the others (2 here, the
    # preset's 3), the variant of its preset (features recomputed), the paper's study predicted
    training = report["models"]["ulsad"]["training"]
    assert training["epochs_timed"] == 2 and training["first_s"] > 0 and training["steady_s"] > 0
    assert set(training["once_s"]) == {"features_s", "attention_targets_s"}
    recomputed = training["variants"]["features_recomputed"]
    assert recomputed["overrides"] == ["model.precompute_features=false"] and recomputed["steady_s"] > 0
    paper = training["paper_prediction"]
    once = sum(training["once_s"].values())
    assert paper["job_s"] == pytest.approx(once + training["first_s"] + 199 * training["steady_s"], abs=0.1)
    assert paper["job_train_images"] == 8 and paper["study_hours"] > 0
    assert paper["study_train_images_per_seed"] == 16747 and paper["study_categories"] == 41
    assert "training" not in report["models"]["padim"]  # no epochs
    for name in ("ulsad", "padim"):  # batch 1: the profile's latency_calls single images
        assert report["models"][name]["latency_ms"] > 0 and report["models"][name]["throughput_batch1_img_s"] > 0
    markdown = (tmp_path / "efficiency.md").read_text()
    rows = {cells[0]: cells for cells in (line.strip("|").split("|") for line in markdown.splitlines()) if cells}
    rows = {name.strip(): [c.strip() for c in cells] for name, cells in rows.items()}
    ulsad, padim = report["models"]["ulsad"], report["models"]["padim"]
    # PaDiM's row: its own throughput and memory, and both as ratios to ULSAD's, as the JSON has them
    assert rows["padim"][1] == "fp32" and rows["padim"][2] == f"{padim['throughput_img_s']:.2f}"
    assert rows["padim"][3] == f"{padim['throughput_img_s'] / ulsad['throughput_img_s']:.2f}x"
    assert rows["padim"][4] == f"{padim['peak_memory_mb']:.0f}"
    assert rows["padim"][5] == f"{padim['peak_memory_mb'] / ulsad['peak_memory_mb']:.2f}x"
    assert rows["padim"][6] == f"{padim['throughput_batch1_img_s']:.2f}"
    assert rows["padim"][7] == f"{padim['latency_ms']:.2f}"
    assert f"one paper job (200 epochs, 8 training images) {paper['job_s'] / 60:.1f} min" in markdown
    speedup = recomputed["steady_s"] / training["steady_s"]
    assert efficiency_report.epoch_speedup(report) == pytest.approx(speedup, abs=5e-4)  # stored to 3 decimals
    assert f"({speedup:.2f}x)" in markdown and report["goals"]["cached epoch >= 1.3x faster"] == (speedup >= 1.3)


def test_bench_on_cuda_refuses_without_cuda_and_measures_bf16(tmp_path: Path, shared_cache: Path) -> None:
    if not torch.cuda.is_available():
        assert bench.main(["--models", "padim", "--out", str(tmp_path / "none"), "device=cuda"]) == 2
        assert not (tmp_path / "none").exists()  # stopped before anything ran
    tiny = ["dataset.image_size=64", "backbone=resnet18", "dataset.synthetic.n_train=8", "profile.batch_size=4"]
    tiny += ["profile.timed_batches=1", "profile.latency_calls=1"]
    code = bench.main(
        ["--models", "padim", "--precisions", "fp32,bf16", "--out", str(tmp_path), *tiny, f"cache_dir={shared_cache}"]
    )
    assert code == 0
    padim = json.loads((tmp_path / "efficiency.json").read_text())["models"]["padim"]
    assert (
        set(padim["precisions"]) == {"fp32", "bf16"} and padim["precisions"]["fp32"]["image_auroc_points_vs_first"] == 0
    )
    bf16 = padim["precisions"]["bf16"]
    assert bf16["precision"] == "bf16" and bf16["throughput_img_s"] > 0
    assert bf16["within_tolerance"] == (abs(bf16["image_auroc_points_vs_first"]) < 0.5)
    assert "| padim | bf16 |" in (tmp_path / "efficiency.md").read_text()


def test_every_timed_job_runs_with_the_same_kernel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare`` asks for deterministic kernels; the bench sets its timing kernels after every
    ``prepare`` (before, the uncached ULSAD job ran without cudnn.benchmark, the cached one with it)."""
    from types import SimpleNamespace

    from ulsad_bench.environment import seed_everything

    def prepare(spec):
        seed_everything(0, deterministic=True)  # as runner.prepare does
        return SimpleNamespace(device=torch.device("cuda"))

    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.setattr(bench, "prepare", prepare)
    try:
        for _ in range(2):
            bench.prepare_for_timing(None)
            assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
    assert bench.epoch_times([18.34, 2.73, 1.85, 1.99]) == (18.34, 1.99)
    assert bench.epoch_times([3.0]) == (3.0, 3.0)
