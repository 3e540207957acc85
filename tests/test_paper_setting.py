"""The paper's setting by default: weights, resizing, training sets, ULSAD's calibration and
batches, EfficientAD's teacher and penalty, PatchCore's centre crop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import compose_config, mvtec_cfg, tiny_mvtec
from ulsad_bench import runner
from ulsad_bench.data import read_image, read_mask
from ulsad_bench.data.sample import Sample
from ulsad_bench.models.efficientad.teacher import TeacherWeightsNotFoundError
from ulsad_bench.spec import JobSpec

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- resizing


def test_default_resize_is_opencv_inter_linear_to_the_grey_level(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)  # high frequencies: filters differ most
    Image.fromarray(texture).save(tmp_path / "big.png")
    ours = read_image(tmp_path / "big.png", 64).transpose(1, 2, 0)
    np.testing.assert_array_equal(ours, cv2.resize(texture, (64, 64), interpolation=cv2.INTER_LINEAR))
    pil = read_image(tmp_path / "big.png", 64, "pil_bilinear").transpose(1, 2, 0)
    assert np.abs(pil.astype(int) - ours.astype(int)).mean() > 5  # PIL antialiases: a different image
    mask = np.zeros((300, 300), np.uint8)
    mask[100:151, 37:90] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    sample = Sample(tmp_path / "big.png", 1, "dent", "structural", (tmp_path / "mask.png",))
    expected = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST) > 0  # albumentations' mask resize
    np.testing.assert_array_equal(read_mask(sample, 64), expected)
    with pytest.raises(ValueError, match=r"dataset\.resize='area'"):
        read_image(tmp_path / "big.png", 64, "area")


# ----------------------------------------------------------------------------- training sets


@pytest.mark.parametrize(
    ("model", "uses_validation"),
    [("padim", False), ("patchcore", False), ("dfr", False), ("ulsad", True), ("efficientad", True)],
)
def test_models_without_validation_train_on_every_training_image(
    model: str, uses_validation: bool, tmp_path: Path, shared_cache: Path
) -> None:
    root = tiny_mvtec(tmp_path / "data")  # 10 training images, no validation folder
    splits = JobSpec.from_config(mvtec_cfg(root, shared_cache, f"model={model}")).data.splits()
    assert (len(splits.train), len(splits.val)) == ((9, 1) if uses_validation else (10, 0))
    kept_cfg = mvtec_cfg(root, shared_cache, f"model={model}", "dataset.validation_for_all=true")
    kept = JobSpec.from_config(kept_cfg).data.splits()
    assert (len(kept.train), len(kept.val)) == (9, 1)


def test_padim_records_count_every_training_image(tmp_path: Path, shared_cache: Path) -> None:
    record = runner.run(mvtec_cfg(tiny_mvtec(tmp_path / "data"), shared_cache), tmp_path / "run")
    assert record["status"] == "ok" and record["data"]["train"] == 10 and record["data"]["val"] == 0
    assert record["val_source"].startswith("none: the model uses no validation split")


# ----------------------------------------------------------------------------- ULSAD


def test_ulsad_trains_on_49_images_dropping_the_partial_batch(tmp_path: Path, shared_cache: Path) -> None:
    """MPDD metal_plate: 54 training normals, 49 after the 10 % hold-out = 6 x 8 + 1."""
    root = tiny_mvtec(tmp_path / "data", n_train=54)
    cfg = mvtec_cfg(root, shared_cache, "model=ulsad", "model.feature_dim=16", "model.epochs=1")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    assert record["data"]["train"] == 49 and record["hyperparameters"]["drop_last"] is True


def test_ulsad_quantiles_are_taken_on_the_blurred_maps(tiny_cfg) -> None:
    job = runner.prepare(JobSpec.from_config(tiny_cfg("model=ulsad", "model.feature_dim=16", "model.epochs=1")))
    model, val = job.model, job.val
    model.fit(job.train, val)
    model.eval()
    blurred, upsampled = [], []
    with torch.no_grad():
        features = model.features(val)
        local, _ = model.net.raw_maps(model.net.standardize(features), val.float_images(slice(None)))
        up = model.net.upsample(local)
        upsampled.append(up.numpy().ravel())
        blurred.append(model.net.blur(up[:, None])[:, 0].numpy().ravel())
    q_blurred = np.quantile(np.concatenate(blurred).astype(np.float64), [model.alpha, model.beta])
    q_upsampled = np.quantile(np.concatenate(upsampled).astype(np.float64), [model.alpha, model.beta])
    got = [model.quantiles["local_alpha"], model.quantiles["local_beta"]]
    np.testing.assert_allclose(got, q_blurred, rtol=1e-5)
    assert not np.allclose(got, q_upsampled, rtol=1e-5)


# ----------------------------------------------------------------------------- EfficientAD


def test_efficientad_paper_setting_needs_teacher_and_penalty_files(tmp_path: Path, shared_cache: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    root = tiny_mvtec(tmp_path / "data")
    base = ["model=efficientad", f"backbone.weights={weights}"]
    with pytest.raises(TeacherWeightsNotFoundError) as info:
        runner.check_inputs(JobSpec.from_config(mvtec_cfg(root, shared_cache, *base)))
    message = str(info.value)
    assert "pretrained_teacher_small.pth" in message and "imagenette2" in message
    assert "model.teacher=distilled" in message and "model.penalty=off" in message
    substitute = mvtec_cfg(root, shared_cache, *base, "model.teacher=distilled", "model.penalty=off")
    runner.check_inputs(JobSpec.from_config(substitute))


def test_a_substitute_efficientad_is_marked_in_tables(tmp_path: Path) -> None:
    """The record of a substitute EfficientAD (see test_baselines' distilled-teacher run) is marked."""
    from tests.test_report import write_run
    from ulsad_bench.records import write_record
    from ulsad_bench.report import build_report

    for seed in range(2):
        run = write_run(
            tmp_path / "out",
            model="efficientad",
            dataset="synthetic",
            category="pinbox",
            seed=seed,
            image_auroc=0.8,
            weights="random",
        )
        record = json.loads((run / "record.json").read_text())
        record["hyperparameters"] = {"teacher_setting": "distilled", "penalty_setting": "off", "paper_setting": False}
        write_record(run, record)
    report = build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    table = report.table("table01_image_auroc")
    assert table is not None and any("NOT THE PAPER'S SETTING" in w for w in table.warnings)
    assert any("EffAD: teacher distilled, penalty off" in n for n in table.notes)


# ----------------------------------------------------------------------------- PatchCore's centre crop


def test_patchcore_is_evaluated_on_a_centre_crop_and_tables_say_so(tiny_cfg, tmp_path: Path) -> None:
    from ulsad_bench.report import build_report

    record = runner.run(tiny_cfg("model=patchcore"), tmp_path / "out" / "run")
    assert record["status"] == "ok" and record["data"]["center_crop"] == 56  # 0.875 of 64, as 224 of 256
    maps = np.load(tmp_path / "out" / "run" / "maps.npz")
    assert maps["map"].shape[1:] == (56, 56) and maps["mask"].shape[1:] == (56, 56)
    spec = JobSpec.from_config(tiny_cfg("model=patchcore"))
    _, _, test = runner.load_data(spec, spec.data.splits())
    cropped = test.center_crop(56)
    np.testing.assert_array_equal(cropped.masks.numpy(), test.masks.numpy()[:, 4:60, 4:60])
    np.testing.assert_array_equal(cropped.images.numpy(), test.images.numpy()[:, :, 4:60, 4:60])
    report = build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    notes = report.table("table01_image_auroc").notes
    assert any("Evaluated on centre crops" in n and "PatchCore (56 of 64 px)" in n for n in notes)


# ----------------------------------------------------------------------------- weights under every entry point


def _published_resnet18(torch_home: Path) -> Path:
    path = torch_home / "hub" / "checkpoints" / "resnet18-5c106cde.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_imagenet_weights_load_from_the_documented_folder_under_every_entry_point(
    tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tiny_mvtec(tmp_path / "data")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = _published_resnet18(tmp_path / "torch")
    data = ["dataset=mvtec", f"dataset.root={root}", "dataset.category=bottle", "dataset.categories=[bottle]"]
    common = [*data, "dataset.image_size=32", "backbone=resnet18", "backbone.weights=imagenet", "backbone.verify=false"]
    common += [f"cache_dir={shared_cache}", "progress=false", "profile.enabled=false"]
    # run.py (its own process: the folder comes from TORCH_HOME, not from XDG_CACHE_HOME)
    out = tmp_path / "run"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    result = subprocess.run(
        [sys.executable, "run.py", f"hydra.run.dir={out}", "model=padim", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "record.json").read_text())
    assert record["weights"]["file"] == str(weights) and record["weights"]["verified"] is False
    # make sweep: the pre-flight finds the file, the sweep runs
    from ulsad_bench.sweep import main as sweep_main

    code = sweep_main(
        [
            "dataset=mvtec",
            f"root={root}",
            "models=padim",
            "seeds=0",
            "categories=bottle",
            f"results={tmp_path / 'r'}",
            "--",
            *[o for o in common if not o.startswith("dataset.root")],
        ]
    )
    assert code == 0
    # make bench
    from ulsad_bench import bench

    assert (
        bench.main(
            [
                "--models",
                "padim",
                "--out",
                str(tmp_path / "b"),
                "dataset.image_size=64",
                "backbone=resnet18",
                "backbone.weights=imagenet",
                "dataset.synthetic.n_train=4",
                "profile.batch_size=2",
                "profile.warmup_batches=1",
                "profile.timed_batches=1",
                f"cache_dir={shared_cache}",
                "backbone.verify=false",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "b" / "efficiency.json").read_text())["models"]["padim"]["throughput_img_s"] > 0


def test_a_run_without_the_file_names_it(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = mvtec_cfg(
        tiny_mvtec(tmp_path / "data"), shared_cache, "backbone=wide_resnet50_2", "backbone.weights=imagenet"
    )
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed" and "wide_resnet50_racm-8234f177.pth" in record["error"]
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in record["error"]


# ----------------------------------------------------------------------------- DFR


def test_dfr_trains_700_epochs_by_default_and_the_shipped_150_is_a_named_variant() -> None:
    """YoungGod/DFR: 700 for MVTec AD (first commit), 150 "for wine" (README, "The paper's setting")."""
    paper = compose_config(["model=dfr"])
    assert paper.model.epochs == 700 and paper.variant is None
    shipped = compose_config(["+dfr=shipped_code"])
    assert shipped.model.name == "dfr" and shipped.model.epochs == 150 and shipped.variant == "dfr-epochs150"
