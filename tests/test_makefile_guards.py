"""The Makefile refuses what it would silently misread: a command-line variable it does not know
(a typo such as ``MODEL=`` for ``MODELS=`` would launch every model), and a ``CACHE_DIR`` that
would make ``make clean-cache`` delete outside a cache (empty: ``/features``; ``/``; the home
folder). Dry runs (``make -n``) wherever the guard must act before anything runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ulsad_bench.config import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*arguments: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"HOME": str(home)} if home is not None else {})}
    env.pop("MAKEFLAGS", None)
    return subprocess.run(
        ["make", "-C", str(REPO), *arguments], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_unknown_command_line_variables_are_refused_before_any_target_runs() -> None:
    result = make("-n", "sweep", "MODEL=padim", "DATASETS=visa", "PLAN=1")
    assert result.returncode != 0
    assert "unknown variable(s) on the command line: MODEL DATASETS" in result.stderr
    assert "MODELS" in result.stderr and "DATASET " in result.stderr  # the ones it knows are listed
    assert "ulsad_bench.sweep" not in result.stdout  # nothing ran, not even as a dry run
    for target in ("test", "demo", "clean"):
        assert make("-n", target, "MODLES=padim").returncode != 0


def test_known_variables_and_none_pass_as_before() -> None:
    result = make("-n", "sweep", "MODELS=padim", "DATASET=visa", "PLAN=1", "ARGS=model.epochs=2 dataset.image_size=128")
    assert result.returncode == 0, result.stderr
    assert 'models="padim"' in result.stdout and "-- model.epochs=2 dataset.image_size=128" in result.stdout
    assert make("-n", "test").returncode == 0
    assert make("-n", "demo").returncode == 0


@pytest.mark.parametrize("cache_dir", ["", "  ", "/", "/tmp/..", "//"])
def test_clean_cache_refuses_an_empty_or_root_cache_dir(cache_dir: str) -> None:
    result = make("-n", "clean-cache", f"CACHE_DIR={cache_dir}")
    assert result.returncode != 0
    assert "make clean-cache: CACHE_DIR" in result.stderr
    assert "rm -rf" not in result.stdout


def test_clean_cache_refuses_the_home_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = make("-n", "clean-cache", f"CACHE_DIR={home}/.", home=home)
    assert result.returncode != 0
    assert "is the home folder" in result.stderr


def test_clean_cache_deletes_only_the_features_of_the_given_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "features" / "entry").mkdir(parents=True)
    (cache / "synthetic").mkdir()
    result = make("clean-cache", f"CACHE_DIR={cache}", home=tmp_path / "nohome")
    assert result.returncode == 0, result.stderr
    assert not (cache / "features").exists() and (cache / "synthetic").is_dir()
