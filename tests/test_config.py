"""Every config file composes; a new YAML in a group is tested automatically."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_config

GROUPS = ["model", "dataset", "backbone", "logger"]
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
