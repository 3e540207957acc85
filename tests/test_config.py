"""Every config file composes; a new YAML in a group is tested automatically."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from ulsad_bench.config import CONF_DIR, EXPERIMENTS_DIR
from ulsad_bench.report.naming import MODEL_METHOD
from ulsad_bench.spec import model_from_config

GROUPS = ["model", "dataset", "backbone", "logger", "protocol"]
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_composes(group: str, choice: str) -> None:
    cfg = compose_config([f"{group}={choice}"])
    OmegaConf.resolve(cfg)
    assert cfg.seed == 0 and cfg.model.name and cfg.dataset.name and cfg.backbone.name
    if group == "model":
        assert cfg.model.name == choice and "_target_" in cfg.model
    if group == "dataset":
        assert cfg.dataset.category in list(cfg.dataset.categories)


def test_synthetic_default_asks_for_random_weights_explicitly() -> None:
    assert compose_config([]).backbone.weights == "random"
    assert compose_config(["dataset=mvtec"]).backbone.weights == "imagenet"


EXPERIMENTS = EXPERIMENTS_DIR
ROWS = sorted(p.stem for p in (EXPERIMENTS / "ablation").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (EXPERIMENTS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("row", ROWS)
def test_every_ablation_row_builds_a_valid_ulsad(row: str) -> None:
    cfg = compose_config(["model=ulsad", f"+ablation={row}"])
    assert cfg.variant == f"t3-{row}"
    model = model_from_config(cfg.model)
    assert model.loss_pg in ("attention", "l2", "none")


def test_table3_rows_follow_the_paper() -> None:
    settings = {row: compose_config(["model=ulsad", f"+ablation={row}"]).model for row in ROWS}
    assert settings["row10"].lambda_l == 0.5 and settings["row10"].loss_pg == "attention" and settings["row10"].loss_lg
    assert settings["row1"].branch == "local" and settings["row1"].lambda_l == 0.0
    assert settings["row4"].loss_pg == "l2" and settings["row4"].loss_lg and settings["row4"].lambda_g == 0.0
    assert len(ROWS) == 10


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_composes(preset: str) -> None:
    cfg = compose_config([f"+experiment={preset}"])
    OmegaConf.resolve(cfg)
    assert cfg.model.name == "ulsad" and cfg.dataset.name == ("synthetic" if preset == "protocol_gap" else "mvtec_loco")


@pytest.mark.parametrize("group", ["demo", "bench"])
def test_every_demo_and_bench_preset_composes_to_its_model(group: str) -> None:
    presets = sorted(p.stem for p in (EXPERIMENTS / group).glob("*.yaml"))
    assert set(MODEL_METHOD) <= set(presets)  # the nine methods of the paper's tables
    for preset in presets:
        cfg = compose_config([f"+{group}={preset}"])
        OmegaConf.resolve(cfg)
        if preset != "table4":
            assert cfg.model.name == preset and model_from_config(cfg.model).name == preset
    bench = compose_config(["+bench=ulsad"])
    assert (bench.dataset.image_size, bench.backbone.name, bench.profile.batch_size) == (256, "wide_resnet50_2", 32)
    assert compose_config(["+demo=ulsad"]).model.feature_dim == 128
