"""The paper compares nine methods (Section 4.1; Tables 1, 2, 4, 7-27): each one runs here, from its
own config, in every place a model is listed (demo and bench presets, the sweep's default, the bench's
default, the README)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import compose_config
from tests.test_model_fastflow import FASTFLOW_FAST
from tests.test_model_reverse_distillation import RD_FAST
from ulsad_bench import bench, launch, runner
from ulsad_bench.config import CONF_DIR, EXPERIMENTS_DIR
from ulsad_bench.report.naming import MODEL_METHOD, PAPER_METHODS, TABLE1_ORDER
from ulsad_bench.spec import model_from_config

REPO = Path(__file__).resolve().parent.parent
MODEL_OF = {method: model for model, method in MODEL_METHOD.items()}


def test_every_method_of_the_papers_tables_is_a_model_of_the_harness() -> None:
    assert set(PAPER_METHODS) == set(TABLE1_ORDER) == set(MODEL_OF) and len(PAPER_METHODS) == 9


@pytest.mark.parametrize("method", PAPER_METHODS)
def test_each_method_has_a_config_a_demo_and_a_bench_preset(method: str) -> None:
    model = MODEL_OF[method]
    assert (Path(CONF_DIR) / "model" / f"{model}.yaml").is_file()
    assert model_from_config(compose_config([f"model={model}"]).model).name == model
    for group in ("demo", "bench"):
        assert (EXPERIMENTS_DIR / group / f"{model}.yaml").is_file(), f"experiments/{group}/{model}.yaml"


def test_the_sweep_and_the_bench_run_all_nine_by_default() -> None:
    nine = set(MODEL_OF.values())
    assert set(launch.DEFAULT_MODELS.split(",")) == nine
    assert set(bench.DEFAULT_MODELS.split(",")) == nine
    makefile = (REPO / "Makefile").read_text()
    (models,) = re.findall(r"^MODELS \?= (\S+)$", makefile, flags=re.M)
    assert set(models.split(",")) == nine


def test_the_readme_lists_each_method_its_config_and_its_source() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Baselines", 1)[1].split("\n## ", 1)[0]
    for model in MODEL_METHOD:
        if model == "ulsad":
            continue
        (row,) = [line for line in section.splitlines() if f"| `{model}` |" in line]  # the methods table
        assert row.count("|") == 6, row  # method, model=, code, source of its values, backbone
        assert (Path(CONF_DIR) / "model" / f"{model}.yaml").is_file()
    table = readme.split("## The paper's setting", 1)[1].split("\n## ", 1)[0]
    for label in ("CFLOW", "FastFlow", "DRÆM", "Reverse Distillation", "DFR epochs"):
        assert label in table, label


@pytest.mark.parametrize("name", ["fastflow", "reverse_distillation"])
def test_iterative_baselines_follow_the_test_selecting_protocol(tiny_cfg, tmp_path: Path, name: str) -> None:
    """protocol.select_on_test (anomalib 0.7's early stopping on the test set, as an option): the model
    reports every epoch through the one training loop and the best epoch's state is scored; the clean
    protocol (the default) records no selection. (CFLOW's and DRÆM's are in their own test files.)"""
    fast = {"fastflow": FASTFLOW_FAST, "reverse_distillation": [*RD_FAST[:2], "model.epochs=3", *RD_FAST[3:]]}[name]
    record = runner.run(tiny_cfg(*fast, "protocol=select_on_test", "profile.enabled=false"), tmp_path / "run")
    assert record["status"] == "ok", record.get("traceback")
    epochs = record["hyperparameters"]["epochs"]
    assert [point["epoch"] for point in record["selection"]["curve"]] == list(range(1, epochs + 1))
    assert 1 <= record["selection"]["epoch"] <= epochs and record["protocol"]["select_on_test"] is True


def test_the_default_sweep_plans_and_preflights_all_nine(
    shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make sweep ... PLAN=1`` with the default models: every one planned (a time line each) and
    pre-flighted (the synthetic set needs no file: DRÆM's generated source, EfficientAD's substitutes)."""
    from ulsad_bench import sweep

    monkeypatch.setattr(sweep, "subprocess", None)  # nothing may be launched
    own = ["dataset=synthetic", "seeds=0", "categories=texture", f"results={tmp_path / 'out'}", "plan=1"]
    assert sweep.main([*own, "--", f"cache_dir={shared_cache}"]) == 0
    out = capsys.readouterr().out
    assert "9 jobs = model (9) x dataset.category (1) x seed (1)" in out, out
    for model in MODEL_OF.values():
        assert f"{model}: 1 to run" in out, model
    assert not (tmp_path / "out").exists()
