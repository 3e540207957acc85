"""Sweeps through Hydra's launchers: parallel, subprocesses, failures isolated, resume after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA
from ulsad_bench import runner
from ulsad_bench.config import REPO
from ulsad_bench.outcomes import summarize_sweep
from ulsad_bench.records import RECORD_NAME, find_records


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
    # one progress line per job, from joblib's worker processes: they count this sweep's outcome files (two
    # jobs ending at once may both count 2)
    progress = [line.split(",")[0] for line in result.stdout.splitlines() if line.startswith("[sweep] ")]
    assert len(progress) == 2 and "[sweep] 2/2 done" in progress, result.stdout[-3000:]
    assert set(progress) <= {"[sweep] 1/2 done", "[sweep] 2/2 done"}


def test_submitit_local_launcher_runs_jobs_in_subprocesses(shared_cache: Path, tmp_path: Path) -> None:
    result = _multirun(tmp_path / "out", shared_cache, "seed=3,4", "hydra/launcher=subprocess")
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path / "out")
    assert sorted(r["seed"] for r in records) == [3, 4] and all(r["status"] == "ok" for r in records)
    assert (tmp_path / "out" / ".submitit").is_dir()  # submitit's own job folders


def test_a_failing_job_does_not_stop_the_sweep(shared_cache: Path, tmp_path: Path) -> None:
    result = _multirun(tmp_path / "out", shared_cache, "dataset.category=nonexistent,texture")
    assert result.returncode == 1, result.stderr[-3000:]  # the sweep ran on, then reports the failure
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


def test_summary_distinguishes_ran_skipped_failed_missing_and_busy(tmp_path: Path, monkeypatch) -> None:
    from ulsad_bench.outcomes import SWEEP_ID_ENV, write_outcome

    monkeypatch.setenv(SWEEP_ID_ENV, "this")
    for name in ("ran", "failed", "missing", "skipped", "busy"):
        write_outcome(tmp_path / name, "started")
    write_outcome(tmp_path / "ran", "ran")
    write_outcome(tmp_path / "failed", "failed", "boom")
    write_outcome(tmp_path / "skipped", "skipped", "same config hash")
    write_outcome(tmp_path / "busy", "locked", "pid 7 on host")  # "missing" stays "started": it was killed
    monkeypatch.setenv(SWEEP_ID_ENV, "another")
    write_outcome(tmp_path / "other_sweep", "started")  # another sweep's jobs are not this sweep's
    write_outcome(tmp_path / "ran", "started")
    outcome = summarize_sweep(tmp_path, "this")
    assert outcome == {
        "ran": ["ran"],
        "skipped": ["skipped"],
        "failed": ["failed: boom"],
        "missing": ["missing"],
        "locked": ["busy: pid 7 on host"],
    }


def test_a_failed_attempt_beside_an_ok_record_counts_as_failed_in_the_sweep(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _multirun(out, shared_cache, "seed=0").returncode == 0
    result = _multirun(out, shared_cache, "seed=0", "device=cuda:0", "resume=false")
    assert result.returncode == 1
    assert "0 ran, 0 skipped (already done), 1 failed" in result.stdout
    assert "the ok record is kept" in result.stdout
    assert sorted(r["status"] for r in _records(out)) == ["failed", "ok"]  # the kept record and the attempt


def test_non_finite_loss_stops_with_a_clear_error(tiny_cfg, tmp_path: Path) -> None:
    # loss weights within their range (>= 0) whose terms overflow float32 (a learning rate that large is refused)
    overflow = ["model.lambda_l=1e38", "model.lambda_g=1e38"]
    record = runner.run(tiny_cfg("model=ulsad", "model.feature_dim=16", "model.epochs=2", *overflow), tmp_path / "run")
    assert record["status"] == "failed"
    # read once per epoch on the device (models/training.py): stopped at the end of the epoch, epoch and step named
    assert re.search(r"FloatingPointError: ulsad: training loss not finite at epoch \d, step \d", record["error"])
    assert "lr 0.0002, batch size 8" in record["error"] and "fit" not in record


class FakeRun:
    def __init__(self, calls: dict) -> None:
        self.calls = calls
        self.summary: dict = {}

    def log(self, metrics: dict) -> None:
        self.calls["log"] = metrics

    def finish(self) -> None:
        self.calls["finished"] = True
        self.calls["summary"] = self.summary


def _fake_wandb(calls: dict):
    import types

    module = types.ModuleType("wandb")
    module.Settings = lambda **kw: kw
    module.Image = lambda data, caption=None: ("image", data.shape, caption)

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun(calls)

    module.init = init
    return module


def test_wandb_logger_sends_what_the_record_holds(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    record = runner.run(tiny_cfg("model=padim", "logger=wandb"), tmp_path / "run")
    assert record["status"] == "ok"
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path / "run")
    assert calls["init"]["config"] == record["config"] and calls["init"]["tags"][-1] == "random"
    assert "WANDB_MODE" not in os.environ  # the mode goes to wandb.init, not into the environment
    logged = calls["log"]
    assert logged["metrics/image_auroc"] == record["metrics"]["image_auroc"]
    assert logged["logical/aupro"] == record["metrics_by_kind"]["logical"]["aupro"]
    assert logged["efficiency/throughput_img_s"] == record["efficiency"]["throughput_img_s"]
    assert [image[1] for image in logged["anomaly_maps"]] == [(64, 192, 3)] * 3  # image | mask | map panels
    assert calls["finished"] and calls["summary"]["status"] == "ok"


def test_a_failing_tracker_never_fails_the_job(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    calls: dict = {}
    fake = _fake_wandb(calls)
    fake.init = lambda **kwargs: (_ for _ in ()).throw(ConnectionError("no network"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    record = runner.run(tiny_cfg("model=padim", "logger=wandb"), tmp_path / "run")
    assert record["status"] == "ok" and json.loads((tmp_path / "run" / RECORD_NAME).read_text())["status"] == "ok"


def test_wandb_offline_run_is_written_with_metrics(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    """One real offline run, read only after wandb's service has flushed it (``wandb.teardown``)."""
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    record = runner.run(tiny_cfg("model=padim", "logger=wandb"), tmp_path / "run")
    assert record["status"] == "ok"
    wandb.teardown()  # run.finish() may return before the service process has written the run file
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

    from tests.conftest import mvtec_cfg

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
    cfg = mvtec_cfg(root.parent, shared_cache)
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    assert str(bad_image if bad == "unreadable" else root / "ground_truth" / "dent" / "0_mask.png") in record["error"]
    assert (earlier / RECORD_NAME).read_text() == '{"status": "ok"}'


