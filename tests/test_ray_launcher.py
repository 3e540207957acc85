"""hydra/launcher=gpus: one job per GPU through Ray, checked on a CPU machine that declares two GPUs.

Ray accepts declared GPU resources without GPUs and sets each task's CUDA_VISIBLE_DEVICES; the
jobs record it. One Ray sweep over three seeds: seed 0 was finished earlier by the basic
launcher (skipped), seed 1 was killed mid-job (its lock and attempt folder left behind: it runs
again), seed 2 is new; seeds 1 and 2 run at once (a barrier at job start proves it) on different
GPUs; seed 1 gives the basic launcher's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_DATA
from ulsad_bench.config import REPO
from ulsad_bench.records import ATTEMPTS_DIR, RECORD_NAME

JOB = [*TINY_DATA, "model=padim", "profile.enabled=false", "dataset.category=texture"]


def _multirun(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "run.py", "-m", *JOB, f"output_root={out}", f"cache_dir={cache}", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _records(out: Path) -> dict[int, dict]:
    """The run records under ``out`` by seed (failed attempts' records left out)."""
    paths = [p for p in out.rglob(RECORD_NAME) if ATTEMPTS_DIR not in p.parts]
    return {record["seed"]: record for record in (json.loads(p.read_text()) for p in paths)}


def test_ray_launcher_runs_one_job_per_declared_gpu_and_resumes(tmp_path: Path, shared_cache: Path) -> None:
    basic, gpus = tmp_path / "basic", tmp_path / "gpus"
    done = _multirun(basic, shared_cache, "seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _records(basic)
    # seed 0 finished earlier (its folder copied over), seed 1 killed mid-job: lock and attempt left, no record
    for seed in (0, 1):
        src = next(p.parent for p in basic.rglob(RECORD_NAME) if f"seed={seed}" in str(p))
        dst = gpus / src.relative_to(basic)
        dst.mkdir(parents=True)
        if seed == 0:
            (dst / RECORD_NAME).write_text((src / RECORD_NAME).read_text())
        else:
            (dst / ".lock").write_text("pid 999999 (killed)\n")
            (dst / ATTEMPTS_DIR / "20261201T000000-999999").mkdir(parents=True)
    ran = _multirun(
        gpus,
        shared_cache,
        "seed=0,1,2",
        "hydra/launcher=gpus",
        "hydra.launcher.ray.init.num_gpus=2",
        "+hydra.launcher.ray.init.num_cpus=2",
        # the jobs of seeds 1 and 2 each wait until both have started: they run at the same time, or fail
        "+hydra.callbacks.barrier._target_=tests.barrier.Barrier",
        f"+hydra.callbacks.barrier.folder={tmp_path / 'barrier'}",
        "+hydra.callbacks.barrier.seeds=[1,2]",
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    records = _records(gpus)
    assert sorted(records) == [0, 1, 2] and all(r["status"] == "ok" for r in records.values())
    assert records[0]["started"] == reference[0]["started"]  # skipped: the earlier record kept
    # seeds 1 and 2: one declared GPU each, at the same time
    assert {records[1]["cuda_visible_devices"], records[2]["cuda_visible_devices"]} == {"0", "1"}
    assert sorted(p.read_text() for p in (tmp_path / "barrier").iterdir()) == ["0", "1"]  # both at once
    # the basic launcher's results (and seed 2, new, a different seed's)
    assert records[1]["metrics"] == reference[1]["metrics"] and records[1]["config_hash"] == reference[1]["config_hash"]
