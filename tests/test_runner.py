"""One job end to end: record fields, failure records, resume, the Hydra entry point."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_DATA, compose_config
from ulsad_bench import runner
from ulsad_bench.config import REPO
from ulsad_bench.metrics import image_auroc
from ulsad_bench.records import RECORD_NAME, RunRecord
from ulsad_bench.report.naming import ALL_METRICS, SPRO_METRICS

#: a clean job's record on a LOCO-like category has every field of the schema but those of other
#: cases: a failure's, a protocol's test-set cut, a GPU launcher's, notes on sPRO, SegF1's threshold and
#: the private test sets' export (MVTec AD 2's: tests/test_mvtec_ad2.py)
ABSENT_FROM_A_CLEAN_OK_RECORD = {
    "error",
    "traceback",
    "kept_ok_record",
    "test_subset",
    "selection",
    "metric_notes",
    "segmentation_threshold",
    "submission",
}


def test_record_has_every_field_and_traceable_metrics(tiny_cfg, tmp_path: Path) -> None:
    record = runner.run(tiny_cfg("model=padim", "dataset.category=pinbox"), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    on_disk = json.loads((tmp_path / "run" / RECORD_NAME).read_text())
    fields = set(RunRecord.model_fields)  # the schema names every field a record may have
    assert set(on_disk) == fields - ABSENT_FROM_A_CLEAN_OK_RECORD
    RunRecord.model_validate(on_disk)
    assert on_disk["weights"] == {"policy": "random", "random_init_seed": 0}
    assert set(on_disk["data"]) >= {"train", "val", "test_normal", "test_anomalous"}
    assert set(on_disk["metrics_by_kind"]) == {"logical", "structural"}
    for metrics in [on_disk["metrics"], *on_disk["metrics_by_kind"].values()]:
        assert set(metrics) == {*ALL_METRICS, *SPRO_METRICS}  # pinbox is LOCO-like: it has sPRO too
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert set(on_disk["thresholds"]) == {"image_f1_max", "pixel_f1_max"}
    assert set(on_disk["versions"]) >= {"python", "torch", "torchvision", "anomalib", "package"}
    assert on_disk["hyperparameters"]["n_features"] == 100  # PaDiM paper value for resnet18
    # the image AUROC can be recomputed from the per-image predictions
    with open(tmp_path / "run" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    assert image_auroc(labels, scores) == pytest.approx(on_disk["metrics"]["image_auroc"], abs=1e-6)
    assert (tmp_path / "run" / "maps.npz").is_file()


def test_padim_detects_structural_anomalies(tiny_cfg, tmp_path: Path) -> None:
    record = runner.run(tiny_cfg("model=padim", "dataset.category=texture"), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    assert record["metrics"]["image_auroc"] > 0.8
    assert record["metrics"]["pixel_auroc"] > 0.8


def test_same_seed_same_metrics(tiny_cfg, tmp_path: Path) -> None:
    first = runner.run(tiny_cfg("model=padim", "seed=3"), tmp_path / "a")
    second = runner.run(tiny_cfg("model=padim", "seed=3"), tmp_path / "b")
    assert first["metrics"] == second["metrics"]
    assert first["config_hash"] == second["config_hash"]


def test_failure_writes_a_failed_record(shared_cache: Path, tmp_path: Path) -> None:
    cfg = compose_config(["dataset=mvtec", "backbone=resnet18", "backbone.weights=random", f"cache_dir={shared_cache}"])
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    assert "dataset.root is not set" in record["error"]
    on_disk = json.loads((tmp_path / "run" / RECORD_NAME).read_text())
    assert on_disk["status"] == "failed" and "traceback" in on_disk


def test_resume_skips_a_finished_job(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg("model=padim")
    first = runner.run(cfg, tmp_path / "run")

    def boom(*_args, **_kwargs):
        raise AssertionError("a finished job must not be run again")

    monkeypatch.setattr(runner, "build_model", boom)
    again = runner.run(cfg, tmp_path / "run")
    assert again == json.loads((tmp_path / "run" / RECORD_NAME).read_text())
    assert again["finished"] == first["finished"]


def test_entry_point_writes_record_into_run_dir(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "explicit"
    result = subprocess.run(
        [sys.executable, "run.py", f"hydra.run.dir={out}", "model=padim", f"cache_dir={shared_cache}", *TINY_DATA],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["status"] == "ok"
    assert "[ok] padim synthetic/pinbox seed=0" in result.stdout + result.stderr


def test_model_with_its_own_backbone_needs_no_configured_weights_file(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DFR-like models use backbone.weights as a policy only: a missing resnet18 file is no error."""
    from ulsad_bench.models import backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    seen: dict[str, str] = {}
    resolve = backbone.resolve_weights

    def fake_resolve(name: str, weights: str, *args: object) -> backbone.WeightsInfo:
        seen[name] = weights
        return resolve(name, "random", 0) if name == "vgg19" else resolve(name, weights, *args)

    monkeypatch.setattr(backbone, "resolve_weights", fake_resolve)
    record = runner.run(tiny_cfg("model=dfr", "model.epochs=1", "backbone.weights=imagenet"), tmp_path / "dfr")
    assert record["status"] == "ok", record.get("error")
    assert seen == {"vgg19": "imagenet"}  # only the network DFR runs on is resolved, under the policy
    assert record["backbone"] == "vgg19"
    failed = runner.run(tiny_cfg("model=padim", "backbone.weights=imagenet"), tmp_path / "padim")
    assert failed["status"] == "failed" and "resnet18-5c106cde.pth" in failed["error"]
