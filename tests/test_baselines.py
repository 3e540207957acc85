"""PatchCore and EfficientAD from anomalib: fit, predict and detect offline, through the one runner.

PaDiM's tests live in ``test_runner.py``. EfficientAD's autoencoder needs 256 px inputs, so its
tests upsample the 64 px test images to 256 and train a few steps only; the distilled teacher
takes one step. That is enough to detect the synthetic defects: the teacher's features,
standardised over the training images, stand out on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import TINY_DATA
from ulsad_bench import runner
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.anomalib_adapter import (
    DownloadRefusedError,
    import_anomalib,
    no_downloads,
    set_teacher_statistics,
)
from ulsad_bench.models.backbone import BackboneSpec, resolve_weights, sha256_of
from ulsad_bench.models.base import AnomalyModel, RunContext
from ulsad_bench.models.efficientad import EfficientAd
from ulsad_bench.models.efficientad.penalty import penalty_files
from ulsad_bench.models.efficientad.teacher import channel_mean_var, embed_patch_features
from ulsad_bench.records import RECORD_NAME
from ulsad_bench.spec import JobSpec

REPO = Path(__file__).resolve().parent.parent
# a few steps at 256 px: enough to detect the synthetic defects, cheap on two CPU cores
EFFICIENTAD_FAST = [
    "model=efficientad",
    "model.steps=3",
    "model.distillation.steps=1",
    "model.distillation.batch_size=2",
    "model.penalty_workers=0",
    "profile.enabled=false",
]


def run_and_keep_model(cfg, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, AnomalyModel]:
    """``runner.run`` that also hands back the fitted model."""
    built: list[AnomalyModel] = []
    build = runner.build_model

    def keep(spec):
        built.append(build(spec))
        return built[-1]

    monkeypatch.setattr(runner, "build_model", keep)
    record = runner.run(cfg, run_dir)
    assert record["status"] == "ok", record.get("traceback")
    return record, built[-1]


def check_predictions(model: AnomalyModel, cfg, run_dir: Path, map_size: int) -> None:
    """Raw maps ``[B, s, s]`` and scores ``[B]`` are finite; the harness's maps are at the size the model
    sees (the image size, or its centre crop)."""
    spec = JobSpec.from_config(cfg)
    _, _, test = runner.load_data(spec, spec.data.splits())
    images = test.float_images(slice(0, 3))
    with torch.inference_mode():
        out = model.predict(images)
    assert out.maps.shape == (3, map_size, map_size)
    assert out.scores.shape == (3,)
    assert torch.isfinite(out.maps).all() and torch.isfinite(out.scores).all()
    saved = np.load(run_dir / "maps.npz")
    size = spec.data.model_image_size
    assert saved["map"].shape[1:] == (size, size) and np.isfinite(saved["map"]).all()


def no_stray_folders(cwd: Path) -> None:
    assert not (cwd / "results").exists() and not (cwd / "datasets").exists()


# ---------------------------------------------------------------------------------------------- PatchCore


def test_patchcore_detects_structural_anomalies(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg("model=patchcore", "dataset.category=texture")
    record, model = run_and_keep_model(cfg, tmp_path / "run", monkeypatch)
    assert record["metrics"]["image_auroc"] > 0.85  # 0.92-0.96 for seeds 0-4
    assert record["metrics"]["pixel_auroc"] > 0.75  # 0.82-0.84 for seeds 0-4
    assert record["hyperparameters"] == {
        "layers": ["layer2", "layer3"],
        "coreset_sampling_ratio": 0.1,
        "num_neighbors": 9,
        "batch_size": 32,
        "blur_sigma": 4,
    }
    assert record["fit"]["memory_bank"] == int(0.1 * record["fit"]["train_patches"])
    assert record["weights"] == {"policy": "random", "random_init_seed": 0}
    check_predictions(model, cfg, tmp_path / "run", map_size=64)
    no_stray_folders(tmp_path)


def test_patchcore_entry_point_is_quiet(shared_cache: Path, tmp_path: Path) -> None:
    """Through ``run.py`` from another folder: no anomalib / timm warnings, no folders left behind."""
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "run.py"), f"hydra.run.dir={out}", "model=patchcore"]
    command += [f"cache_dir={shared_cache}", *TINY_DATA, "profile.enabled=false"]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / RECORD_NAME).read_text())["status"] == "ok"
    console = result.stdout + result.stderr
    assert "FutureWarning" not in console and "timm" not in console and "anomalib" not in console, console
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------------- EfficientAD


def test_efficientad_with_distilled_teacher_detects_structural_anomalies(
    tiny_cfg, shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(*EFFICIENTAD_FAST, "dataset.category=texture")
    record, model = run_and_keep_model(cfg, tmp_path / "run", monkeypatch)
    assert record["metrics"]["image_auroc"] > 0.9  # 1.0 for seeds 0-4
    assert record["metrics"]["pixel_auroc"] > 0.9  # 0.998 for seeds 0-4
    hp = record["hyperparameters"]
    assert hp["teacher"]["source"] == "distilled" and hp["teacher"]["backbone"] == "resnet18"
    assert hp["teacher"]["weights"] == record["weights"] == {"policy": "random", "random_init_seed": 0}
    assert hp["teacher"]["steps"] == 1 and hp["teacher"]["layers"] == ["layer2", "layer3"]
    assert hp["penalty"] == "off"
    # model.teacher=auto / model.penalty=auto with a random-init backbone: the substitutes, recorded as such
    assert (hp["teacher_setting"], hp["penalty_setting"], hp["paper_setting"]) == ("distilled", "off", False)
    assert (hp["steps"], hp["batch_size"], hp["input_size"], hp["model_size"]) == (3, 1, 256, "small")
    assert (hp["lr"], hp["weight_decay"], hp["map_quantiles"]) == (1e-4, 1e-5, [0.9, 0.995])
    assert record["fit"]["steps"] == 3 and record["fit"]["val_images"] > 0
    assert set(record["fit"]["quantiles"]) == {"qa_st", "qb_st", "qa_ae", "qb_ae"}
    check_predictions(model, cfg, tmp_path / "run", map_size=256)
    no_stray_folders(tmp_path)
    # the teacher does not depend on the run seed: it is cached for the other seeds
    keys = [json.loads(p.read_text()) for p in (shared_cache / "features").glob("*.json")]
    assert any(k.get("what") == "efficientad-teacher" and k["steps"] == 1 for k in keys)


def small_pdn_file(path: Path) -> Path:
    torch_model = import_anomalib("anomalib.models.image.efficient_ad.torch_model")
    torch.save(torch_model.SmallPatchDescriptionNetwork(out_channels=384).state_dict(), path)
    return path


def random_images(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_efficientad_with_teacher_file_and_penalty_folder(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    teacher = small_pdn_file(tmp_path / "pretrained_teacher_small.pth")
    random_images(tmp_path / "penalty" / "class_a", 2)  # ImageFolder layout, as imagenette2
    random_images(tmp_path / "penalty" / "class_b", 1, seed=1)
    cfg = tiny_cfg(
        *EFFICIENTAD_FAST,
        "dataset.category=texture",
        "model.steps=2",
        "model.penalty_workers=1",
        f"model.teacher_weights={teacher}",
        f"model.penalty_dir={tmp_path / 'penalty'}",
    )
    record, _ = run_and_keep_model(cfg, tmp_path / "run", monkeypatch)
    assert record["hyperparameters"]["teacher"] == {
        "source": "file",
        "file": str(teacher),
        "sha256": sha256_of(str(teacher)),
    }
    assert record["hyperparameters"]["penalty"] == {"dir": str(tmp_path / "penalty"), "images": 3}
    assert record["fit"]["steps"] == 2
    assert all(np.isfinite(v) for v in record["metrics"].values())


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.teacher_weights=/nowhere/pretrained_teacher_small.pth",
            [
                "TeacherWeightsNotFoundError",
                "/nowhere/pretrained_teacher_small.pth",
                "efficientad_pretrained_weights.zip",
                "model.teacher_weights=null",
            ],
        ),
        ("model.penalty_dir=/nowhere/imagenette2", ["/nowhere/imagenette2", "imagenette2.tgz", "penalty_dir=null"]),
    ],
    ids=["teacher", "penalty"],
)
def test_efficientad_missing_files_are_named(tiny_cfg, tmp_path: Path, override: str, expected: list[str]) -> None:
    record = runner.run(tiny_cfg(*EFFICIENTAD_FAST, override), tmp_path / "run")
    assert record["status"] == "failed"
    for text in expected:
        assert text in record["error"]


def test_penalty_folder_flat_or_with_class_subfolders(tmp_path: Path) -> None:
    random_images(tmp_path / "flat", 2)
    random_images(tmp_path / "nested" / "n01440764", 2)
    (tmp_path / "nested" / "README.txt").write_text("not an image")
    assert [p.name for p in penalty_files(str(tmp_path / "flat"))] == ["0.png", "1.png"]
    assert len(penalty_files(str(tmp_path / "nested"))) == 2


def test_anomalib_downloads_are_refused_with_the_file_to_provide(tmp_path: Path, monkeypatch) -> None:
    """What anomalib's EfficientAd and timm would fetch raises at once, naming the file and the config value."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    lightning = import_anomalib("anomalib.models.image.efficient_ad.lightning_model")
    timm_extractor = import_anomalib("anomalib.models.components").TimmFeatureExtractor
    original = lightning.download_and_extract
    module = lightning.EfficientAd(imagenet_dir=tmp_path / "imagenette", evaluator=False, visualizer=False)
    with no_downloads():
        with pytest.raises(DownloadRefusedError, match=r"efficientad_pretrained_weights\.zip.*model\.teacher_weights"):
            module.prepare_pretrained_model()
        with pytest.raises(DownloadRefusedError, match=r"imagenette2\.tgz.*model\.penalty_dir"):
            module.prepare_imagenette_data((256, 256))
        with pytest.raises(DownloadRefusedError, match=r"backbone\.weights"):
            timm_extractor(backbone="resnet18", layers=["layer2"], pre_trained=True)
    assert lightning.download_and_extract is original
    no_stray_folders(tmp_path)


