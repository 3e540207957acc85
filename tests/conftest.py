"""Shared fixtures: the real Hydra config composed once with tiny overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

from ulsad_bench.config import compose

# A synthetic set small enough for CPU tests; the same generator and loaders as the default.
TINY_DATA = [
    "dataset.image_size=64",
    "dataset.synthetic.resolution=64",
    "dataset.synthetic.n_train=12",
    "dataset.synthetic.n_validation=4",
    "dataset.synthetic.n_test_good=6",
    "dataset.synthetic.n_per_defect=2",
    "backbone=resnet18",
    "backbone.weights=random",
    "progress=false",
    "save_maps_per_defect=1",
    "profile.batch_size=8",
    "profile.warmup_batches=1",
    "profile.timed_batches=2",
    "profile.latency_calls=2",
]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The project's config with ``overrides`` (:func:`ulsad_bench.config.compose`)."""
    return compose(list(overrides or []))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole session: the synthetic set is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(shared_cache: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """``tiny_cfg(*overrides)``: the real config with tiny data, a test cache and outputs."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(
            [*TINY_DATA, f"cache_dir={shared_cache}", f"output_root={tmp_path / 'outputs'}", *overrides]
        )

    return make


def tiny_mvtec(root: Path, n_train: int = 10) -> Path:
    """A tiny MVTec-AD-layout dataset under ``root``: category ``bottle``, ``n_train`` train, 4 good + 3 dent test."""
    rng = np.random.default_rng(0)
    category = root / "bottle"
    for folder, count in (("train/good", n_train), ("test/good", 4), ("test/dent", 3)):
        (category / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(100, 140, (32, 32, 3), dtype=np.uint8)).save(category / folder / f"{i}.png")
    (category / "ground_truth" / "dent").mkdir(parents=True)
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 255
        Image.fromarray(mask).save(category / "ground_truth" / "dent" / f"{i}_mask.png")
    return root


def mvtec_cfg(root: Path, cache: Path, *overrides: str, dataset: str = "mvtec", category: str = "bottle") -> DictConfig:
    """The real config on a tiny real-layout dataset (default :func:`tiny_mvtec`'s; PaDiM, resnet18
    random, 32 px, no profiling)."""
    return compose_config(
        [
            f"dataset={dataset}",
            f"dataset.root={root}",
            f"dataset.category={category}",
            f"dataset.categories=[{category}]",
            "dataset.image_size=32",
            "backbone=resnet18",
            "backbone.weights=random",
            "model=padim",
            f"cache_dir={cache}",
            "progress=false",
            "profile.enabled=false",
            *overrides,
        ]
    )
