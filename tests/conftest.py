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


#: the tiny MVTec AD 2 fixture's categories and their image sizes (width, height): different sizes, not
#: square, so that an export at the wrong size or with width and height swapped is caught
TINY_AD2_SIZES = {"can": (40, 56), "fabric": (52, 36)}


def tiny_mvtec_ad2(root: Path, n_private: int = 3, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A tiny MVTec AD 2 in its published layout under ``root`` (ulsad_bench/data/mvtec_ad2.py): per
    category 8 train, 3 validation, 3 good + 3 bad public test images (a bright square, its mask at
    255), and ``n_private`` images in each private set, named as published (``000_regular.png``,
    ``000_mixed.png``, ...). Images are (width, height) of :data:`TINY_AD2_SIZES`."""
    rng = np.random.default_rng(0)
    for category, (width, height) in (sizes or TINY_AD2_SIZES).items():
        cat = root / category

        def image(defect: bool, height: int = height, width: int = width) -> Image.Image:
            pixels = rng.integers(100, 140, (height, width, 3), dtype=np.uint8)
            if defect:
                pixels[10:20, 12:22] = 250
            return Image.fromarray(pixels)

        for folder, count in (("train/good", 8), ("validation/good", 3), ("test_public/good", 3)):
            (cat / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image(False).save(cat / folder / f"{i:03d}_regular.png")
        for folder in ("test_public/bad", "test_public/ground_truth/bad"):
            (cat / folder).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            image(True).save(cat / "test_public" / "bad" / f"{i:03d}_regular.png")
            mask = np.zeros((height, width), np.uint8)
            mask[10:20, 12:22] = 255
            Image.fromarray(mask).save(cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png")
        for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
            (cat / split).mkdir(parents=True, exist_ok=True)
            for i in range(n_private):
                image(i == 0).save(cat / split / f"{i:03d}_{suffix}.png")
    return root