def test_make_sweep_covers_every_category_model_and_seed(shared_cache: Path, tmp_path: Path) -> None:
    from ulsad_bench.launch import sweep_command
    from ulsad_bench.sweep import main

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
    from ulsad_bench.categories import expand_all_categories

    assert expand_all_categories(["dataset=mvtec_loco", "dataset.category=all", "seed=0"]) == [
        "-m",
        "dataset=mvtec_loco",
        "dataset.category=breakfast_box,juice_bottle,pushpins,screw_bag,splicing_connectors",
        "seed=0",
    ]
    assert expand_all_categories(["-m", "dataset.category=all"]) == ["-m", "dataset.category=texture,pinbox"]
    assert expand_all_categories(["seed=1"]) == ["seed=1"]


def test_category_all_follows_the_dataset_an_experiment_preset_chooses() -> None:
    from ulsad_bench.categories import expand_all_categories

    expanded = expand_all_categories(["+experiment=fig7_backbones", "dataset.category=all", "seed=0,1"])
    assert expanded[expanded.index("+experiment=fig7_backbones") + 1].startswith("dataset.category=breakfast_box,")
    with pytest.raises(ValueError, match="run one multirun per dataset"):
        expand_all_categories(["dataset=mvtec,visa", "dataset.category=all"])


def _no_launch(monkeypatch) -> None:
    from ulsad_bench import sweep

    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may be launched: {args}")

    monkeypatch.setattr(sweep.subprocess, "run", refuse)


