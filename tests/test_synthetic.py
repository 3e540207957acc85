"""The synthetic generator: deterministic, exact masks, logical anomalies that are logical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ulsad_bench.data import build_splits, read_image, read_mask
from ulsad_bench.data.folder import read_category
from ulsad_bench.data.synthetic import (
    PINBOX_LOGICAL,
    PINBOX_STRUCTURAL,
    TEXTURE_DEFECTS,
    PinboxGeometry,
    SyntheticSpec,
    ensure_synthetic,
    render_pinbox_sample,
    render_texture_sample,
)

SPEC = SyntheticSpec(resolution=64, n_train=6, n_validation=3, n_test_good=3, n_per_defect=2, seed=5)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = ensure_synthetic(tmp_path / "a", SPEC)
    second = ensure_synthetic(tmp_path / "b", SPEC)
    assert _tree_digest(first) == _tree_digest(second)
    other = ensure_synthetic(tmp_path / "c", SyntheticSpec(**{**SPEC.__dict__, "seed": 6}))
    assert _tree_digest(first) != _tree_digest(other)
    assert ensure_synthetic(tmp_path / "a", SPEC) == first  # second call reuses the folder


def test_layouts_read_by_the_dataset_loader(tmp_path: Path, tiny_cfg) -> None:
    cfg = tiny_cfg("dataset.category=pinbox")
    splits = build_splits(cfg.dataset, tmp_path)
    counts = splits.counts()
    spec = cfg.dataset.synthetic
    assert counts["train"] == spec.n_train and counts["val"] == spec.n_validation
    assert splits.val_source == "validation folder"
    assert counts["test_logical"] == len(PINBOX_LOGICAL) * spec.n_per_defect
    assert counts["test_structural"] == len(PINBOX_STRUCTURAL) * spec.n_per_defect

    texture = build_splits(tiny_cfg("dataset.category=texture").dataset, tmp_path)
    assert texture.val_source.startswith("holdout")
    assert texture.counts()["test_anomalous"] == len(TEXTURE_DEFECTS) * spec.n_per_defect
    assert {s.kind for s in texture.test if s.label} == {"structural"}


@pytest.mark.parametrize("defect", TEXTURE_DEFECTS)
def test_texture_masks_cover_exactly_the_drawn_defect(defect: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        rendered = render_texture_sample(rng, 64, defect)
        changed = np.any(rendered.image != rendered.clean, axis=2)
        assert changed.any()
        np.testing.assert_array_equal(changed, rendered.masks[0])


@pytest.mark.parametrize("defect", PINBOX_STRUCTURAL + PINBOX_LOGICAL)
def test_pinbox_masks_cover_the_anomaly(defect: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        rendered = render_pinbox_sample(rng, 64, defect)
        changed = np.any(rendered.image != rendered.clean, axis=2)
        union = np.logical_or.reduce(rendered.masks)
        assert changed.any()
        assert not (changed & ~union).any(), "a changed pixel lies outside the mask"
        if defect in (*PINBOX_STRUCTURAL, "extra", "swapped"):
            np.testing.assert_array_equal(changed, union)  # mask = exactly the drawn pixels
        else:  # missing: the mask is the compartment; the changed pixels are the removed pin
            assert union.sum() > changed.sum()


def _patches(image: np.ndarray, size: int) -> set[bytes]:
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size, 3))[:, :, 0]
    return {w.tobytes() for w in windows.reshape(-1, size, size, 3)}


def test_logical_anomalies_are_made_of_normal_patches() -> None:
    """Every local patch of a logical anomaly also occurs in normal images."""
    resolution = 64
    patch = PinboxGeometry(resolution).patch
    rng = np.random.default_rng(2)
    normal_patches: set[bytes] = set()
    for _ in range(40):
        normal_patches |= _patches(render_pinbox_sample(rng, resolution, "good").image, patch)
    for defect in PINBOX_LOGICAL:
        for _ in range(5):
            anomalous = render_pinbox_sample(rng, resolution, defect).image
            unseen = _patches(anomalous, patch) - normal_patches
            assert not unseen, f"{defect}: {len(unseen)} patches never seen in normal images"
    # ...whereas a structural anomaly has patches no normal image has
    structural = render_pinbox_sample(rng, resolution, "hole").image
    assert _patches(structural, patch) - normal_patches


def test_loco_layout_masks_are_united(tmp_path: Path) -> None:
    root = ensure_synthetic(tmp_path, SPEC)
    mask_dirs = sorted((root / "pinbox" / "ground_truth" / "logical_anomalies").iterdir())
    assert mask_dirs and all(any(d.glob("*.png")) for d in mask_dirs)
    swapped = [d for d in mask_dirs if len(list(d.glob("*.png"))) == 2]
    assert swapped, "swapped anomalies are written as two mask files (one per pin)"
    category = read_category(root / "pinbox")
    sample = next(s for s in category.test if len(s.mask_paths) == 2)
    union = read_mask(sample, SPEC.resolution)
    assert union.sum() > 0 and read_image(sample.path, SPEC.resolution).shape == (3, 64, 64)
