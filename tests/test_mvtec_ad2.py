"""MVTec AD 2 (issue 27): its published layout read and checked, its official metrics in every record
(AU-PRO at FPR 0.05 and 0.3, SegF1 at the validation threshold), the private test sets exported as the
evaluation server takes them and assembled into one checked submission, its tables and its sweep."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import TINY_AD2_SIZES, mvtec_cfg, tiny_mvtec_ad2
from ulsad_bench import metrics, runner, submission
from ulsad_bench.data.__main__ import main as check_main
from ulsad_bench.records import RunRecord, summary_line

#: ULSAD as small as a test can train it (image size 32: a multiple of 32)
TINY_ULSAD = ["model.feature_dim=16", "model.epochs=1", "model.batch_size=4"]
#: (model, category, overrides): two PaDiM jobs to assemble a submission from, one ULSAD job
JOBS = (("padim", "can", []), ("padim", "fabric", []), ("ulsad", "can", TINY_ULSAD))
SPLITS = ("test_private", "test_private_mixed")


def _config(root: Path, cache: Path, model: str, category: str, *overrides: str):
    return mvtec_cfg(root, cache, f"model={model}", *overrides, dataset="mvtec_ad2", category=category)


@pytest.fixture(scope="module")
def ad2_jobs(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny MVTec AD 2 and the records of :data:`JOBS`, run once for this module."""
    base = tmp_path_factory.mktemp("ad2")
    root = tiny_mvtec_ad2(base / "MVTec AD 2")
    results = base / "results"
    records = {}
    for model, category, overrides in JOBS:
        run_dir = results / "mvtec_ad2" / category / model / "seed=0"
        records[(model, category)] = runner.run(_config(root, shared_cache, model, category, *overrides), run_dir)
    return {"root": root, "results": results, "records": records}


# ----------------------------------------------------------------------------- the dataset check