def efficientad_context(image_size: int = 256) -> RunContext:
    return RunContext(
        device=torch.device("cpu"),
        seed=0,
        image_size=image_size,
        backbone=BackboneSpec("resnet18", resolve_weights("resnet18", "random")),
        feature_cache=FeatureCache(None, enabled=False),
        progress=False,
    )


def test_efficientad_losses_are_anomalibs(tmp_path: Path) -> None:
    """The harness's training losses equal anomalib's ``compute_losses``; without penalty, less its term."""
    model = EfficientAd()
    model.setup(efficientad_context())
    set_teacher_statistics(model.model, mean=torch.rand(384), std=1 + torch.rand(384))
    batch, penalty = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    model.model.train()
    torch.manual_seed(5)
    reference = model.model(batch=batch, batch_imagenet=penalty)
    torch.manual_seed(5)
    ours = model.losses(batch, penalty)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b)
    torch.manual_seed(5)
    without = model.losses(batch, None)
    with torch.no_grad():
        term = torch.mean(model.model.student(penalty)[:, :384] ** 2)
    torch.testing.assert_close(without[0] + term, reference[0])
    torch.testing.assert_close(without[1:], reference[1:])


def reference_patch_embedding(features: list[torch.Tensor], out: int, patch: int, layer_dim: int) -> torch.Tensor:
    """The EfficientAD pretraining's order: unfold, resize the patches, pool each, stack, pool."""
    b, _, h0, w0 = features[0].shape
    per_layer = []
    for layer in features:
        _, c, h, w = layer.shape
        patches = F.unfold(layer, patch, padding=patch // 2).view(b, c * patch * patch, h, w)
        patches = F.interpolate(patches, size=(h0, w0), mode="bilinear", align_corners=False)
        vectors = patches.permute(0, 2, 3, 1).reshape(-1, 1, c * patch * patch)
        per_layer.append(F.adaptive_avg_pool1d(vectors, layer_dim)[:, 0])
    stacked = torch.stack(per_layer, dim=1).reshape(-1, 1, layer_dim * len(features))
    return F.adaptive_avg_pool1d(stacked, out).view(b, h0, w0, out).permute(0, 3, 1, 2)


def test_patch_embedding_is_the_pretrainings() -> None:
    torch.manual_seed(0)
    features = [torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4)]
    ours = embed_patch_features(features, out_channels=7, patch_size=3, layer_dim=20)
    torch.testing.assert_close(ours, reference_patch_embedding(features, 7, 3, 20))
    assert ours.shape == (2, 7, 8, 8)


