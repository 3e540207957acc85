"""Records you can trust: a failed attempt never replaces an ok record, one definition of the keys
that do not change results, resume that notices changed data and code, schema-checked reading,
per-job locks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tests.conftest import TINY_DATA, compose_config, mvtec_cfg, tiny_mvtec
from ulsad_bench import job_record, runner
from ulsad_bench.config import NON_RESULT_KEYS, REPO, compose, run_subdir
from ulsad_bench.records import ATTEMPTS_DIR, RECORD_NAME, config_hash, find_records, inspect_record
from ulsad_bench.records import main as records_main
from ulsad_bench.report.load import experiment_config, load_results


def _bytes(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in (RECORD_NAME, "predictions.csv", "maps.npz")}


# ----------------------------------------------------------------------------- failed attempts


def test_failed_rerun_keeps_the_ok_record_and_its_files(tiny_cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = runner.run(tiny_cfg("model=padim"), run_dir)
    assert first["status"] == "ok"
    before = _bytes(run_dir)

    # which device of a type is not a result: the same job on another CPU index is already done
    skipped = runner.run(tiny_cfg("model=padim", "device=cpu:0"), run_dir)
    assert skipped["finished"] == first["finished"] and _bytes(run_dir) == before

    # the device type is: asked to run on a CUDA device this machine does not have, the attempt fails
    failed = runner.run(tiny_cfg("model=padim", "device=cuda:0"), run_dir)
    assert failed["status"] == "failed" and "CUDA is not available" in failed["error"]
    assert _bytes(run_dir) == before, "the ok record, predictions and maps are untouched"
    attempts = list((run_dir / ATTEMPTS_DIR).glob(f"*/{RECORD_NAME}"))
    assert len(attempts) == 1 and json.loads(attempts[0].read_text())["status"] == "failed"
    assert not list((run_dir / ATTEMPTS_DIR).glob("*/predictions.csv"))

    results = load_results(tmp_path)  # the report uses the ok record and lists the failed attempt
    assert len(results.ok) == 1 and results.ok.iloc[0]["path"] == str(run_dir / RECORD_NAME)
    assert results.failed["status"].tolist() == ["failed attempt"]
    assert "CUDA is not available" in results.failed.iloc[0]["error"]

    # an ok re-run replaces the record, removes files it did not write and the superseded attempts
    again = runner.run(tiny_cfg("model=padim", "resume=false", "save_maps_per_defect=0"), run_dir)
    assert again["status"] == "ok" and again["finished"] >= first["finished"]
    assert not (run_dir / "maps.npz").exists() and not (run_dir / ATTEMPTS_DIR).exists()
    assert json.loads((run_dir / RECORD_NAME).read_text())["started"] == again["started"]


def test_a_failure_without_an_earlier_ok_record_is_the_record(shared_cache: Path, tmp_path: Path) -> None:
    cfg = compose_config(["dataset=mvtec", "backbone=resnet18", "backbone.weights=random", f"cache_dir={shared_cache}"])
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    on_disk = json.loads((tmp_path / "run" / RECORD_NAME).read_text())
    assert on_disk["status"] == "failed" and not (tmp_path / "run" / ATTEMPTS_DIR).exists()


# ----------------------------------------------------------------------------- one definition of non-result keys

NON_RESULT_OVERRIDES = {
    "output_root": "output_root=/elsewhere",
    "cache_dir": "cache_dir=/elsewhere",
    "dataset.root": "dataset.root=/elsewhere",
    "logger": "logger=wandb",
    "progress": "progress=false",
    "resume": "resume=config",
    "fail_fast": "fail_fast=true",
    "cache": "cache.max_gb=1",
    "device": "device=cpu",
    "profile": "profile.timed_batches=3",
    "save_maps_per_defect": "save_maps_per_defect=5",
}
RESULT_OVERRIDES = ["backbone=resnet50", "model.n_features=50", "dataset.image_size=64", "precision=bf16"]


def _three_views(overrides: list[str]) -> tuple[str, str, str]:
    """(config hash, run folder, report experiment key) of the default job with ``overrides``."""
    cfg = compose(["seed=1", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    folder = str(Path(str(cfg.hydra.run.dir)).relative_to(str(cfg.output_root)))
    config = OmegaConf.to_container(compose(["seed=1", *overrides]), resolve=True)
    return config_hash(config), folder, json.dumps(experiment_config(config), sort_keys=True, default=str)


def test_hash_folder_and_report_agree_on_which_keys_change_results() -> None:
    assert set(NON_RESULT_OVERRIDES) == set(NON_RESULT_KEYS) - {"hydra"}  # every exempt key is exercised
    base = _three_views([])
    for key, override in NON_RESULT_OVERRIDES.items():
        views = _three_views([override])
        assert views == base, f"{key} ({override}) must change none of hash, folder, report key"
    for override in RESULT_OVERRIDES:
        views = _three_views([override])
        assert all(v != b for v, b in zip(views, base, strict=True)), f"{override} must change all three"
    assert run_subdir(["seed=3", "model=ulsad", "+experiment=x", "device=cpu", "profile.enabled=false"]) == ""


# ----------------------------------------------------------------------------- resume compares data and versions


def test_resume_reruns_when_the_data_or_the_code_changed(
    tmp_path: Path, shared_cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tiny_mvtec(tmp_path / "data")
    run_dir = tmp_path / "run"
    first = runner.run(mvtec_cfg(root, shared_cache), run_dir)
    assert first["status"] == "ok" and first["data_fingerprint"]["splits"]["test"]["files"] == 4 + 3 + 3
    assert runner.run(mvtec_cfg(root, shared_cache), run_dir)["finished"] == first["finished"]  # unchanged: skip

    (root / "bottle" / "test" / "good" / "3.png").unlink()
    with caplog.at_level(logging.INFO, logger="ulsad_bench"):
        assert runner.run(mvtec_cfg(root, shared_cache, "resume=config"), run_dir)["finished"] == first["finished"]
        second = runner.run(mvtec_cfg(root, shared_cache), run_dir)
    assert second["started"] != first["started"] and second["data"]["test_normal"] == 3
    assert "data changed: test: 1 file removed (10 -> 9 files)" in caplog.text

    caplog.clear()
    real = job_record.versions  # the record's header notes the versions
    monkeypatch.setattr(job_record, "versions", lambda cls=None: {**real(cls), "torch": "0.0.1"})
    with caplog.at_level(logging.INFO, logger="ulsad_bench"):
        third = runner.run(mvtec_cfg(root, shared_cache), run_dir)
    assert third["started"] != second["started"] and third["versions"]["torch"] == "0.0.1"
    assert f"versions changed: torch {real()['torch']} -> 0.0.1" in caplog.text
    assert runner.run(mvtec_cfg(root, shared_cache), run_dir)["finished"] == third["finished"]

    fourth = runner.run(mvtec_cfg(root, shared_cache, "resume=false"), run_dir)
    assert fourth["started"] != third["started"]


def test_a_record_from_a_dirty_tree_is_marked(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = job_record.versions
    monkeypatch.setattr(job_record, "versions", lambda cls=None: {**real(cls), "git": "abc1234-dirty"})
    record = runner.run(tiny_cfg("model=padim"), tmp_path / "out" / "run")
    assert record["status"] == "ok"
    from ulsad_bench.records import summary_line
    from ulsad_bench.report import build_report

    assert "DIRTY git tree" in summary_line(record)
    report = build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    assert report.results.dirty and "abc1234-dirty" in report.results.dirty[0]
    index = (tmp_path / "reports" / "README.md").read_text()
    assert "Records made from uncommitted code" in index
    assert any("UNCOMMITTED CODE" in w for t in report.tables for w in t.warnings)


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ('{"status": "ok"}', "malformed"),
        ("[1, 2]", "malformed: expected a JSON object"),
        ("{not json", "unreadable"),
    ],
)
def test_malformed_records_are_listed_never_counted(
    tiny_cfg, tmp_path: Path, capsys: pytest.CaptureFixture, payload: str, problem: str
) -> None:
    good = runner.run(tiny_cfg("model=padim"), tmp_path / "out" / "good")
    bad = tmp_path / "out" / "bad" / RECORD_NAME
    bad.parent.mkdir(parents=True)
    bad.write_text(payload)
    assert inspect_record(bad).record is None and inspect_record(bad).problem.startswith(problem)

    without_metrics = {k: v for k, v in good.items() if k != "metrics"}
    (tmp_path / "out" / "nometrics").mkdir()
    (tmp_path / "out" / "nometrics" / RECORD_NAME).write_text(json.dumps(without_metrics))
    assert "status ok without metrics" in str(inspect_record(tmp_path / "out" / "nometrics" / RECORD_NAME).problem)

    assert records_main([str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert (
        printed.count("[malformed]") == 2 and "3 records under" in printed and "(2 malformed or unreadable)" in printed
    )
    results = load_results(tmp_path / "out")
    assert len(results.ok) == 1
    assert sorted(results.failed["path"]) == sorted([str(bad), str(tmp_path / "out" / "nometrics" / RECORD_NAME)])


# ----------------------------------------------------------------------------- locks

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ulsad_bench.joblock import JobLock
    lock = JobLock(Path(sys.argv[1]))
    assert lock.acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_job_held_by_a_live_process_is_left_to_it(tiny_cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        record = runner.run(tiny_cfg("model=padim"), run_dir)
        assert record["status"] == "locked" and record["holder"]["pid"] == holder.pid
        assert not (run_dir / RECORD_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
    record = runner.run(tiny_cfg("model=padim"), run_dir)  # the holder died: its lock file is taken over
    assert record["status"] == "ok" and not (run_dir / ".lock").exists()


def test_a_lock_file_left_by_a_dead_process_is_taken_over(
    tiny_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "since": "2026-01-01T00:00:00"}))
    with caplog.at_level(logging.INFO, logger="ulsad_bench"):
        record = runner.run(tiny_cfg("model=padim"), run_dir)
    assert record["status"] == "ok"
    assert "took over the lock left by pid 999999 on gone" in caplog.text


def test_two_identical_sweeps_at_once_run_each_job_once(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable,
        "run.py",
        "-m",
        "model=padim",
        "seed=0,1,2",
        f"output_root={out}",
        f"cache_dir={shared_cache}",
        *TINY_DATA,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweeps = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)]
    time.sleep(0.5)
    sweeps.append(
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    )
    outputs = [s.communicate(timeout=600)[0] for s in sweeps]
    assert all(s.returncode == 0 for s in sweeps), outputs
    ran = []
    for text in outputs:
        line = next(li for li in text.splitlines() if li.startswith("sweep summary:"))
        ran.append(int(line.split()[2]))
    assert sum(ran) == 3, outputs  # each job ran in exactly one of the two sweeps
    records = [json.loads(p.read_text()) for p in find_records(out)]
    assert sorted(r["seed"] for r in records) == [0, 1, 2] and all(r["status"] == "ok" for r in records)