def _check(capsys: pytest.CaptureFixture[str], root: Path) -> tuple[int, list[dict], str]:
    code = check_main(
        ["dataset=mvtec_ad2", f"dataset.root={root}", "dataset.category=all", "dataset.categories=[can,fabric]"]
    )
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_dataset_check_counts_every_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = _check(capsys, tiny_mvtec_ad2(tmp_path, n_private=4))
    assert code == 0, err
    assert [line["category"] for line in lines] == ["can", "fabric"]
    counts = {k: lines[0][k] for k in ("train", "val", "test_normal", "test_anomalous", *SPLITS)}
    assert counts == {
        "train": 8,
        "val": 3,
        "test_normal": 3,
        "test_anomalous": 3,
        "test_private": 4,
        "test_private_mixed": 4,
    }
    assert lines[0]["val_source"] == "validation folder" and lines[0]["path"] == str(tmp_path / "can")
    assert lines[0]["anomalous_pixel_fraction"] > 0


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "missing mask",
            r"no ground-truth mask for anomalous image .*fabric/test_public/bad/001_regular\.png: looked for "
            r".*fabric/test_public/ground_truth/bad/001_regular_mask\.png",
        ),
        ("missing private set", r"missing folder .*fabric/test_private_mixed: expected the test_private_mixed images"),
        ("missing validation", r"missing folder .*fabric/validation/good: expected normal validation images"),
    ],
)
def test_dataset_check_refuses_a_wrong_layout_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str, message: str
) -> None:
    root = tiny_mvtec_ad2(tmp_path)
    fabric = root / "fabric"
    if fault == "missing mask":
        (fabric / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png").unlink()
    elif fault == "missing private set":
        shutil.rmtree(fabric / "test_private_mixed")
    else:
        shutil.rmtree(fabric / "validation")
    code, lines, err = _check(capsys, root)
    assert code == 1 and [line["category"] for line in lines] == ["can"]  # the complete category is reported
    assert "dataset error (mvtec_ad2/fabric)" in err and re.search(message, err), err


# ----------------------------------------------------------------------------- the official metrics


@pytest.mark.parametrize("model", ["padim", "ulsad"])
def test_a_job_records_au_pro_at_both_limits_and_seg_f1(ad2_jobs: dict[str, Any], model: str) -> None:
    record = ad2_jobs["records"][(model, "can")]
    assert record["status"] == "ok", record.get("error")
    RunRecord.model_validate(record)
    found = record["metrics"]
    assert {"aupro", "aupro_0.05", "seg_f1"} <= set(found) and all(0 <= v <= 1 for v in found.values())
    assert found["aupro_0.05"] != found["aupro"]  # two limits of one curve, not one value twice
    threshold = record["segmentation_threshold"]
    assert threshold["source"] == "validation folder" and threshold["images"] == 3
    assert threshold["value"] == pytest.approx(threshold["mean"] + 3 * threshold["std"])
    assert record["thresholds"]["seg_f1"] == threshold["value"]
    assert record["config"]["metrics"] == {"pro_limits": [0.05, 0.3], "seg_f1": True}
    assert "AUPRO@0.05" in summary_line(record) and "SegF1" in summary_line(record)


def test_models_without_a_validation_split_still_train_on_every_image(ad2_jobs: dict[str, Any]) -> None:
    padim, ulsad = ad2_jobs["records"][("padim", "can")], ad2_jobs["records"][("ulsad", "can")]
    assert padim["data"]["train"] == 8 and padim["data"]["val"] == 0 and padim["data"]["threshold"] == 3
    assert ulsad["data"]["val"] == 3 and ulsad["val_source"] == "validation folder"
    assert padim["data_fingerprint"]["splits"]["threshold"]["files"] == 3  # read in addition: in the fingerprint
    assert "threshold" not in ulsad["data_fingerprint"]["splits"]  # the validation split itself, listed once


def test_the_threshold_images_are_never_test_images(tmp_path: Path, shared_cache: Path) -> None:
    """On a dataset without a validation folder (MVTec AD) the threshold comes from the hold-out of a
    model that uses one; a model that trains on every image gets none, and the record says why."""
    from tests.conftest import tiny_mvtec
    from ulsad_bench.data import build_splits

    root = tiny_mvtec(tmp_path / "mvtec")
    dataset = mvtec_cfg(root, shared_cache, "metrics.seg_f1=true").dataset
    held_out = build_splits(dataset, shared_cache, uses_validation=True, threshold=True)
    assert held_out.threshold == held_out.val and held_out.threshold_source.startswith("the validation split")
    assert not set(held_out.threshold) & set(held_out.train)
    every_image = build_splits(dataset, shared_cache, uses_validation=False, threshold=True)
    assert every_image.threshold == [] and "never taken from test images" in every_image.threshold_source
    record = runner.run(mvtec_cfg(root, shared_cache, "metrics.seg_f1=true"), tmp_path / "padim")
    assert record["status"] == "ok" and "seg_f1" not in record["metrics"]
    assert record["metric_notes"]["seg_f1"].startswith("not computed: no threshold images (none: no validation folder")


def test_au_pro_at_several_limits_is_one_curve() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 16, 16), bool)
    masks[1, 2:6, 3:9] = masks[2, 10:14, 10:12] = True
    maps = rng.random((4, 16, 16)) + 0.6 * masks
    found, _ = metrics.score_test_set(
        np.array([0, 1, 1, 0]), maps.max(axis=(1, 2)), masks, maps, 0.3, None, (), (0.05, 0.3, 1.0)
    )
    assert found["aupro"] == metrics.aupro(masks, maps, 0.3)
    assert found["aupro_0.05"] == metrics.aupro(masks, maps, 0.05) and found["aupro_1"] == metrics.aupro(
        masks, maps, 1.0
    )
    assert metrics.pro_key(0.3) == "aupro" and metrics.pro_key(0.05) == "aupro_0.05"
    with pytest.raises(ValueError, match=r"metrics.pro_limits=\[0.05, 0\]: \[0\] outside \(0, 1\]"):
        metrics.check_pro_limits([0.05, 0])


def test_seg_f1_pools_every_pixel_at_mean_plus_three_std() -> None:
    validation = np.array([[[0.0, 1.0], [1.0, 2.0]]])  # mean 1, std sqrt(0.5)
    threshold = metrics.segmentation_threshold(validation)
    assert threshold.value == pytest.approx(1 + 3 * np.sqrt(0.5)) and threshold.pixels == 4
    masks = np.array([[[True, False], [False, False]], [[True, True], [False, False]]])
    maps = np.array([[[5.0, 5.0], [0.0, 0.0]], [[5.0, 0.0], [0.0, 0.0]]])
    # predicted 3, true 3, both 2: F1 = 2 * 2 / (3 + 3)
    assert metrics.seg_f1(masks, maps, threshold.value) == pytest.approx(4 / 6)
    assert metrics.seg_f1(masks, np.zeros_like(maps), 1.0) == 0.0


