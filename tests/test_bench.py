"""``make bench`` end to end on tiny settings: fields and files, not timings."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert "| ulsad |" in markdown and "| padim |" in markdown and "1.00x" in markdown
