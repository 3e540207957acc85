"""Sweeps through Hydra's launchers: parallel, subprocesses, failures isolated, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA
from ulsad_bench import runner
from ulsad_bench.records import RECORD_NAME, find_records
from ulsad_bench.sweep import summarize_sweep

REPO = Path(__file__).resolve().parent.parent


def _multirun(out: Path, cache: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "run.py",
        "-m",
        "model=padim",
        f"output_root={out}",
        f"cache_dir={cache}",
        *TINY_DATA,
        *overrides,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in find_records(out)]


def test_parallel_launcher_runs_jobs_in_processes(shared_cache: Path, tmp_path: Path) -> None:
    result = _multirun(tmp_path / "out", shared_cache, "seed=0,1", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path / "out")
    assert sorted(r["seed"] for r in records) == [0, 1] and all(r["status"] == "ok" for r in records)
    assert "sweep summary: 2 ran, 0 skipped (already done), 0 failed, 0 missing" in result.stdout


def test_submitit_local_launcher_runs_jobs_in_subprocesses(shared_cache: Path, tmp_path: Path) -> None:
    result = _multirun(tmp_path / "out", shared_cache, "seed=3,4", "hydra/launcher=subprocess")
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path / "out")
    assert sorted(r["seed"] for r in records) == [3, 4] and all(r["status"] == "ok" for r in records)
    assert (tmp_path / "out" / ".submitit").is_dir()  # submitit's own job folders


def test_a_failing_job_does_not_stop_the_sweep(shared_cache: Path, tmp_path: Path) -> None:
    result = _multirun(tmp_path / "out", shared_cache, "dataset.category=nonexistent,texture")
    assert result.returncode == 0, result.stderr[-3000:]
    by_category = {r["category"]: r for r in _records(tmp_path / "out")}
    assert by_category["texture"]["status"] == "ok"
    assert by_category["nonexistent"]["status"] == "failed"
    assert "unknown category 'nonexistent'" in by_category["nonexistent"]["error"]
    assert "1 ran, 0 skipped (already done), 1 failed" in result.stdout
    assert "FAILED  synthetic/nonexistent" in result.stdout


def test_interrupted_sweep_rerun_completes_every_record_exactly_once(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seeds = "seed=0,1,2,3"
    command = [
        sys.executable,
        "run.py",
        "-m",
        "model=padim",
        f"output_root={out}",
        f"cache_dir={shared_cache}",
        *TINY_DATA,
        seeds,
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not find_records(out):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # kill the whole sweep half-way
    process.wait()
    first = {p: json.loads(p.read_text()) for p in find_records(out)}
    assert 1 <= len(first) < 4, "the kill should land after the first record and before the last"

    result = _multirun(out, shared_cache, seeds)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = find_records(out)
    assert len(paths) == 4 and sorted(json.loads(p.read_text())["seed"] for p in paths) == [0, 1, 2, 3]
    for path, record in first.items():  # finished jobs were skipped, their records untouched
        assert json.loads(path.read_text())["finished"] == record["finished"]
    assert f"{4 - len(first)} ran, {len(first)} skipped" in result.stdout
    assert not list(out.rglob(".record.json.*.tmp")), "no half-written record left behind"


def test_summary_distinguishes_ran_skipped_failed_missing(tmp_path: Path) -> None:
    since = time.time()
    for name in ("ran", "failed", "missing", "skipped", "other_sweep"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("{}")
    for name, record in {"ran": {"status": "ok"}, "failed": {"status": "failed", "error": "boom"}}.items():
        (tmp_path / name / RECORD_NAME).write_text(json.dumps(record))
    os.utime(tmp_path / "other_sweep" / ".hydra" / "config.yaml", (since - 100, since - 100))
    old = tmp_path / "skipped" / RECORD_NAME
    old.write_text(json.dumps({"status": "ok"}))
    os.utime(old, (since - 100, since - 100))
    outcome = summarize_sweep(tmp_path, since)
    assert outcome == {"ran": ["ran"], "skipped": ["skipped"], "failed": ["failed: boom"], "missing": ["missing"]}


def test_non_finite_loss_stops_with_a_clear_error(tiny_cfg, tmp_path: Path) -> None:
    record = runner.run(
        tiny_cfg("model=ulsad", "model.feature_dim=16", "model.epochs=2", "model.lr=1e30"), tmp_path / "run"
    )
    assert record["status"] == "failed"
    assert "FloatingPointError" in record["error"] and "epoch 1" in record["error"]


def test_wandb_offline_run_is_written_with_metrics(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    record = runner.run(tiny_cfg("model=padim", "logger=wandb"), tmp_path / "run")
    assert record["status"] == "ok"
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"metrics/image_auroc" in log and b"efficiency/throughput_img_s" in log
    assert repr(record["metrics"]["image_auroc"]).encode() in log
    assert list((runs[0] / "files" / "media" / "images").glob("anomaly_maps_*.png"))


@pytest.mark.parametrize("bad", ["unreadable", "mask_size"])
def test_bad_input_fails_the_job_naming_the_file(tmp_path: Path, bad: str, shared_cache: Path) -> None:
    import numpy as np
    from PIL import Image

    from tests.conftest import compose_config

    root = tmp_path / "data" / "bottle"
    for split, name in (("train/good", f"{i}.png") for i in range(3)):
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(root / split / name)
    (root / "test" / "good").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(root / "test" / "good" / "0.png")
    (root / "test" / "dent").mkdir(parents=True)
    (root / "ground_truth" / "dent").mkdir(parents=True)
    bad_image = root / "test" / "dent" / "0.png"
    Image.fromarray(np.full((32, 32, 3), 10, np.uint8)).save(bad_image)
    Image.fromarray(np.zeros((32 if bad == "unreadable" else 30, 32), np.uint8)).save(
        root / "ground_truth" / "dent" / "0_mask.png"
    )
    if bad == "unreadable":
        bad_image.write_bytes(b"\x89PNG broken")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / RECORD_NAME).write_text('{"status": "ok"}')
    cfg = compose_config(
        [
            "dataset=mvtec",
            f"dataset.root={root.parent}",
            "dataset.category=bottle",
            "dataset.categories=[bottle]",
            "dataset.image_size=32",
            "backbone=resnet18",
            "backbone.weights=random",
            "model=padim",
            f"cache_dir={shared_cache}",
            "progress=false",
        ]
    )
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    assert str(bad_image if bad == "unreadable" else root / "ground_truth" / "dent" / "0_mask.png") in record["error"]
    assert (earlier / RECORD_NAME).read_text() == '{"status": "ok"}'


def test_make_sweep_covers_every_category_model_and_seed(shared_cache: Path, tmp_path: Path) -> None:
    from ulsad_bench.sweep import main, sweep_command

    command = sweep_command({"dataset": "synthetic", "models": "padim,ulsad", "seeds": "0,1", "n_jobs": "3"}, [])
    assert "dataset.category=texture,pinbox" in command and "model=padim,ulsad" in command
    assert "hydra/launcher=parallel" in command and "hydra.launcher.n_jobs=3" in command
    out = tmp_path / "results"
    code = main(
        [
            "dataset=synthetic",
            "models=padim",
            "seeds=0",
            f"results={out}",
            "--",
            f"cache_dir={shared_cache}",
            *TINY_DATA,
        ]
    )
    assert code == 0
    assert sorted(r["category"] for r in _records(out)) == ["pinbox", "texture"]


def test_category_all_expands_into_a_multirun() -> None:
    from ulsad_bench.sweep import expand_all_categories

    assert expand_all_categories(["dataset=mvtec_loco", "dataset.category=all", "seed=0"]) == [
        "-m",
        "dataset=mvtec_loco",
        "dataset.category=breakfast_box,juice_bottle,pushpins,screw_bag,splicing_connectors",
        "seed=0",
    ]
    assert expand_all_categories(["-m", "dataset.category=all"]) == ["-m", "dataset.category=texture,pinbox"]
    assert expand_all_categories(["seed=1"]) == ["seed=1"]