def test_a_bad_metrics_setting_is_refused_by_name(shared_cache: Path, tmp_path: Path) -> None:
    root = tiny_mvtec_ad2(tmp_path / "data")
    record = runner.run(_config(root, shared_cache, "padim", "can", "metrics.pro_limits=[0.05,1.5]"), tmp_path / "r")
    assert record["status"] == "failed" and "metrics.pro_limits=[0.05, 1.5]: [1.5] outside (0, 1]" in record["error"]


# ----------------------------------------------------------------------------- the private test sets


@pytest.mark.parametrize(("model", "category"), [(m, c) for m, c, _ in JOBS])
def test_private_maps_are_float16_tiffs_at_the_source_size(ad2_jobs: dict[str, Any], model: str, category: str) -> None:
    record = ad2_jobs["records"][(model, category)]
    folder = Path(record["submission"]["folder"])
    assert folder == ad2_jobs["results"] / "mvtec_ad2" / category / model / "seed=0" / "submission"
    width, height = TINY_AD2_SIZES[category]
    for split in SPLITS:
        assert record["submission"]["sets"][split] == {"images": 3}
        tiffs = sorted((folder / "anomaly_images" / category / split).iterdir())
        pngs = sorted((folder / "anomaly_images_thresholded" / category / split).iterdir())
        suffix = "regular" if split == "test_private" else "mixed"
        assert [p.name for p in tiffs] == [f"{i:03d}_{suffix}.tiff" for i in range(3)]
        assert [p.name for p in pngs] == [f"{i:03d}_{suffix}.png" for i in range(3)]
        for tiff, png in zip(tiffs, pngs, strict=True):
            anomaly = tifffile.imread(tiff)
            assert anomaly.dtype == np.float16 and anomaly.shape == (height, width)
            assert np.isfinite(anomaly).all()
            mask = np.asarray(Image.open(png))
            assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
            threshold = record["submission"]["thresholded"]["threshold"]
            assert ((anomaly.astype(np.float32) >= threshold) == (mask == 255)).mean() > 0.98  # float16 rounding


def test_export_puts_a_cropped_map_back_in_its_frame_and_scales_into_float16() -> None:
    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    framed = submission.full_frame(maps, 6)
    assert framed.shape == (2, 6, 6) and (framed[:, 1:5, 1:5] == maps).all()
    assert framed[0, 0, 0] == 0 and framed[1, 5, 5] == 16  # the border: each map's lowest value
    assert submission.float16_scale([np.array([1e6])]) == 2.0**-5  # 1e6 * 2^-5 = 31250, in [2^14, 2^15)
    assert submission.float16_scale([np.array([3.0, -2.0])]) == 1.0
    assert submission.float16_scale([np.array([1e-4])]) == 2.0**28  # 1e-4 * 2^28 = 26844


# ----------------------------------------------------------------------------- one submission


def _assemble(capsys: pytest.CaptureFixture[str], results: Path, *extra: str) -> tuple[int, str]:
    code = submission.main([str(results), "--model", "padim", "--seed", "0", *extra])
    out, err = capsys.readouterr()
    return code, out + err


