"""The MVTec-layout reader, image/mask reading and validation splits, on tiny hand-made folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ulsad_bench.data import DatasetError, Sample, build_splits, read_image, read_mask
from ulsad_bench.data.folder import read_category


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec_category(root: Path, gray: bool = False, n_train: int = 5) -> Path:
    shape = (16, 16) if gray else (16, 16, 3)
    for i in range(n_train):
        _png(root / "train" / "good" / f"{i:03d}.png", np.full(shape, 100 + i, np.uint8))
    _png(root / "test" / "good" / "000.png", np.full(shape, 100, np.uint8))
    _png(root / "test" / "crack" / "000.png", np.full(shape, 30, np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[2:5, 3:7] = 255
    _png(root / "ground_truth" / "crack" / "000_mask.png", mask)
    return root


def _cfg(category_dir: Path, **extra) -> OmegaConf:
    return OmegaConf.create(
        {
            "name": "mvtec",
            "format": "mvtec",
            "root": str(category_dir.parent),
            "category": category_dir.name,
            "categories": [category_dir.name],
            "image_size": 16,
            "val_split": "auto",
            "val_fraction": 0.4,
            "split_seed": 0,
            **extra,
        }
    )


def test_reads_mvtec_layout(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle")
    found = read_category(root)
    assert len(found.train) == 5 and not found.validation
    anomalous = [s for s in found.test if s.label == 1]
    assert [s.defect_type for s in anomalous] == ["crack"]
    assert anomalous[0].kind == "structural"
    assert anomalous[0].mask_paths == (root / "ground_truth" / "crack" / "000_mask.png",)


def test_grayscale_becomes_three_channels(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "grid", gray=True)
    image = read_image(read_category(root).train[0].path, 16)
    assert image.shape == (3, 16, 16)
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()


def test_masks_binarised_as_any_nonzero_and_united(tmp_path: Path) -> None:
    image = _png(tmp_path / "img.png", np.zeros((8, 8, 3), np.uint8))
    first = np.zeros((8, 8), np.uint8)
    first[0, 0] = 1  # VisA-style small values count as defect
    second = np.zeros((8, 8), np.uint8)
    second[7, 7] = 37
    sample = Sample(image, 1, "x", "logical", (_png(tmp_path / "m0.png", first), _png(tmp_path / "m1.png", second)))
    mask = read_mask(sample, 8)
    assert mask.dtype == bool and mask.sum() == 2 and mask[0, 0] and mask[7, 7]


def test_missing_mask_names_the_expected_files(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle")
    (root / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"no ground-truth mask for anomalous image .*000\.png.*000_mask\.png"):
        read_category(root)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle")
    for path in (root / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=r"empty folder .*train/good"):
        read_category(root)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle")
    broken = root / "test" / "good" / "000.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"unreadable image file .*test/good/000\.png"):
        read_image(broken, 16)


def test_mask_size_must_match_image(tmp_path: Path) -> None:
    image = _png(tmp_path / "img.png", np.zeros((8, 8, 3), np.uint8))
    mask = _png(tmp_path / "mask.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"mask .*mask\.png is 8x6 but its image .*img\.png is 8x8"):
        read_mask(Sample(image, 1, "x", "structural", (mask,)), 8)


def test_holdout_is_fixed_and_seeded(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle", n_train=10)
    first = build_splits(_cfg(root), tmp_path)
    again = build_splits(_cfg(root), tmp_path)
    other = build_splits(_cfg(root, split_seed=1), tmp_path)
    assert len(first.val) == 4 and len(first.train) == 6
    assert [s.path for s in first.val] == [s.path for s in again.val]
    assert [s.path for s in first.val] != [s.path for s in other.val]
    assert not {s.path for s in first.val} & {s.path for s in first.train}
    assert first.val_source == "holdout 0.4 of train (split_seed=0)"


def test_test_set_validation_is_marked(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle")
    splits = build_splits(_cfg(root, val_split="test_set"), tmp_path)
    assert all(s.label == 0 for s in splits.val) and "TEST" in splits.val_source


def test_unknown_category_and_missing_root(tmp_path: Path) -> None:
    root = make_mvtec_category(tmp_path / "bottle")
    with pytest.raises(DatasetError, match="unknown category 'nope'"):
        build_splits(_cfg(root, category="nope"), tmp_path)
    with pytest.raises(DatasetError, match=r"dataset\.root is not set"):
        build_splits(_cfg(root, root=None), tmp_path)
