"""``make bench`` end to end on tiny settings: fields and files, not timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ulsad_bench import bench


def test_bench_writes_efficiency_report(tmp_path: Path, shared_cache: Path) -> None:
    code = bench.main(
        [
            "--models",
            "ulsad,padim",
            "--image-size",
            "64",
            "--backbone",
            "resnet18",
            "--train-images",
            "8",
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--timed",
            "1",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(shared_cache),
            "--override",
            "ulsad:model.feature_dim=16",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "efficiency.json").read_text())
    for name in ("ulsad", "padim"):
        result = report["models"][name]
        assert result["throughput_img_s"] > 0 and result["peak_memory_mb"] > 0
        assert result["batch_size"] == 4 and result["device"] and result["memory_kind"] == "cpu_tensor_peak"
    assert report["ulsad_train_epoch_s_cached"] > 0 and report["ulsad_train_epoch_s_uncached"] > 0
    assert report["ulsad_attention_targets_s_once"] >= 0 and report["ulsad_feature_extraction_s"] >= 0
    markdown = (tmp_path / "efficiency.md").read_text()
    rows = {cells[0]: cells for cells in (line.strip("|").split("|") for line in markdown.splitlines()) if cells}
    rows = {name.strip(): [c.strip() for c in cells] for name, cells in rows.items()}
    ulsad, padim = report["models"]["ulsad"], report["models"]["padim"]
    # PaDiM's row: its own throughput and memory, and both as ratios to ULSAD's, as the JSON has them
    assert rows["padim"][1] == f"{padim['throughput_img_s']:.2f}"
    assert rows["padim"][2] == f"{padim['throughput_img_s'] / ulsad['throughput_img_s']:.2f}x"
    assert rows["padim"][3] == f"{padim['peak_memory_mb']:.0f}"
    assert rows["padim"][4] == f"{padim['peak_memory_mb'] / ulsad['peak_memory_mb']:.2f}x"
    speedup = report["ulsad_train_epoch_s_uncached"] / report["ulsad_train_epoch_s_cached"]
    assert report["ulsad_epoch_speedup"] == pytest.approx(speedup, abs=5e-4)  # stored to 3 decimals
    assert f"({report['ulsad_epoch_speedup']:.2f}x)" in markdown