def test_assembled_submission_passes_the_official_checks(
    ad2_jobs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "padim-seed=0"
    code, text = _assemble(capsys, ad2_jobs["results"], "--counts", "records", "--out", str(out))
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["anomaly_images", "anomaly_images_thresholded"]
    assert sorted(p.name for p in (out / "anomaly_images").iterdir()) == ["can", "fabric"]
    sources = json.loads((tmp_path / "padim-seed=0.sources.json").read_text())
    assert set(sources) == {"can", "fabric"}
    # against the official counts: six categories have no job, the two here have 3 images, not 321 / 314
    code, text = _assemble(capsys, ad2_jobs["results"], "--out", str(tmp_path / "official"))
    assert code == 1 and "no ok record of padim seed 0 on mvtec_ad2/walnuts" in text
    assert re.search(r"missing files in .*anomaly_images/can/test_private: 003_regular\.tiff", text), text
    # a float32 map, as the issue first asked, is refused as the official checker refuses it
    tifffile.imwrite(out / "anomaly_images" / "can" / "test_private" / "001_regular.tiff", np.zeros((2, 2), np.float32))
    (out / "anomaly_images" / "notes.txt").write_text("")
    problems = submission.check_submission(out, {c: dict.fromkeys(SPLITS, 3) for c in ("can", "fabric")})
    assert any(re.search(r"can/test_private/001_regular\.tiff is float32, not float16", p) for p in problems)
    assert any("superfluous files in" in p and "notes.txt" in p for p in problems)


def test_assembling_refuses_a_missing_map_by_name(
    ad2_jobs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    shutil.copytree(ad2_jobs["results"], results)
    job = results / "mvtec_ad2" / "fabric" / "padim" / "seed=0" / "submission"
    (job / "anomaly_images" / "fabric" / "test_private_mixed" / "002_mixed.tiff").unlink()
    code, text = _assemble(capsys, results, "--counts", "records")
    assert code == 1
    assert re.search(r"missing files in .*anomaly_images/fabric/test_private_mixed: 002_mixed\.tiff", text), text
    code, text = _assemble(capsys, results, "--counts", "records")
    assert code == 2 and "exists and is not empty" in text and "--replace" in text
    with pytest.raises(SystemExit):  # argparse's refusal, naming the option and the form
        submission.main([str(results), "--model", "padim", "--seed", "0", "--config", "dataset.image_size"])
    assert "--config 'dataset.image_size': expected KEY=VALUE" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tables and sweeps


def test_tables_of_mvtec_ad2_lead_with_its_official_metrics(ad2_jobs: dict[str, Any], tmp_path: Path) -> None:
    from ulsad_bench.report.build import build_report

    report = build_report(ad2_jobs["results"], tmp_path / "reports", figures=False)
    text = (report.out / "metrics_mvtec_ad2.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    assert re.match(r"\| Method \| AUPRO@0.05 \| AUPRO@0.3 \| SegF1 \| I-AUROC \|", header), header
    assert "MVTec AD 2's official metrics first" in text
    assert report.table("extended_mvtec_ad2_aupro_0.05") is not None
    assert report.table("extended_mvtec_ad2_seg_f1") is not None
    efficiency = (report.out / "table04_efficiency_mvtec_ad2.md").read_text()
    rows = [line.split("|")[1].strip() for line in efficiency.splitlines() if line.startswith("| ") and "↑" in line]
    assert rows[:4] == ["AUPRO@0.05 ↑", "AUPRO@0.3 ↑", "SegF1 ↑", "I-AUROC ↑"], rows


def test_sweep_plans_and_preflights_mvtec_ad2(
    ad2_jobs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shared_cache: Path
) -> None:
    import types

    from ulsad_bench import sweep

    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may be launched: {args}")

    monkeypatch.setattr(sweep, "subprocess", types.SimpleNamespace(run=refuse, Popen=refuse))
    root = ad2_jobs["root"]
    own = ["dataset=mvtec_ad2", f"root={root}", "models=padim,ulsad", "seeds=0", "categories=can,fabric"]
    extra = ["dataset.image_size=32", "backbone=resnet18", "backbone.weights=random", f"cache_dir={shared_cache}"]
    assert sweep.main([*own, "results=" + str(ad2_jobs["results"]), "plan=1", "--", *extra]) == 0
    out = capsys.readouterr().out
    assert "4 jobs = model (2) x dataset.category (2) x seed (1)" in out, out
    assert sweep.preflight(sweep.parse_arguments(own), extra, ["can", "fabric"]) == []
    (root / "can" / "test_public" / "ground_truth" / "bad" / "002_regular_mask.png").rename(root / "moved.png")
    try:
        (problem,) = sweep.preflight(sweep.parse_arguments(own), extra, ["can", "fabric"])
    finally:
        (root / "moved.png").rename(root / "can" / "test_public" / "ground_truth" / "bad" / "002_regular_mask.png")
    assert problem.startswith("dataset mvtec_ad2/can: no ground-truth mask") and "002_regular_mask.png" in problem