def test_sweep_without_a_dataset_root_stops_before_launching(monkeypatch, capsys) -> None:
    from ulsad_bench.sweep import main

    _no_launch(monkeypatch)
    start = time.perf_counter()
    assert main(["dataset=visa", "models=padim"]) == 2
    assert main(["dataset=visa", "models=padim", "root=/no/such/folder"]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert err.count("nothing was launched") == 2 and err.count("DATASET_ROOT=/path/to/visa") == 2
    assert "dataset.root is not set" in err and "/no/such/folder does not exist" in err
    assert "candle/" in err  # the expected layout: the folder holding the dataset's categories


def test_sweep_with_missing_weights_stops_with_one_message_naming_the_file(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.conftest import tiny_mvtec
    from ulsad_bench.sweep import main

    _no_launch(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    root = tiny_mvtec(tmp_path / "my data")  # a space in the path
    code = main(
        [
            "dataset=mvtec",
            f"root={root}",
            "models=padim,patchcore",
            "categories=bottle",
            "--",
            "dataset.categories=[bottle]",
            "dataset.image_size=32",
            "backbone=resnet18",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n  - ") == 1 and "models padim, patchcore: WeightsNotFoundError" in err  # one message
    assert "resnet18-5c106cde.pth" in err
    assert "dataset mvtec" not in err  # the dataset itself passed the check


def test_sweep_refuses_unknown_arguments(monkeypatch, capsys) -> None:
    from ulsad_bench.sweep import main

    _no_launch(monkeypatch)
    assert main(["dataset=synthetic", "model=padim"]) == 2
    assert "unknown argument 'model=padim' (did you mean models=?)" in capsys.readouterr().err
    assert main(["dataset=synthetic", "padim"]) == 2


def test_dataset_root_with_spaces_and_commas_reaches_hydra_whole() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ulsad_bench.launch import sweep_command

    root = "/data/my sets/it's, here"
    command = sweep_command({"dataset": "mvtec", "root": root}, [], categories=["bottle"])
    line = next(a for a in command if a.startswith("dataset.root="))
    override = OverridesParser.create().parse_overrides([line])[0]
    assert not override.is_sweep_override() and override.value() == root


def test_make_sweep_passes_args_and_quotes_the_root() -> None:
    import shlex

    out = subprocess.run(
        ["make", "-n", "sweep", "DATASET=mvtec", "DATASET_ROOT=/data/my sets", "ARGS=model.epochs=2 seed=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    line = next(li for li in out.stdout.replace("\\\n", " ").splitlines() if "ulsad_bench.sweep" in li)
    argv = shlex.split(line)
    assert "root=/data/my sets" in argv
    assert argv[argv.index("--") + 1 :] == ["model.epochs=2", "seed=3"]


def test_make_sweep_exits_non_zero_when_a_job_failed_and_still_writes_tables(tmp_path: Path, monkeypatch) -> None:
    """run.py -m exits 1 when a job failed (test_a_failing_job_does_not_stop_the_sweep); make sweep passes it on
    after writing the tables."""
    from ulsad_bench import sweep

    launched: list[list[str]] = []

    def fake_run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        launched.append(command)
        failed_sweep = "run.py" in command[1]
        return subprocess.CompletedProcess(command, 1 if failed_sweep else 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    code = sweep.main(["dataset=synthetic", "models=padim", "seeds=0", f"results={tmp_path}", "--", *TINY_DATA])
    assert code == 1
    assert [c[1] if "run.py" in c[1] else c[2] for c in launched] == [str(REPO / "run.py"), "ulsad_bench.report"]


def test_sweeps_and_flags_in_the_arguments_do_not_break_the_expansion(monkeypatch, capsys) -> None:
    from ulsad_bench.categories import expand_all_categories
    from ulsad_bench.sweep import main

    expanded = expand_all_categories(["-m", "--cfg", "job", "dataset.category=all", "backbone=resnet18,resnet50"])
    assert "dataset.category=texture,pinbox" in expanded
    _no_launch(monkeypatch)
    assert main(["dataset=visa", "models=padim", "--", "model.n_features=10,20"]) == 2  # no root: refused, no crash
    assert "DATASET_ROOT=/path/to/visa" in capsys.readouterr().err
