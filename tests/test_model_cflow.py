"""CFLOW (anomalib 2.7's torch model, trained by the harness): it detects offline through the one
runner, its training step and maps are anomalib's, it refuses missing weights by name, and the
report tabulates it.

The tiny setting (:data:`CFLOW_FAST`): ResNet-18 (random init, the synthetic set's) instead of
Wide-ResNet-50-2, two epochs of batches of 4 images, fibre batches of 16, 64 px images: about
three seconds on one CPU core. On the synthetic ``texture`` category it measured image / pixel
AUROC 1.0 / 0.905-0.918 for seeds 0-4.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import TINY_DATA, compose_config
from tests.device_check import stand_in_accelerator
from ulsad_bench import runner
from ulsad_bench.environment import seeded
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.anomalib_adapter import cflow as adapter
from ulsad_bench.models.anomalib_adapter import import_anomalib
from ulsad_bench.models.backbone import BackboneSpec, WeightsNotFoundError, resolve_weights
from ulsad_bench.models.base import RunContext
from ulsad_bench.models.cflow import Cflow
from ulsad_bench.report import build_report
from ulsad_bench.spec import JobSpec

#: tiny CFLOW settings for CPU tests (module docstring); reused by shared test files
CFLOW_FAST = [
    "model=cflow",
    "model.backbone=resnet18",
    "model.epochs=2",
    "model.batch_size=4",
    "model.fiber_batch_size=16",
    "profile.enabled=false",
]
SMALL = {"backbone": "resnet18", "batch_size": 4, "fiber_batch_size": 16, "coupling_blocks": 2, "epochs": 1}


def refuse_network(*_args: object, **_kwargs: object) -> None:
    raise OSError("the network is off in this test")


@pytest.fixture(scope="module")
def cflow_job(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One tiny CFLOW job on the synthetic ``texture`` category with the network off: ``(record, results)``."""
    outputs = tmp_path_factory.mktemp("cflow_outputs")
    overrides = [*TINY_DATA, f"cache_dir={shared_cache}", f"output_root={outputs}", *CFLOW_FAST]
    cfg = compose_config([*overrides, "dataset.category=texture"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(outputs)
        patch.setattr(socket.socket, "connect", refuse_network)
        patch.setenv("HF_HUB_OFFLINE", "1")
        record = runner.run(cfg, outputs / "synthetic" / "texture" / "cflow" / "seed=0")
    return record, outputs


def test_cflow_detects_structural_anomalies_offline(cflow_job: tuple[dict[str, Any], Path]) -> None:
    record, outputs = cflow_job
    assert record["status"] == "ok", record.get("traceback")
    assert record["metrics"]["image_auroc"] > 0.85  # 1.0 for seeds 0-4
    assert record["metrics"]["pixel_auroc"] > 0.8  # 0.905-0.918 for seeds 0-4
    assert record["backbone"] == "resnet18" and record["weights"] == {"policy": "random", "random_init_seed": 0}
    hp = record["hyperparameters"]
    assert hp["layers"] == ["layer2", "layer3", "layer4"] and hp["backbone"] == "resnet18"
    assert (hp["condition_vector"], hp["coupling_blocks"], hp["clamp_alpha"]) == (128, 8, 1.9)
    assert (hp["fiber_batch_size"], hp["batch_size"], hp["epochs"], hp["lr"]) == (16, 4, 2, 1e-4)
    assert hp["map_normalisation"] == "batch_max" and hp["map_batch_size"] == 16
    fit = record["fit"]
    assert fit["loss_per_epoch"][1] < fit["loss_per_epoch"][0]  # the flows learn
    # resnet18 at 64 px: layer2 8 x 8, layer3 4 x 4, layer4 2 x 2 fibres per image
    assert fit["fibers_per_epoch"] == fit["train_images"] * (64 + 16 + 4)
    assert record["val_source"].startswith("none")
    assert not (outputs / "results").exists() and not (outputs / "datasets").exists()


def test_table_1_has_cflow(cflow_job: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    record, outputs = cflow_job
    build_report(outputs, tmp_path / "reports", figures=False)
    table = (tmp_path / "reports" / "table01_image_auroc.md").read_text()
    row = re.search(r"^\| CFLOW \| (\d+\.\d\d)", table, re.MULTILINE)
    assert row is not None, table
    assert row.group(1) == f"{100 * record['metrics']['image_auroc']:.2f}"  # one category, one seed


def test_a_whole_job_runs_on_an_accelerator(tiny_cfg, tmp_path: Path) -> None:
    """Device discipline without a GPU: the whole job on the stand-in accelerator of tests/device_check.py,
    which refuses what CUDA refuses (host and device tensors mixed, a CPU generator for a device tensor)."""
    overrides = [*CFLOW_FAST, "model.epochs=1", "dataset.category=texture", "feature_cache=false"]
    overrides += ["profile.enabled=true", "profile.batch_size=2", "dataset.synthetic.n_test_good=3"]
    with stand_in_accelerator() as device:
        record = runner.run(tiny_cfg(*overrides, f"device={device}"), tmp_path / "device")
    assert record["status"] == "ok", record.get("traceback")
    assert record["device"] == str(device) and record["efficiency"]["throughput_img_s"] > 0


def test_select_on_test_keeps_the_reference_of_the_chosen_epoch(tiny_cfg, tmp_path: Path) -> None:
    """protocol.select_on_test scores the test set after every epoch (the reference taken first) and
    restores the best epoch's state, whose reference is a buffer of the inference modules."""
    record = runner.run(tiny_cfg(*CFLOW_FAST, "protocol=select_on_test"), tmp_path / "run")
    assert record["status"] == "ok", record.get("traceback")
    assert [point["epoch"] for point in record["selection"]["curve"]] == [1, 2]
    model = small_cflow()
    assert any("maxima" in module.state_dict() for module in model.inference_modules())


def test_missing_imagenet_weights_are_named(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    cfg = tiny_cfg(*CFLOW_FAST, "backbone.weights=imagenet")
    with pytest.raises(WeightsNotFoundError, match=r"resnet18-5c106cde\.pth"):
        runner.check_inputs(JobSpec.from_config(cfg))
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    for text in ("resnet18-5c106cde.pth", str(tmp_path / "empty_torch_home"), "backbone.weights=random"):
        assert text in record["error"]


def test_too_few_fibres_are_refused_by_setting(tiny_cfg, tmp_path: Path) -> None:
    record = runner.run(tiny_cfg(*CFLOW_FAST, "model.fiber_batch_size=64"), tmp_path / "run")
    assert record["status"] == "failed"
    assert "model.fiber_batch_size=64" in record["error"] and "layer4" in record["error"]


def test_settings_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match=r"model\.condition_vector=126"):
        Cflow(condition_vector=126)
    with pytest.raises(ValueError, match=r"model\.map_normalisation='global'"):
        Cflow(map_normalisation="global")
    with pytest.raises(ValueError, match=r"dataset\.image_size=48"):
        Cflow.check_image_size(48)


# ---------------------------------------------------------------------------------------------- anomalib's CFLOW


def small_cflow(image_size: int = 64, precision: str = "fp32", **settings: Any) -> Cflow:
    model = Cflow(**{**SMALL, **settings})
    spec = BackboneSpec("resnet18", resolve_weights("resnet18", "random"))
    cache = FeatureCache(None, enabled=False)
    ctx = RunContext(torch.device("cpu"), 0, image_size, spec, cache, precision=precision, progress=False)
    model.setup(ctx)
    return model


def anomalib_lightning_cflow(model: Cflow) -> Any:
    """anomalib 2.7's Lightning ``Cflow`` with ``model``'s settings and weights, runnable without a trainer."""
    lightning = import_anomalib("anomalib.models.image.cflow.lightning_model")
    module = lightning.Cflow(
        backbone="resnet18",
        layers=model.layers,
        pre_trained=False,
        fiber_batch_size=model.fiber_batch_size,
        coupling_blocks=model.coupling_blocks,
        lr=model.lr,
        pre_processor=False,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    module.model.load_state_dict(model.model.state_dict())
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer
    module.manual_backward = lambda loss: loss.backward()
    module.log = lambda *args, **kwargs: None
    return module


def test_training_step_and_optimiser_are_anomalibs() -> None:
    """One training step of the harness equals anomalib 2.7's ``training_step`` (same draws, same updates)."""
    ours = small_cflow()
    module = anomalib_lightning_cflow(ours)
    reference = [p for group in module.configure_optimizers().param_groups for p in group["params"]]
    assert [p.shape for p in adapter.decoder_parameters(ours.model)] == [p.shape for p in reference]
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(adapter.decoder_parameters(ours.model), lr=ours.lr)
    with seeded(7):
        total, count = ours.train_step(images, optimizer)
    with seeded(7):
        output = module.training_step(SimpleNamespace(image=ours.normalize(images)))
    torch.testing.assert_close(total, output["loss"][0])
    assert count == 4 * (64 + 16 + 4)
    for name, value in ours.model.decoders.state_dict().items():
        torch.testing.assert_close(value, module.model.decoders.state_dict()[name], msg=name)


def test_maps_batch_max_is_anomalibs_forward_and_training_max_is_batch_free() -> None:
    model = small_cflow(map_normalisation="batch_max")
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = model.predict(images)
    with torch.no_grad():
        theirs = model.model(model.normalize(images))
    torch.testing.assert_close(ours.maps, theirs.anomaly_map)
    torch.testing.assert_close(ours.scores, theirs.pred_score)
    model.map_batch_size = 2  # 0.7's batches (16) inside a larger batch of the harness: anomalib's map per group
    grouped = model.predict(images)
    with torch.no_grad():
        per_group = [model.model(model.normalize(images[i : i + 2])).anomaly_map for i in (0, 2, 4)]
    torch.testing.assert_close(grouped.maps, torch.cat(per_group))
    assert not torch.allclose(grouped.maps, ours.maps)  # the groups matter: the reason for training_max
    model.map_normalisation = "training_max"
    model.reference.maxima.copy_(torch.tensor([0.5, -1.0, -2.0]))
    model.has_reference = True
    whole, part = model.predict(images), model.predict(images[:2])
    torch.testing.assert_close(part.maps, whole.maps[:2])  # an image's map does not depend on its batch
    assert whole.maps.shape == (5, 64, 64) and whole.scores.shape == (5,)
    torch.testing.assert_close(whole.scores, whole.maps.amax(dim=(1, 2)))
    # the training_max map is anomalib's up to the per-layer reference: equal when it is the batch's maximum
    distribution, _, _ = model.log_likelihoods(images)
    model.reference.maxima.copy_(torch.stack([d.max() for d in distribution]))
    rebased = model.predict(images).maps
    torch.testing.assert_close(rebased - rebased.min(), theirs.anomaly_map - theirs.anomaly_map.min())


def test_bf16_runs_the_backbone_only() -> None:
    """precision=bf16: the frozen ResNet runs in bf16; the flows, the loss and the maps in fp32."""
    model = small_cflow(precision="bf16")
    seen: dict[str, torch.dtype] = {}

    def backbone_output(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        seen.setdefault("backbone", output.dtype)

    def flow_input(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.setdefault("flow", inputs[0].dtype)

    adapter.cflow_timm_network(model.model).conv1.register_forward_hook(backbone_output)
    model.decoders[0].register_forward_pre_hook(flow_input)
    optimizer = torch.optim.Adam(adapter.decoder_parameters(model.model), lr=model.lr)
    total, _ = model.train_step(torch.rand(4, 3, 64, 64), optimizer)
    assert seen == {"backbone": torch.bfloat16, "flow": torch.float32} and torch.isfinite(total)
    model.has_reference = True
    out = model.predict(torch.rand(2, 3, 64, 64))
    assert out.maps.dtype == torch.float32 and torch.isfinite(out.maps).all()


def test_config_values_are_anomalib_0_7s() -> None:
    """conf/model/cflow.yaml: anomalib 0.7's config.yaml values (cited there line by line)."""
    cfg = compose_config(["model=cflow"]).model
    assert cfg.backbone == "wide_resnet50_2" and list(cfg.layers) == ["layer2", "layer3", "layer4"]
    assert (cfg.decoder, cfg.condition_vector, cfg.coupling_blocks, cfg.clamp_alpha) == ("freia-cflow", 128, 8, 1.9)
    assert (cfg.fiber_batch_size, cfg.permute_soft, cfg.lr, cfg.batch_size, cfg.epochs) == (64, False, 1e-4, 16, 50)
    assert cfg.center_crop is None and (cfg.map_normalisation, cfg.map_batch_size) == ("batch_max", 16)
