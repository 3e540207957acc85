"""No setting leads a run folder outside ``output_root``: the values that become parts of its path
(``dataset.name``, ``dataset.category``, ``model.name``, ``variant``, ``seed``) must be plain names,
refused by name as Hydra names the folder (before it creates it) and by the job's spec."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf.errors import InterpolationResolutionError

from tests.conftest import TINY_DATA
from ulsad_bench.config import REPO, ConfigError, compose, compose_sweep_job, hydra_app, master_config
from ulsad_bench.spec import JobSpec

RULE = "not a plain name"
NOT_PLAIN = [
    ("variant", "../../escape"),
    ("variant", "x/../../../../../escape"),
    ("variant", ".hidden"),
    ("dataset.name", "../elsewhere"),
    ("dataset.category", ".."),
    ("model.name", "/tmp/elsewhere"),
]


def _refusal(setting: str, value: str) -> str:
    return rf"{re.escape(setting)}='{re.escape(value)}': {RULE}"


@pytest.mark.parametrize(("setting", "value"), [*NOT_PLAIN, ("seed", "../escape")])
def test_the_run_folder_refuses_a_name_that_is_not_plain(setting: str, value: str, tmp_path: Path) -> None:
    cfg = compose([f"{setting}={value}", f"output_root={tmp_path}"], return_hydra_config=True)
    for key in ("run.dir", "sweep.subdir"):
        with pytest.raises(InterpolationResolutionError, match=_refusal(setting, value)):
            str(cfg.hydra[key.split(".")[0]][key.split(".")[1]])


@pytest.mark.parametrize(("setting", "value"), NOT_PLAIN)
def test_the_jobs_spec_refuses_a_name_that_is_not_plain(setting: str, value: str) -> None:
    with pytest.raises(ValueError, match=_refusal(setting, value)):
        JobSpec.from_config(compose([f"{setting}={value}"]))


def test_a_sweep_plan_refuses_a_job_whose_folder_has_no_plain_name() -> None:
    overrides = ["model=padim", "variant=../../escape"]
    with hydra_app() as hydra:
        master = master_config(hydra, overrides)
        with pytest.raises(ConfigError, match=r"job #0 .*variant='\.\./\.\./escape': not a plain name"):
            compose_sweep_job(hydra, master, 0, overrides)


def test_a_job_with_an_escaping_variant_is_refused_and_creates_nothing(shared_cache: Path, tmp_path: Path) -> None:
    root = tmp_path / "results" / "outputs"
    command = [sys.executable, "run.py", "variant=../../escape", f"output_root={root}", f"cache_dir={shared_cache}"]
    result = subprocess.run(
        [*command, *TINY_DATA, "profile.enabled=false"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "variant='../../escape': not a plain name" in result.stderr
    assert "letters, digits and ._+-=, only, not starting with a dot" in result.stderr
    assert not any(tmp_path.rglob("*"))  # no folder made, inside output_root or out of it


def test_a_plain_variant_names_the_folder_as_before(tmp_path: Path) -> None:
    overrides = ["model=ulsad", "+ablation=row3", "backbone=resnet18", f"output_root={tmp_path}"]
    cfg = compose(overrides, return_hydra_config=True)
    assert Path(str(cfg.hydra.run.dir)) == tmp_path / "synthetic/pinbox/ulsad-t3-row3/backbone=resnet18/seed=0"
    assert str(cfg.hydra.sweep.subdir) == "synthetic/pinbox/ulsad-t3-row3/backbone=resnet18/seed=0"
    assert JobSpec.from_config(compose(overrides)).variant == "t3-row3"
    plain = compose([f"output_root={tmp_path}", "seed=3"], return_hydra_config=True)
    assert Path(str(plain.hydra.run.dir)) == tmp_path / "synthetic/pinbox/padim/seed=3"
