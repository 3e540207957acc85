"""Bad input is refused by name (or read correctly): 16-bit images and masks, settings out of range
before any data is read, hidden files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import compose_config
from ulsad_bench import runner
from ulsad_bench import spec as spec_module
from ulsad_bench.data import DatasetError, Sample, read_image, read_mask
from ulsad_bench.data.folder import read_category


def test_16_bit_images_are_scaled_by_the_16_bit_range(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path, 32)
    assert image.shape == (3, 32, 32) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0], np.rint(values / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(image[0], image[2])
    assert image.min() == 0 and image.max() == 255 and 100 < image.mean() < 155  # not all white


def test_32_bit_images_outside_16_bit_and_float_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(wide)
    with pytest.raises(DatasetError, match=r"wide\.tif is a 32-bit integer image"):
        read_image(wide, 8)
    floats = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(floats)
    with pytest.raises(DatasetError, match=r"float\.tif is a 32-bit floating-point image"):
        read_image(floats, 8)


def test_16_bit_masks_are_read_as_their_nonzero_pixels(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((16, 16), np.uint16)
    mask[2:6, 3:9] = 1  # a small 16-bit label value
    mask[10, 10] = 40000
    Image.fromarray(mask).save(tmp_path / "mask.png")
    sample = Sample(tmp_path / "img.png", 1, "dent", "structural", (tmp_path / "mask.png",))
    np.testing.assert_array_equal(read_mask(sample, 16), mask > 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=ulsad", "dataset.image_size=48"],
            "dataset.image_size=48 does not fit model=ulsad: expected a multiple of 32",
        ),
        (
            ["model=padim", "dataset.image_size=16"],
            "dataset.image_size=16 does not fit model=padim: expected at least 17",
        ),
        (["model=padim", "seed=-1"], "seed=-1: expected an integer in [0, 2^32)"),
        (["model=padim", f"seed={2**32}"], f"seed={2**32}: expected an integer in [0, 2^32)"),
        (["model=padim", "seed=abc"], "seed='abc': expected an integer in [0, 2^32)"),
        (["model=padim", "resume=sometimes"], "resume='sometimes': expected strict (default), content, config"),
    ],
)
def test_settings_out_of_range_fail_before_any_data_is_read(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], message: str
) -> None:
    def no_data(*_args, **_kwargs):
        raise AssertionError("data must not be read for a job with a bad setting")

    monkeypatch.setattr(spec_module, "build_splits", no_data)  # where a job lists its data (its spec)
    monkeypatch.setattr(runner, "load_data", no_data)
    record = runner.run(tiny_cfg(*overrides), tmp_path / "run")
    assert record["status"] == "failed"
    assert message in record["error"]


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    category = tmp_path / "bottle"
    for folder in ("train/good", "test/good", "test/dent", "ground_truth/dent", "test/.ipynb_checkpoints"):
        (category / folder).mkdir(parents=True)
    image = np.full((8, 8, 3), 100, np.uint8)
    for folder in ("train/good", "test/good", "test/dent"):
        Image.fromarray(image).save(category / folder / "0.png")
        (category / folder / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
        (category / folder / ".DS_Store").write_bytes(b"Bud1")
    Image.fromarray(image).save(category / "test" / ".ipynb_checkpoints" / "0.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(category / "ground_truth" / "dent" / "0_mask.png")
    found = read_category(category)
    assert [s.path.name for s in found.train] == ["0.png"]
    assert sorted((s.defect_type, s.path.name) for s in found.test) == [("dent", "0.png"), ("good", "0.png")]


def test_a_bad_setting_of_a_real_dataset_names_the_setting(shared_cache: Path, tmp_path: Path) -> None:
    cfg = compose_config(["dataset=mvtec", "model=ulsad", "dataset.image_size=100", f"cache_dir={shared_cache}"])
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed" and "dataset.image_size=100" in record["error"]
    assert "dataset.root" not in record["error"]  # refused before the (missing) dataset is looked at