def test_efficientad_upsamples_small_images_and_refuses_small_input_size() -> None:
    model = EfficientAd()
    model.setup(efficientad_context(image_size=64))
    assert model.hyperparameters()["input_size"] == 256
    with pytest.raises(ValueError, match="at least 256"):
        EfficientAd(input_size=128)


@pytest.mark.slow
def test_baselines_at_256_px_with_wide_resnet(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    """The realistic setting (opt in: ``-m slow``): 256 px, Wide-ResNet-50-2, more training."""
    size = ["dataset.image_size=256", "dataset.synthetic.resolution=256", "backbone=wide_resnet50_2"]
    size += ["backbone.weights=random", "dataset.category=texture"]
    efficientad = [*EFFICIENTAD_FAST, "model.steps=200", "model.distillation.steps=20"]
    for name, overrides in (("patchcore", ["model=patchcore"]), ("efficientad", efficientad)):
        record, _ = run_and_keep_model(tiny_cfg(*size, *overrides), tmp_path / name, monkeypatch)
        assert record["metrics"]["image_auroc"] > 0.9, name


def test_channel_mean_var_streams_the_population_statistics() -> None:
    maps = torch.randn(7, 5, 3, 4, dtype=torch.float64) * 3 + 1
    mean, var = channel_mean_var([maps[:3], maps[3:]])
    assert torch.allclose(mean, maps.mean(dim=(0, 2, 3)))
    assert torch.allclose(var, maps.var(dim=(0, 2, 3), correction=0))
    with pytest.raises(ValueError, match="at least one batch"):
        channel_mean_var([])
