"""``make sweep ... PLAN=1``: the plan before launch (jobs, done, time, cache disk), and the
progress lines a multirun prints (ulsad_bench/plan.py, ulsad_bench/sweep.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA
from ulsad_bench.config import REPO
from ulsad_bench.records import RECORD_NAME, find_records

#: tiny jobs, no profiling and no maps: the real multirun below stays short
FAST = [*TINY_DATA, "profile.enabled=false", "save_maps_per_defect=0"]


def _no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make sweep`` launches through its module's ``subprocess``: replaced by one that refuses
    (``git`` for the record's versions still runs: it is the real module elsewhere)."""
    import types

    from ulsad_bench import sweep

    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may be launched: {args}")

    monkeypatch.setattr(sweep, "subprocess", types.SimpleNamespace(run=refuse, Popen=refuse))


@pytest.fixture(scope="module")
def real_sweep(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The plan of 2 padim jobs, then the very command ``make sweep`` launches for them."""
    from ulsad_bench.launch import sweep_command
    from ulsad_bench.plan import make_plan

    results = tmp_path_factory.mktemp("sweep") / "results"
    args = {"dataset": "synthetic", "models": "padim", "seeds": "0,1", "categories": "texture", "results": str(results)}
    extra = [f"cache_dir={shared_cache}", *FAST]
    before = make_plan(args, extra)
    result = subprocess.run(sweep_command(args, extra), cwd=REPO, capture_output=True, text=True, timeout=600)
    return args, extra, before, result


def test_plan_run_folders_are_those_a_real_multirun_writes(real_sweep) -> None:
    from ulsad_bench.plan import make_plan

    args, extra, before, result = real_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(before.jobs) == 2 and not before.done
    records = [json.loads(p.read_text()) for p in find_records(Path(args["results"]))]
    assert sorted(r["run_dir"] for r in records) == sorted(str(job.run_dir) for job in before.jobs)
    assert all("dat-" in r["run_dir"] for r in records)  # a long override list: run_subdir's prefix + hash
    after = make_plan(args, extra)
    assert len(after.done) == 2 and not after.to_run
    assert all(job.reason.startswith("same config hash") for job in after.done)


def test_a_multirun_prints_one_progress_line_per_finished_job(real_sweep) -> None:
    args, _, _, result = real_sweep
    lines = [line for line in result.stdout.splitlines() if line.startswith("[sweep] ")]
    assert len(lines) == 2, result.stdout[-3000:]
    assert re.fullmatch(r"\[sweep\] 1/2 done, [0-9hms]+ elapsed, ~[0-9hms]+ left", lines[0]), lines
    assert re.fullmatch(r"\[sweep\] 2/2 done, [0-9hms]+ elapsed", lines[1]), lines
    (info,) = (Path(args["results"]) / ".sweeps").glob("*.json")  # written once, at the start
    assert json.loads(info.read_text())["total"] == 2 and json.loads(info.read_text())["jobs_at_once"] == 1


def test_plan_on_one_finished_job_of_three_says_one_done_and_times_the_rest_by_it(real_sweep, tmp_path: Path) -> None:
    from ulsad_bench.plan import format_plan, make_plan

    args, extra, before, result = real_sweep
    assert result.returncode == 0
    results = tmp_path / "results"
    finished = before.jobs[0]  # seed 0, finished by the real multirun: its folder moves to a new results folder
    folder = results / finished.run_dir.relative_to(before.results)
    shutil.copytree(finished.run_dir, folder)
    record = json.loads((folder / RECORD_NAME).read_text())
    seconds = sum(record["timing"][k] for k in ("load_s", "fit_s", "predict_s", "metrics_s"))

    plan = make_plan({**args, "seeds": "0,1,2", "results": str(results)}, extra)
    assert [job.done for job in plan.jobs] == [True, False, False]
    assert [job.reason for job in plan.to_run] == ["no ok record", "no ok record"]
    (time,) = plan.times
    assert (time.model, time.to_run, time.records) == ("padim", 2, 1)
    assert time.seconds == pytest.approx(seconds) and time.total == pytest.approx(2 * seconds)
    text = format_plan(plan)
    assert "sweep plan (nothing launched): 3 jobs = model (1) x dataset.category (1) x seed (3)" in text
    assert "done:     1 " in text and "to run:   2, 1 at once" in text
    assert f"padim: 2 to run x {seconds:.1f}s = {2 * seconds:.1f}s (median of 1 ok record under {results}" in text
    # PaDiM caches nothing of its own; the decoded splits (cache.decoded_images) are shared by the seeds
    assert "decoded images (cache.decoded_images): 2 entries" in text, text  # train and test; no features


def test_plan_counts_sweeps_in_the_extra_overrides_and_launches_nothing(
    shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ulsad_bench.sweep import main

    _no_launch(monkeypatch)
    own = ["dataset=synthetic", "models=padim", "seeds=0,1", f"results={tmp_path / 'out'}", "plan=1"]
    assert main([*own, "--", f"cache_dir={shared_cache}", *FAST, "model.n_features=8,10"]) == 0
    out = capsys.readouterr().out
    assert "8 jobs = model (1) x dataset.category (2) x seed (2) x model.n_features (2)" in out
    assert "done:     0 " in out and "to run:   8" in out and "padim: 8 to run x unknown" in out
    assert len({line for line in out.splitlines() if line.startswith("    - synthetic/")}) == 8  # 8 run folders
    assert not (tmp_path / "out").exists()
    assert main(["dataset=synthetic", "models=padim", "plan=maybe"]) == 2
    assert "plan='maybe'" in capsys.readouterr().err


def test_plan_without_the_dataset_says_unknown(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ulsad_bench.sweep import main

    _no_launch(monkeypatch)
    assert main(["dataset=visa", "models=padim", "seeds=0", "categories=candle", "plan=1"]) == 0
    out = capsys.readouterr().out
    assert "1 job = model (1) x dataset.category (1) x seed (1)" in out
    assert "dataset.root is not set for dataset 'visa'" in out
    assert "no ok record: 1" in out and "- visa/candle/padim/seed=0" in out
    assert "unknown for 1 job (its dataset cannot be listed)" in out and "total: unknown" in out


def test_cache_disk_estimate_from_shapes_counts_shared_entries_once(shared_cache: Path, tmp_path: Path) -> None:
    # each model names what it caches (AnomalyModel.cache_entries); the plan adds the decoded images
    from ulsad_bench.models.dfr.model import FEATURES_ENTRY as DFR_FEATURES
    from ulsad_bench.models.efficientad.model import TEACHERS_ENTRY as TEACHERS
    from ulsad_bench.models.ulsad.model import FEATURES_ENTRY as ULSAD_FEATURES
    from ulsad_bench.models.ulsad.model import TRAINED_ENTRY as ULSAD_TRAINED
    from ulsad_bench.plan import DECODED, make_plan

    args = {"dataset": "synthetic", "models": "ulsad,dfr,padim", "seeds": "0,1", "categories": "texture"}
    extra = [f"cache_dir={shared_cache}", *FAST, "cache.decoded_images=true"]
    plan = make_plan({**args, "results": str(tmp_path)}, extra)
    entries = plan.disk.entries
    ulsad = next(job for job in plan.jobs if job.model == "ulsad")
    n_train, n_val = len(ulsad.splits.train), len(ulsad.splits.val)
    assert n_train and n_val
    # features are shared across seeds: train + val once; one trained state per seed
    assert sorted(entries[ULSAD_FEATURES].values()) == sorted([n_train * 384 * 8 * 8 * 4, n_val * 384 * 8 * 8 * 4])
    assert len(entries[ULSAD_TRAINED]) == 2 and min(entries[ULSAD_TRAINED].values()) > 100 * 2**20
    dfr = next(job for job in plan.jobs if job.model == "dfr")
    assert list(entries[DFR_FEATURES].values()) == [len(dfr.splits.train) * 3456 * 16 * 16 * 2]  # 64 px / 4, fp16
    images = {tuple(s.path for s in split) for job in plan.jobs for split in (job.splits.train, job.splits.val)}
    tests = {tuple(s.path for s in job.splits.test) for job in plan.jobs}  # with their masks: 4 bytes a pixel
    expected = sum(len(p) * 3 * 64 * 64 for p in images if p) + sum(len(p) * 4 * 64 * 64 for p in tests if p)
    assert sum(entries[DECODED].values()) == expected
    assert TEACHERS not in entries  # no EfficientAD job
    assert plan.disk.total == sum(sum(kind.values()) for kind in entries.values())


def test_expand_sweep_follows_presets_params_and_the_command_line() -> None:
    from ulsad_bench.config import hydra_app, master_config
    from ulsad_bench.plan import expand_sweep, jobs_at_once

    with hydra_app() as hydra:
        master = master_config(hydra, ["+experiment=fig8_quantiles"])
        expansion = expand_sweep(master, hydra.config_loader)
        assert len(expansion.jobs) == 5 * 3 * 5 * 5
        assert dict(expansion.factors) == {"model.alpha": 5, "model.beta": 3, "dataset.category": 5, "seed": 5}
        master = master_config(hydra, ["+experiment=fig8_quantiles", "seed=0", "hydra/launcher=parallel"])
        expansion = expand_sweep(master, hydra.config_loader)  # the command line wins over the preset's params
        assert len(expansion.jobs) == 75 and all("seed=0" in job for job in expansion.jobs)
        assert jobs_at_once(master, len(expansion.jobs)) == 2  # conf/hydra/launcher/parallel.yaml: n_jobs 2


def test_progress_counts_this_sweeps_outcome_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ulsad_bench.outcomes import SWEEP_ID_ENV, format_progress, sweep_info_path, sweep_progress, write_outcome

    def outcome(name: str, payload: dict) -> None:
        path = tmp_path / name / ".outcomes" / "this.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(payload))

    sweep_info_path(tmp_path, "this").parent.mkdir()
    sweep_info_path(tmp_path, "this").write_text(json.dumps({"total": 4, "jobs_at_once": 2, "started": 1000.0}))
    outcome("a", {"outcome": "ran", "started": 1000.0, "time": 1060.0})
    outcome("b", {"outcome": "failed", "started": 1000.0, "time": 1030.0})
    outcome("c", {"outcome": "started", "started": 1030.0, "time": 1030.0})
    progress = sweep_progress(tmp_path, "this", now=1100.0)
    assert (progress.done, progress.running, progress.left_s) == (2, 1, 45.0)  # mean 45 s x 2 left / 2 at once
    assert format_progress(progress) == "[sweep] 2/4 done (1 failed), 1m40s elapsed, ~45s left"
    unknown = sweep_progress(tmp_path, "other", now=1100.0)
    assert format_progress(unknown) == "[sweep] 0 done, 0s elapsed"

    monkeypatch.setenv(SWEEP_ID_ENV, "mine")
    write_outcome(tmp_path / "d", "started")
    started = json.loads((tmp_path / "d" / ".outcomes" / "mine.json").read_text())["started"]
    write_outcome(tmp_path / "d", "skipped", "same config hash")
    ended = json.loads((tmp_path / "d" / ".outcomes" / "mine.json").read_text())
    assert ended["outcome"] == "skipped" and ended["started"] == started <= ended["time"]


def test_device_kinds_and_job_times_of_records() -> None:
    from ulsad_bench.plan import device_kind, job_seconds

    assert device_kind("cuda:1 NVIDIA H200") == device_kind("cuda:0 NVIDIA H200") == "cuda NVIDIA H200"
    assert device_kind("cpu x86_64 (16 threads)") == device_kind("cpu x86_64 (2 threads)") == "cpu x86_64"
    assert device_kind("cuda:0 NVIDIA H200") != device_kind("cuda:0 NVIDIA A100-SXM4-80GB")
    assert job_seconds({"timing": {"load_s": 1, "fit_s": 2.5, "predict_s": 0.5, "profile_s": 1, "metrics_s": 1}}) == 6
    assert job_seconds({"timing": {"fit_s": 2.0, "epoch_s": [1, 2]}}) == 2.0 and job_seconds({}) is None
