"""The five benchmark datasets in their published layouts, as tiny copies, and the dataset check.

Each builder writes a few 16 x 16 images in the layout the dataset is distributed in (file
names, suffixes, mask conventions and pixel values as published); the tests read them through
the real config (``dataset=NAME dataset.root=...``) and the one ``Sample`` path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import compose_config
from ulsad_bench.data import DatasetError, build_splits, categories_of, read_image, read_mask, with_category
from ulsad_bench.data.__main__ import main

S = 16  # image side of every tiny copy; also dataset.image_size, so pixel counts are exact


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # the format follows the suffix (.png, .bmp, .JPG)
    return path


def _image(path: Path, value: int, gray: bool = False) -> Path:
    return _save(path, np.full((S, S) if gray else (S, S, 3), value, np.uint8))


def _mask(path: Path, rows: slice, cols: slice, value: int = 255) -> Path:
    mask = np.zeros((S, S), np.uint8)
    mask[rows, cols] = value
    return _save(path, mask)


# ----------------------------------------------------------------------------- layouts


def make_mvtec(root: Path, category: str = "bottle", gray: bool = False) -> Path:
    """MVTec AD / MPDD: train/good, test/{good,<defect>}, ground_truth/<defect>/<stem>_mask.png.

    5 train, 2 normal test, 3 anomalous test (crack: 2, scratch: 1); 4 + 4 + 2 defect pixels.
    """
    cat = root / category
    for i in range(5):
        _image(cat / "train" / "good" / f"{i:03d}.png", 100 + i, gray)
    for i in range(2):
        _image(cat / "test" / "good" / f"{i:03d}.png", 100, gray)
    for defect, n in (("crack", 2), ("scratch", 1)):
        for i in range(n):
            _image(cat / "test" / defect / f"{i:03d}.png", 30, gray)
            size = (slice(0, 2), slice(0, 2)) if defect == "crack" else (slice(5, 6), slice(5, 7))
            _mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png", *size)
    return cat


def make_loco(root: Path, category: str = "pushpins") -> Path:
    """MVTec LOCO: train/good, validation/good, test/{good,logical_anomalies,structural_anomalies},
    ground_truth/<kind>/<image id>/000.png, 001.png, ... with one pixel value per mask file.

    4 train, 2 validation, 2 normal test, 2 logical, 1 structural. Logical image 000 has two
    masks (value 255 on rows 0-3, value 7 on rows 2-5, cols 0-3): union 24 pixels.
    """
    cat = root / category
    for split, n in (("train", 4), ("validation", 2), ("test", 2)):
        for i in range(n):
            _image(cat / split / "good" / f"{i:03d}.png", 120 + i)
    for i in range(2):
        _image(cat / "test" / "logical_anomalies" / f"{i:03d}.png", 60)
    _image(cat / "test" / "structural_anomalies" / "000.png", 20)
    logical = cat / "ground_truth" / "logical_anomalies"
    _mask(logical / "000" / "000.png", slice(0, 4), slice(0, 4), 255)
    _mask(logical / "000" / "001.png", slice(2, 6), slice(0, 4), 7)
    _mask(logical / "001" / "000.png", slice(10, 12), slice(10, 12), 255)
    _mask(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png", slice(8, 9), slice(0, 3), 255)
    return cat


VISA_OBJECTS = ("candle", "capsules")


def make_visa(root: Path) -> Path:
    """VisA as distributed: split_csv/1cls.csv + <object>/Data/Images/{Normal,Anomaly}/*.JPG and
    <object>/Data/Masks/Anomaly/*.png with small values (1, 2) on the defect pixels.

    Per object: 4 train, 2 normal test, 2 anomalous test (4 + 6 defect pixels).
    """
    rows = ["object,split,label,image,mask"]
    for obj in VISA_OBJECTS:
        data = Path(obj) / "Data"
        for i in range(6):
            name = data / "Images" / "Normal" / f"{i:04d}.JPG"
            _image(root / name, 90 + i)
            rows.append(f"{obj},{'train' if i < 4 else 'test'},normal,{name.as_posix()},")
        for i, (value, rows_slice) in enumerate(((1, slice(0, 2)), (2, slice(4, 7)))):
            name, mask = data / "Images" / "Anomaly" / f"{i:03d}.JPG", data / "Masks" / "Anomaly" / f"{i:03d}.png"
            _image(root / name, 10)
            _mask(root / mask, rows_slice, slice(0, 2), value)
            rows.append(f"{obj},test,anomaly,{name.as_posix()},{mask.as_posix()}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_visa_prepared(root: Path, category: str = "candle") -> Path:
    """anomalib's prepared VisA: visa_pytorch/<object>/train/good, test/{good,bad}, ground_truth/bad/<stem>.png."""
    cat = root / "visa_pytorch" / category
    for i in range(4):
        _image(cat / "train" / "good" / f"{i:04d}.JPG", 90 + i)
    _image(cat / "test" / "good" / "0004.JPG", 90)
    _image(cat / "test" / "bad" / "000.JPG", 10)
    _mask(cat / "ground_truth" / "bad" / "000.png", slice(0, 2), slice(0, 2), 255)
    return root


def make_btad(root: Path) -> Path:
    """BTAD (BTech_Dataset_transformed): <product>/train/ok, test/{ok,ko}, ground_truth/ko/<stem>.<ext>.

    01: .bmp images, .png masks; 02: .png images and masks; 03: .bmp images and masks.
    Per product: 3 train, 1 normal test, 2 anomalous test (2 + 2 defect pixels).
    """
    for product, image_ext, mask_ext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        cat = root / product
        for i in range(3):
            _image(cat / "train" / "ok" / f"{i:04d}{image_ext}", 80 + i)
        _image(cat / "test" / "ok" / f"0000{image_ext}", 80)
        for i in range(2):
            _image(cat / "test" / "ko" / f"{i:04d}{image_ext}", 15)
            _mask(cat / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", slice(i, i + 1), slice(0, 2))
    return root


def _dataset(name: str, root: Path, *overrides: str):
    return compose_config(
        [f"dataset={name}", f"dataset.root={root}", f"dataset.image_size={S}", "dataset.val_fraction=0.25", *overrides]
    ).dataset


def _defect_pixels(splits) -> int:
    return sum(int(read_mask(s, S).sum()) for s in splits.test)


# ----------------------------------------------------------------------------- reading each layout


@pytest.mark.parametrize("name", ["mvtec", "mpdd"])
def test_mvtec_and_mpdd_layout(tmp_path: Path, name: str) -> None:
    category = "bottle" if name == "mvtec" else "tubes"
    make_mvtec(tmp_path, category)
    splits = build_splits(_dataset(name, tmp_path, f"dataset.category={category}"), tmp_path)
    assert splits.counts() == {"train": 4, "val": 1, "test_normal": 2, "test_anomalous": 3, "test_structural": 3}
    assert splits.val_source.startswith("holdout 0.25")
    assert sorted({s.defect_type for s in splits.test if s.label}) == ["crack", "scratch"]
    assert _defect_pixels(splits) == 4 + 4 + 2


def test_grayscale_mvtec_category_reads_as_rgb(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "grid", gray=True)
    splits = build_splits(_dataset("mvtec", tmp_path, "dataset.category=grid"), tmp_path)
    with Image.open(splits.train[0].path) as stored:
        assert stored.mode == "L"
    image = read_image(splits.train[0].path, S)
    assert image.shape == (3, S, S) and (image[0] == image[2]).all()
    assert _defect_pixels(splits) == 10


def test_loco_layout_validation_kinds_and_mask_union(tmp_path: Path) -> None:
    make_loco(tmp_path)
    splits = build_splits(_dataset("mvtec_loco", tmp_path, "dataset.category=pushpins"), tmp_path)
    assert splits.counts() == {
        "train": 4,
        "val": 2,
        "test_normal": 2,
        "test_anomalous": 3,
        "test_logical": 2,
        "test_structural": 1,
    }
    assert splits.val_source == "validation folder"
    first = next(s for s in splits.test if s.defect_type == "logical_anomalies")
    assert [p.name for p in first.mask_paths] == ["000.png", "001.png"]
    assert {int(np.asarray(Image.open(p)).max()) for p in first.mask_paths} == {255, 7}
    union = read_mask(first, S)
    expected = np.zeros((S, S), bool)
    expected[0:6, 0:4] = True
    assert (union == expected).all()


def test_loco_without_validation_folder_is_an_error(tmp_path: Path) -> None:
    cat = make_loco(tmp_path)
    for path in (cat / "validation" / "good").iterdir():
        path.unlink()
    (cat / "validation" / "good").rmdir()
    with pytest.raises(DatasetError, match=r"pushpins has no validation/ folder"):
        build_splits(_dataset("mvtec_loco", tmp_path, "dataset.category=pushpins"), tmp_path)


def test_visa_csv_layout_with_small_mask_values(tmp_path: Path) -> None:
    make_visa(tmp_path)
    splits = build_splits(_dataset("visa", tmp_path, "dataset.category=capsules"), tmp_path)
    assert splits.counts() == {"train": 3, "val": 1, "test_normal": 2, "test_anomalous": 2, "test_structural": 2}
    assert all(s.path.parts[-5] == "capsules" and s.path.suffix == ".JPG" for s in splits.test)
    anomalous = [s for s in splits.test if s.label]
    assert {int(np.asarray(Image.open(s.mask_paths[0])).max()) for s in anomalous} == {1, 2}
    assert [int(read_mask(s, S).sum()) for s in anomalous] == [4, 6]


@pytest.mark.parametrize("root_is_visa_pytorch", [False, True])
def test_visa_prepared_layout(tmp_path: Path, root_is_visa_pytorch: bool) -> None:
    make_visa_prepared(tmp_path)
    root = tmp_path / "visa_pytorch" if root_is_visa_pytorch else tmp_path
    splits = build_splits(_dataset("visa", root), tmp_path)
    assert splits.counts()["test_anomalous"] == 1 and splits.counts()["test_normal"] == 1
    assert len(splits.train) + len(splits.val) == 4
    assert _defect_pixels(splits) == 4


def test_visa_prefers_the_distributed_csv_and_layout_can_be_forced(tmp_path: Path) -> None:
    make_visa(tmp_path)
    make_visa_prepared(tmp_path)
    assert sum(s.label for s in build_splits(_dataset("visa", tmp_path), tmp_path).test) == 2
    forced = build_splits(_dataset("visa", tmp_path, "dataset.layout=prepared"), tmp_path)
    assert sum(s.label for s in forced.test) == 1


def test_visa_without_either_layout_names_both(tmp_path: Path) -> None:
    (tmp_path / "candle").mkdir()
    with pytest.raises(
        DatasetError, match=r"neither VisA layout .*split_csv/1cls\.csv.*candle/train/good.*visa_pytorch"
    ):
        build_splits(_dataset("visa", tmp_path), tmp_path)


def test_btad_bmp_and_png(tmp_path: Path) -> None:
    make_btad(tmp_path)
    for product, image_ext, mask_ext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        splits = build_splits(_dataset("btad", tmp_path, f"dataset.category={product}"), tmp_path)
        assert splits.counts() == {"train": 2, "val": 1, "test_normal": 1, "test_anomalous": 2, "test_structural": 2}
        anomalous = [s for s in splits.test if s.label]
        assert {s.path.suffix for s in splits.test} == {image_ext}
        assert [s.mask_paths[0].name for s in anomalous] == [f"0000{mask_ext}", f"0001{mask_ext}"]
        assert all(s.defect_type == "ko" for s in anomalous)
        assert _defect_pixels(splits) == 4


def test_category_all_expands_to_the_configured_list(tmp_path: Path) -> None:
    cfg = _dataset("btad", tmp_path, "dataset.category=all")
    assert categories_of(cfg) == ["01", "02", "03"]
    assert [with_category(cfg, c).category for c in categories_of(cfg)] == ["01", "02", "03"]
    assert categories_of(_dataset("btad", tmp_path, "dataset.category=02")) == ["02"]
    for name, n in (("mvtec", 15), ("visa", 12), ("mvtec_loco", 5), ("mpdd", 6), ("btad", 3)):
        assert len(categories_of(_dataset(name, tmp_path, "dataset.category=all"))) == n
    with pytest.raises(
        DatasetError, match=r"dataset\.category=all names all 3 categories .*-m dataset\.category=01,02,03"
    ):
        build_splits(cfg, tmp_path)


# ----------------------------------------------------------------------------- errors, as a job sees them


def test_visa_mask_errors_name_the_files(tmp_path: Path) -> None:
    make_visa(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"  # line 1 header, 2-7 normal rows, 8-9 anomalous rows
    (tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    missing_file = (
        r"no ground-truth mask for anomalous image .*candle/Data/Images/Anomaly/001\.JPG: "
        r".*candle/Data/Masks/Anomaly/001\.png \(listed in .*split_csv/1cls\.csv line 9\) not found"
    )
    with pytest.raises(DatasetError, match=missing_file):
        build_splits(_dataset("visa", tmp_path), tmp_path)
    text = csv_path.read_text().replace("candle/Data/Masks/Anomaly/001.png", "")
    csv_path.write_text(text)
    empty_column = r"anomalous image .*001\.JPG: the mask column of .*1cls\.csv line 9 is empty"
    with pytest.raises(DatasetError, match=empty_column):
        build_splits(_dataset("visa", tmp_path), tmp_path)
    csv_path.write_text(text.replace("object,split,label,image,mask", "object,split,label,image"))
    with pytest.raises(DatasetError, match=r"expected the header object,split,label,image,mask \(missing mask\)"):
        build_splits(_dataset("visa", tmp_path), tmp_path)


def test_visa_object_missing_from_csv(tmp_path: Path) -> None:
    make_visa(tmp_path)
    with pytest.raises(DatasetError, match=r"no rows for object 'pcb1' in .*1cls\.csv"):
        build_splits(_dataset("visa", tmp_path, "dataset.category=pcb1"), tmp_path)


# ----------------------------------------------------------------------------- the dataset check


def _check(capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, list[dict], str]:
    code = main([f"dataset.image_size={S}", *overrides])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_check_prints_one_json_object_per_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_visa(tmp_path)
    code, lines, _ = _check(
        capsys,
        "dataset=visa",
        f"dataset.root={tmp_path}",
        "dataset.category=all",
        "dataset.categories=[candle,capsules]",
    )
    assert code == 0
    assert [line["category"] for line in lines] == ["candle", "capsules"]
    first = lines[0]
    # VisA has no validation split: val_fraction 0.1 of 4 training normals rounds up to one image
    assert {k: first[k] for k in ("train", "val", "test_normal", "test_anomalous")} == {
        "train": 3,
        "val": 1,
        "test_normal": 2,
        "test_anomalous": 2,
    }
    assert first["val_source"] == "holdout 0.1 of train (split_seed=0)"
    assert first["dataset"] == "visa" and "logical" not in first
    assert first["path"] == str(tmp_path / "candle" / "Data" / "Images") and first["image_size"] == S
    assert first["anomalous_pixel_fraction"] == pytest.approx((4 + 6) / (4 * S * S), abs=1e-6)


def test_check_reports_logical_and_structural_for_loco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_loco(tmp_path)
    code, (line,), _ = _check(capsys, "dataset=mvtec_loco", f"dataset.root={tmp_path}", "dataset.category=pushpins")
    assert code == 0
    assert {k: line[k] for k in ("train", "val", "test_normal", "test_anomalous", "logical", "structural")} == {
        "train": 4,
        "val": 2,
        "test_normal": 2,
        "test_anomalous": 3,
        "logical": 2,
        "structural": 1,
    }
    assert line["anomalous_pixel_fraction"] == pytest.approx((24 + 4 + 3) / (5 * S * S), abs=1e-6)


def _broken_mpdd(root: Path, fault: str) -> Path:
    cat = make_mvtec(root, "tubes")
    if fault == "missing mask":
        (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    elif fault == "empty folder":
        for path in (cat / "test" / "good").iterdir():
            path.unlink()
    elif fault == "unreadable image":
        (cat / "train" / "good" / "002.png").write_bytes(b"\x89PNG but not really")
    elif fault == "unreadable mask":
        (cat / "ground_truth" / "scratch" / "000_mask.png").write_bytes(b"")
    return cat


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "missing mask",
            r"no ground-truth mask for anomalous image .*tubes/test/crack/001\.png: looked for .*001_mask\.png",
        ),
        ("empty folder", r"empty folder .*tubes/test/good: expected test images"),
        ("unreadable image", r"unreadable image file .*tubes/train/good/002\.png: expected a PNG/JPEG/BMP image"),
        ("unreadable mask", r"unreadable mask file .*tubes/ground_truth/scratch/000_mask\.png: expected a PNG"),
    ],
)
def test_check_fails_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str, message: str
) -> None:
    make_mvtec(tmp_path, "metal_plate")  # a complete category next to the broken one is still reported
    _broken_mpdd(tmp_path, fault)
    code, lines, err = _check(
        capsys,
        "dataset=mpdd",
        f"dataset.root={tmp_path}",
        "dataset.category=all",
        "dataset.categories=[metal_plate,tubes]",
    )
    assert code == 1
    assert [line["category"] for line in lines] == ["metal_plate"]
    assert "dataset error (mpdd/tubes)" in err and "1 of 2 categories of mpdd are incomplete" in err
    assert re.search(message, err), err


def test_check_unknown_category_and_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = _check(capsys, "dataset=btad", f"dataset.root={tmp_path}", "dataset.category=04")
    assert code == 1 and not lines
    assert "unknown category '04' for dataset 'btad': expected one of 01, 02, 03 (or all)" in err
    code, _, err = _check(capsys, "dataset=btad", f"dataset.root={tmp_path / 'nowhere'}")
    assert code == 1 and f"dataset.root {tmp_path / 'nowhere'} does not exist" in err
    code, _, err = _check(capsys, "dataset=nope")
    assert code == 2 and "Could not find 'dataset/nope'" in err


def test_check_runs_as_a_module(tmp_path: Path) -> None:
    make_btad(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ulsad_bench.data", "dataset=btad", f"dataset.root={tmp_path}", "dataset.category=all"],
        cwd=tmp_path,  # from outside the repository
        capture_output=True,
        text=True,
        env={**os.environ, "ULSAD_BENCH_CACHE": str(tmp_path / "cache")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["category"] for line in lines] == ["01", "02", "03"]
    assert all(line["test_anomalous"] == 2 and line["train"] + line["val"] == 3 for line in lines)
    assert "Warning" not in result.stderr
