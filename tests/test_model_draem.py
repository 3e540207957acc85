"""DRAEM (anomalib 2.7's torch model, loss and anomaly generator, trained by the harness): it
detects offline through the one runner with the generated anomaly source, its training step is
anomalib's, a missing or empty DTD folder is refused by name, and the report tabulates it as a
substitute.

The tiny setting (:data:`DRAEM_FAST`): sub-networks a quarter of anomalib's width (32 and 16),
50 epochs (100 steps of 8 images at 64 px) at lr 5e-4 without the step decay: about 25 s on one
CPU core. On the synthetic ``texture`` category it measured image / pixel AUROC 1.0 / 0.98-0.999
for seeds 0-3. At lr 1e-4 or width 16 / 8 it was not robust (image AUROC 0.46-1.0 over seeds).
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_DATA, compose_config
from tests.device_check import stand_in_accelerator
from ulsad_bench import runner
from ulsad_bench.environment import seeded
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.anomalib_adapter import draem as adapter
from ulsad_bench.models.anomalib_adapter import import_anomalib
from ulsad_bench.models.backbone import Normalize, no_backbone
from ulsad_bench.models.base import RunContext
from ulsad_bench.models.draem import Draem
from ulsad_bench.models.draem.anomaly_source import AnomalySourceNotFoundError, texture_files
from ulsad_bench.report import build_report
from ulsad_bench.spec import JobSpec

#: tiny DRAEM settings for CPU tests (module docstring); reused by shared test files
DRAEM_FAST = [
    "model=draem",
    "model.reconstructive_width=32",
    "model.discriminative_width=16",
    "model.epochs=50",
    "model.lr=5e-4",
    "model.lr_milestones=[]",
    "profile.enabled=false",
]


def refuse_network(*_args: object, **_kwargs: object) -> None:
    raise OSError("the network is off in this test")


def textures(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "banded").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "banded" / f"b_{i}.jpg")
    (folder / "README.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def draem_job(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One tiny DRAEM job on the synthetic ``texture`` category with the network off: ``(record, results)``."""
    outputs = tmp_path_factory.mktemp("draem_outputs")
    overrides = [*TINY_DATA, f"cache_dir={shared_cache}", f"output_root={outputs}", *DRAEM_FAST]
    cfg = compose_config([*overrides, "dataset.category=texture"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(outputs)
        patch.setattr(socket.socket, "connect", refuse_network)
        record = runner.run(cfg, outputs / "synthetic" / "texture" / "draem" / "seed=0")
    return record, outputs


def test_draem_detects_structural_anomalies_offline(draem_job: tuple[dict[str, Any], Path]) -> None:
    record, outputs = draem_job
    assert record["status"] == "ok", record.get("traceback")
    assert record["metrics"]["image_auroc"] > 0.85  # 1.0 for seeds 0-3
    assert record["metrics"]["pixel_auroc"] > 0.85  # 0.98-0.999 for seeds 0-3
    assert record["backbone"] == "none" and record["weights"] == {"policy": "random", "random_init_seed": 0}
    hp = record["hyperparameters"]
    # model.anomaly_source=auto on a random-init run without a folder: the generated substitute, recorded as such
    assert (hp["anomaly_source_setting"], hp["anomaly_source"], hp["paper_setting"]) == ("auto", "generated", False)
    assert hp["substitute"] == "anomaly source generated (Perlin-noise textures, not DTD)"
    assert (hp["epochs"], hp["batch_size"], hp["lr"], hp["beta"]) == (50, 8, 5e-4, [0.2, 1.0])
    assert hp["input_normalization"] == "imagenet" and hp["input"] == "ImageNet-normalised"
    fit = record["fit"]
    assert fit["steps"] == 50 * -(-fit["train_images"] // 8)
    assert fit["loss_per_epoch"][-1] < fit["loss_per_epoch"][0]
    assert record["val_source"].startswith("none")
    assert not (outputs / "results").exists() and not (outputs / "datasets").exists()


def test_table_1_has_draem_marked_as_a_substitute(draem_job: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    record, outputs = draem_job
    report = build_report(outputs, tmp_path / "reports", figures=False)
    text = (tmp_path / "reports" / "table01_image_auroc.md").read_text()
    row = re.search(r"^\| DRÆM \| (\d+\.\d\d)", text, re.MULTILINE)
    assert row is not None, text
    assert row.group(1) == f"{100 * record['metrics']['image_auroc']:.2f}"  # one category, one seed
    table = report.table("table01_image_auroc")
    assert table is not None and any("NOT THE PAPER'S SETTING" in w for w in table.warnings)
    assert any("DRÆM: anomaly source generated (Perlin-noise textures, not DTD)" in n for n in table.notes)


def test_a_whole_job_runs_on_an_accelerator(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Device discipline without a GPU: the whole job (anomaly synthesis included) on the stand-in
    accelerator of tests/device_check.py, which refuses what CUDA refuses. kornia's SSIM opens
    ``torch.autocast(device_type=<the images' device>, enabled=False)``, which CUDA supports and the
    stand-in device (``meta``) does not: there, and only there, that block is a no-op."""
    autocast = torch.autocast

    def autocast_but_on_the_stand_in(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext() if device_type == "meta" else autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast_but_on_the_stand_in)
    overrides = [*DRAEM_FAST, "model.epochs=1", "dataset.category=texture", "profile.enabled=true"]
    overrides += ["profile.batch_size=2", "dataset.synthetic.n_test_good=3"]
    with stand_in_accelerator() as device:
        record = runner.run(tiny_cfg(*overrides, f"device={device}"), tmp_path / "device")
    assert record["status"] == "ok", record.get("traceback")
    assert record["device"] == str(device) and record["efficiency"]["throughput_img_s"] > 0


def test_select_on_test_scores_every_epoch(tiny_cfg, tmp_path: Path) -> None:
    """protocol.select_on_test (0.7's early stopping on the test set, re-created): every epoch scored."""
    record = runner.run(tiny_cfg(*DRAEM_FAST, "model.epochs=2", "protocol=select_on_test"), tmp_path / "run")
    assert record["status"] == "ok", record.get("traceback")
    assert [point["epoch"] for point in record["selection"]["curve"]] == [1, 2]


def test_missing_anomaly_source_is_refused_by_name(tiny_cfg, tmp_path: Path) -> None:
    """Not a random-init run (backbone.weights=imagenet): auto needs DTD, and says how to give it or the substitute."""
    cfg = tiny_cfg(*DRAEM_FAST, "backbone.weights=imagenet")
    with pytest.raises(AnomalySourceNotFoundError) as info:
        runner.check_inputs(JobSpec.from_config(cfg))
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    for message in (str(info.value), record["error"]):
        assert "model.anomaly_source_dir=/path/to/dtd/images" in message
        assert "https://www.robots.ox.ac.uk/~vgg/data/dtd/" in message
        assert "model.anomaly_source=generated" in message
    assert not JobSpec.from_config(cfg).input_files()  # no source: nothing to fingerprint, the job refuses it


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_empty_or_missing_dtd_folder_is_refused_by_name(tiny_cfg, tmp_path: Path, folder: str) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    cfg = tiny_cfg(*DRAEM_FAST, f"model.anomaly_source_dir={tmp_path / folder}")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    assert f"model.anomaly_source_dir='{tmp_path / folder}'" in record["error"]
    assert ("no texture images" if folder == "empty" else "no such folder") in record["error"]


def test_dtd_folder_is_the_papers_setting(tiny_cfg, tmp_path: Path) -> None:
    """A texture folder (any depth, images only): used, fingerprinted, recorded as the paper's setting."""
    folder = textures(tmp_path / "dtd" / "images", 3)
    cfg = tiny_cfg(*DRAEM_FAST, "model.epochs=1", f"model.anomaly_source_dir={folder}", "dataset.category=texture")
    expected = [folder / "banded" / f"b_{i}.jpg" for i in range(3)]
    assert texture_files(str(folder)) == expected
    assert list(JobSpec.from_config(cfg).input_files()) == [p.resolve() for p in expected]
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "ok", record.get("traceback")
    hp = record["hyperparameters"]
    assert (hp["anomaly_source"], hp["anomaly_source_images"], hp["paper_setting"]) == ("dtd", 3, True)
    assert hp["anomaly_source_dir"] == str(folder.resolve()) and "substitute" not in hp


def test_settings_and_sizes_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match=r"model\.anomaly_source='dtdd'"):
        Draem(anomaly_source="dtdd")
    with pytest.raises(ValueError, match=r"model\.beta"):
        Draem(beta=[0.9, 0.1])
    with pytest.raises(ValueError, match=r"dataset\.image_size=48"):
        Draem.check_image_size(48)


# ---------------------------------------------------------------------------------------------- anomalib's DRAEM


def test_training_step_is_anomalibs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's losses equal anomalib 2.7's ``training_step`` (same anomalies, same networks; 2.7
    feeds [0, 1]: ``input_normalization=none``), and their terms add up to ``DraemLoss``; with 0.7's
    ImageNet normalisation (the default) the same step runs on the normalised images."""
    monkeypatch.chdir(tmp_path)
    folder = textures(tmp_path / "dtd", 2)
    ours = Draem(anomaly_source="dtd", anomaly_source_dir=str(folder), input_normalization="none")
    ctx = RunContext(torch.device("cpu"), 0, 32, no_backbone("imagenet"), FeatureCache(None, enabled=False))
    ours.setup(ctx)
    lightning = import_anomalib("anomalib.models.image.draem.lightning_model")
    module = lightning.Draem(
        dtd_dir=folder, pre_processor=False, post_processor=False, evaluator=False, visualizer=False
    )
    module.log = lambda *args, **kwargs: None
    module.model.load_state_dict(ours.model.state_dict())
    assert sorted(map(str, module.augmenter.anomaly_source_paths)) == list(
        map(str, ours.generator.anomaly_source_paths)
    )
    ours.generator = module.augmenter  # the same draws (RandomSolarize's threshold is drawn when it is built)
    ours.model.train()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with seeded(11):
        losses = ours.losses(images)
    with seeded(11):
        reference = module.training_step(SimpleNamespace(image=images))["loss"]
    torch.testing.assert_close(losses["total"], reference)
    paper = Draem(anomaly_source="dtd", anomaly_source_dir=str(folder))  # input_normalization=imagenet (0.7)
    paper.setup(ctx)
    paper.model.load_state_dict(ours.model.state_dict())
    paper.generator = module.augmenter
    paper.model.train()
    with seeded(11):
        normalised = paper.losses(images)["total"]
    with seeded(11):
        expected = module.training_step(SimpleNamespace(image=Normalize()(images)))["loss"]
    torch.testing.assert_close(normalised, expected)
    assert not torch.isclose(normalised, reference)
    with seeded(11):
        augmented, mask = adapter.synthesise_anomalies(ours.generator, images)
    reconstruction, prediction = ours.model(augmented)
    whole = adapter.build_draem_loss()(images, reconstruction, mask, prediction)
    terms = adapter.draem_loss_terms(ours.loss, images, reconstruction, mask, prediction)
    torch.testing.assert_close(terms["l2"] + terms["ssim"] + terms["focal"], whole)
    assert not (tmp_path / "datasets").exists()  # the folder existed: anomalib downloaded nothing


def test_narrow_networks_and_eval_maps() -> None:
    with seeded(0):
        full = adapter.build_draem(False, adapter.RECONSTRUCTIVE_WIDTH, adapter.DISCRIMINATIVE_WIDTH)
    with seeded(0):
        reference = import_anomalib(adapter.DRAEM_MODULE).DraemModel(sspcab=False)
    assert type(full) is type(reference) and full.state_dict().keys() == reference.state_dict().keys()
    assert {k for k in vars(full) if not k.startswith("_")} == {k for k in vars(reference) if not k.startswith("_")}
    for name, value in full.state_dict().items():  # the same draws, in the same order
        torch.testing.assert_close(value, reference.state_dict()[name], msg=name)
    with seeded(0):
        narrow = adapter.build_draem(True, 16, 8)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 30
    assert all(p.device.type == "cpu" for p in narrow.parameters())
    model = Draem(reconstructive_width=16, discriminative_width=8, enable_sspcab=True)
    model.setup(RunContext(torch.device("cpu"), 0, 32, no_backbone("random"), FeatureCache(None, enabled=False)))
    out = model.predict(torch.rand(2, 3, 32, 32))
    assert out.maps.shape == (2, 32, 32) and out.scores.shape == (2,) and out.maps.dtype == torch.float32
    assert float(out.maps.min()) >= 0 and float(out.maps.max()) <= 1  # the anomalous class's probability
    torch.testing.assert_close(out.scores, out.maps.amax(dim=(1, 2)))
    model.model.train()
    losses = model.losses(torch.rand(2, 3, 32, 32))
    assert float(losses["sspcab"].detach()) > 0 and model.hyperparameters()["anomaly_source"] == "generated"


def test_bf16_leaves_draem_in_fp32() -> None:
    """precision=bf16: DRAEM has no frozen pretrained network, so nothing runs under autocast."""
    model = Draem(reconstructive_width=16, discriminative_width=8)
    cache = FeatureCache(None, enabled=False)
    model.setup(RunContext(torch.device("cpu"), 0, 32, no_backbone("random"), cache, precision="bf16"))
    seen: list[torch.dtype] = []
    for module in model.model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, output: seen.append(output.dtype))
    model.model.train()
    losses = model.losses(torch.rand(2, 3, 32, 32))
    assert losses["total"].dtype == torch.float32 and set(seen) == {torch.float32}


def test_config_values_are_anomalib_0_7s() -> None:
    """conf/model/draem.yaml: anomalib 0.7's config and code (the paper's run), each value cited there."""
    cfg = compose_config(["model=draem"]).model
    assert (cfg.epochs, cfg.batch_size, cfg.lr, list(cfg.lr_milestones)) == (700, 8, 1e-4, [])  # 0.7: no schedule
    assert list(cfg.beta) == [0.2, 1.0] and cfg.input_normalization == "imagenet"  # 0.7's Augmenter, normalization
    assert (cfg.enable_sspcab, cfg.sspcab_lambda, cfg.center_crop) == (False, 0.1, None)
    assert cfg.anomaly_source == "auto" and cfg.anomaly_source_dir is None
