"""sPRO from a LOCO-layout dataset: channels from the mask files, thresholds from defects_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import mvtec_cfg
from ulsad_bench import runner
from ulsad_bench.data import DatasetError, Sample
from ulsad_bench.data.channels import load_channels, read_defects_config

CONFIG = [
    {"defect_name": "missing", "pixel_value": 10, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "extra", "pixel_value": 20, "saturation_threshold": 16, "relative_saturation": False},
]


def _loco(root: Path, with_config: bool = True) -> Path:
    """A LOCO-layout category ``box`` at 32 px: logical anomalies with two channels, structural ones."""
    rng = np.random.default_rng(0)
    category = root / "box"
    for folder, count in (("train/good", 8), ("validation/good", 3), ("test/good", 4)):
        (category / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(100, 120, (32, 32, 3), dtype=np.uint8)).save(
                category / folder / f"{i:03d}.png"
            )
    for kind in ("logical_anomalies", "structural_anomalies"):
        (category / "test" / kind).mkdir(parents=True)
        for i in range(2):
            image = rng.integers(100, 120, (32, 32, 3), dtype=np.uint8)
            image[4:12, 4:12] = 250
            Image.fromarray(image).save(category / "test" / kind / f"{i:03d}.png")
            folder = category / "ground_truth" / kind / f"{i:03d}"
            folder.mkdir(parents=True)
            first = np.zeros((32, 32), np.uint8)
            first[4:12, 4:12] = 10
            Image.fromarray(first).save(folder / "000.png")
            if kind == "logical_anomalies":
                second = np.zeros((32, 32), np.uint8)
                second[20:28, 20:24] = 20
                Image.fromarray(second).save(folder / "001.png")
    if with_config:
        (category / "defects_config.json").write_text(json.dumps(CONFIG))
    return root


def _cfg(root: Path, cache: Path, *overrides: str):
    return mvtec_cfg(root, cache, *overrides, dataset="mvtec_loco", category="box")


def test_channels_carry_relative_and_absolute_saturation(tmp_path: Path) -> None:
    root = _loco(tmp_path)
    folder = root / "box" / "ground_truth" / "logical_anomalies" / "000"
    sample = Sample(
        root / "box/test/logical_anomalies/000.png",
        1,
        "logical_anomalies",
        "logical",
        (folder / "000.png", folder / "001.png"),
    )
    channels, dropped = load_channels([sample], root / "box", 32)
    assert dropped == 0 and [c.mask.sum() for c in channels] == [64, 32]
    assert channels[0].saturation == 32.0  # relative 0.5 of 64 pixels
    assert channels[1].saturation == 16.0  # absolute 16 pixels (at the original size)
    half, _ = load_channels([sample], root / "box", 16)  # at half the size: a quarter of the area
    assert [c.mask.sum() for c in half] == [16, 8] and half[0].saturation == 8.0 and half[1].saturation == 4.0


def test_a_loco_dataset_with_defects_config_gets_spro(tmp_path: Path, shared_cache: Path) -> None:
    record = runner.run(_cfg(_loco(tmp_path / "data"), shared_cache), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    for metrics in (record["metrics"], record["metrics_by_kind"]["logical"], record["metrics_by_kind"]["structural"]):
        assert {"spro_0.05", "spro_0.3", "spro_1", "image_ap", "pixel_f1_max"} <= set(metrics)
        assert 0.0 <= metrics["spro_0.3"] <= 1.0
    assert "metric_notes" not in record


def test_without_defects_config_spro_is_named_missing_and_the_rest_is_kept(tmp_path: Path, shared_cache: Path) -> None:
    record = runner.run(_cfg(_loco(tmp_path / "data", with_config=False), shared_cache), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    assert "defects_config.json" in record["metric_notes"]["spro"]
    assert str(tmp_path / "data" / "box" / "defects_config.json") in record["metric_notes"]["spro"]
    assert "spro_0.3" not in record["metrics"] and "aupro" in record["metrics"]


def test_bad_defects_configs_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps([{"defect_name": "x", "pixel_value": 3}]))
    with pytest.raises(DatasetError, match="each entry needs"):
        read_defects_config(path)
    path.write_text(json.dumps([{**CONFIG[0], "saturation_threshold": 2.0}]))
    with pytest.raises(DatasetError, match=r"relative threshold in \(0, 1\]"):
        read_defects_config(path)


def test_the_synthetic_pinbox_category_writes_its_defects_config(tiny_cfg, tmp_path: Path) -> None:
    record = runner.run(tiny_cfg("model=padim", "dataset.category=pinbox", "profile.enabled=false"), tmp_path / "r")
    assert record["status"] == "ok"
    assert "spro_0.3" in record["metrics_by_kind"]["logical"] and "metric_notes" not in record
