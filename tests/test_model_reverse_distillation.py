"""Reverse Distillation on anomalib 2.7's torch model, trained by the harness: it detects, runs
offline, refuses missing weights by name, follows the precision policy, and reaches Table 1.

Its equality with anomalib's own training is ``tests/test_reference_equality.py`` (slow).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY_DATA, compose_config
from tests.device_check import stand_in_accelerator
from tests.test_model_fastflow import random_set, refuse_network
from tests.test_model_fastflow import tiny_context as fastflow_context
from ulsad_bench import runner
from ulsad_bench.models.anomalib_adapter import reverse_distillation as adapter
from ulsad_bench.models.backbone import BackboneSpec, WeightsInfo, build_network
from ulsad_bench.models.base import AnomalyModel, RunContext
from ulsad_bench.models.reverse_distillation import ReverseDistillation, ReverseDistillationSettings
from ulsad_bench.report.build import build_report
from ulsad_bench.report.naming import long_method_name, method_name
from ulsad_bench.spec import JobSpec

# tiny settings: a ResNet-18 encoder (the paper's is Wide-ResNet-50-2: eight times the decoder,
# four times slower here), 40 epochs of batches of 4 (12 training images at 64 px). With a
# random-init encoder the decoder needs that many steps: image / pixel AUROC measured 0.83-1.0 /
# 0.85-0.95 over seed = backbone.random_init_seed = 0-7 (20 epochs: image AUROC down to 0.79),
# about 15 s a job on one CPU thread
RD_FAST = [
    "model=reverse_distillation",
    "model.backbone=resnet18",
    "model.epochs=40",
    "model.batch_size=4",
    "profile.enabled=false",
]
WIDE_RESNET_FILE = "wide_resnet50_racm-8234f177.pth"


@pytest.fixture(scope="module")
def rd_job(
    shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path, ReverseDistillation]:
    """One tiny RD job on the synthetic ``texture`` category, run offline (no socket may connect,
    ``HF_HUB_OFFLINE``, an empty torch hub folder): ``(record, outputs, fitted model)``."""
    outputs = tmp_path_factory.mktemp("rd_outputs")
    cfg = compose_config(
        [*TINY_DATA, f"cache_dir={shared_cache}", f"output_root={outputs}", "dataset.category=texture", *RD_FAST]
    )
    built: list[AnomalyModel] = []
    build = runner.build_model

    def keep(spec: JobSpec) -> AnomalyModel:
        built.append(build(spec))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("empty_torch_home")))
        patch.setattr(socket.socket, "connect", refuse_network)
        patch.setattr(runner, "build_model", keep)
        record = runner.run(cfg, outputs / "synthetic" / "texture" / "reverse_distillation" / "seed=0")
    model = built[-1]
    assert isinstance(model, ReverseDistillation)
    return record, outputs, model


def tiny_context(size: int = 64, precision: str = "fp32", spec: BackboneSpec | None = None) -> RunContext:
    """FastFlow's test context at RD's smallest size (64 px)."""
    return fastflow_context(size, precision, spec)


# ---------------------------------------------------------------------------------------------- jobs


def test_reverse_distillation_detects_offline(rd_job: tuple[dict[str, Any], Path, ReverseDistillation]) -> None:
    record, _, model = rd_job
    assert record["status"] == "ok", record.get("traceback")
    assert record["model"] == "reverse_distillation"
    assert record["backbone"] == "resnet18"  # model.backbone, under backbone.weights=random
    assert record["weights"] == {"policy": "random", "random_init_seed": 0}
    assert record["val_source"].startswith("none")  # uses_validation = False
    assert record["metrics"]["image_auroc"] > 0.8
    assert record["metrics"]["pixel_auroc"] > 0.75
    fit = record["fit"]
    assert fit["steps"] == 40 * 3  # 12 images in batches of 4
    assert fit["loss_per_epoch"][-1] < 0.7 * fit["loss_per_epoch"][0]  # the decoder learns
    assert record["hyperparameters"] == {
        "backbone": "resnet18",
        "layers": ["layer1", "layer2", "layer3"],
        "anomaly_map_mode": "multiply",
        "epochs": 40,
        "batch_size": 4,
        "lr": 0.005,
        "beta1": 0.5,
        "beta2": 0.99,
        "input_size": 64,
        "optimizer": "Adam",
        "weight_decay": 0.0,
        "drop_last": False,
        "loss": "ReverseDistillationLoss: sum over layers of mean(1 - cos) of the flattened features",
        "map": "1 - cos per layer, bilinear (align_corners) to the image, multiply, blur sigma 4",
        "score": "max",
    }
    with torch.inference_mode():
        out = model.predict(torch.rand(3, 3, 64, 64))
    assert out.maps.shape == (3, 64, 64) and out.scores.shape == (3,)
    assert out.maps.dtype == out.scores.dtype == torch.float32
    torch.testing.assert_close(out.scores, out.maps.amax(dim=(1, 2)))  # raw: the map's maximum, not normalised


def test_reverse_distillation_reaches_table1(
    rd_job: tuple[dict[str, Any], Path, ReverseDistillation], tmp_path: Path
) -> None:
    record, outputs, _ = rd_job
    report = build_report(outputs, tmp_path / "reports", figures=False)
    table = (report.out / "table01_image_auroc.md").read_text()
    name = long_method_name(method_name("reverse_distillation"))  # Tables 1-2 print RD in full
    assert name == "Reverse Distillation"
    row = re.search(rf"^\| {name} \| (\d+\.\d\d)", table, re.MULTILINE)
    assert row is not None, table
    assert row.group(1) == f"{100 * record['metrics']['image_auroc']:.2f}"


def test_reverse_distillation_refuses_missing_weights_by_name(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backbone.weights=imagenet with an empty torch hub folder: the job stops naming RD's own
    encoder's file (Wide-ResNet-50-2, the paper's), not the configured backbone's (ResNet-18 here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    cfg = tiny_cfg(*RD_FAST, "model.backbone=wide_resnet50_2", "backbone.weights=imagenet")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    assert "WeightsNotFoundError" in record["error"]
    assert WIDE_RESNET_FILE in record["error"] and str(tmp_path / "empty_torch_home") in record["error"]
    assert "resnet18-5c106cde" not in record["error"]


def test_a_job_runs_on_a_stand_in_accelerator_as_on_the_cpu(tiny_cfg, tmp_path: Path) -> None:
    """Every tensor on the job's device (:mod:`tests.device_check` refuses what CUDA refuses); the
    same losses and scores as on the CPU."""
    overrides = [
        *[*RD_FAST[:2], "model.epochs=3", *RD_FAST[3:]],
        "feature_cache=false",
        "dataset.category=texture",
        "profile.enabled=true",
    ]
    overrides += ["profile.batch_size=2", "dataset.synthetic.n_test_good=3", "dataset.synthetic.n_per_defect=1"]
    with stand_in_accelerator() as device:
        record = runner.run(tiny_cfg(*overrides, f"device={device}"), tmp_path / "device")
    assert record["status"] == "ok", record.get("traceback")
    assert record["device"] == str(device) and record["efficiency"]["throughput_img_s"] > 0
    on_cpu = runner.run(tiny_cfg(*overrides, "device=cpu"), tmp_path / "cpu")
    assert on_cpu["status"] == "ok", on_cpu.get("traceback")
    assert record["fit"]["loss_per_epoch"] == pytest.approx(on_cpu["fit"]["loss_per_epoch"], rel=1e-5)
    assert record["metrics"]["image_auroc"] == pytest.approx(on_cpu["metrics"]["image_auroc"], abs=0.05)


# ---------------------------------------------------------------------------------------------- units


def test_weights_come_from_the_harness_backbone_only(tmp_path: Path) -> None:
    """anomalib builds its encoder without weights; set-up copies the job's resolved weights into it."""
    network = build_network("resnet18", WeightsInfo(policy="random", random_init_seed=7))
    file = tmp_path / "weights.pth"
    torch.save(network.state_dict(), file)
    model = ReverseDistillation(backbone="resnet18")
    model.setup(tiny_context(spec=BackboneSpec("resnet18", WeightsInfo(policy="file", file=str(file)))))
    copied = adapter.timm_network(model.model).state_dict()
    for name, value in network.state_dict().items():
        if not name.startswith(("layer4.", "fc.")):  # the encoder stops at layer3
            torch.testing.assert_close(copied[name], value, rtol=0, atol=0)
    trained = {id(p) for p in adapter.trainable_parameters(model.model)}
    assert not trained & {id(p) for p in adapter.encoder(model.model).parameters()}
    assert trained == {id(p) for m in adapter.trained_modules(model.model) for p in m.parameters()}


def test_training_keeps_the_encoder_in_eval_mode() -> None:
    """The encoder's batch norms never move; the bottleneck's and decoder's train on batch statistics."""
    model = ReverseDistillation(backbone="resnet18", epochs=1, batch_size=2)
    model.setup(tiny_context(64))
    encoder_before = {k: v.clone() for k, v in adapter.encoder(model.model).state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.model.decoder.state_dict().items() if "running_mean" in k}
    summary = model.fit(random_set(5, 64), random_set(0, 64))
    assert summary["steps"] == 3  # 5 images in batches of 2: the last partial batch kept, as anomalib's loader
    for name, value in adapter.encoder(model.model).state_dict().items():
        torch.testing.assert_close(value, encoder_before[name], rtol=0, atol=0)
    assert any(not torch.equal(model.model.decoder.state_dict()[k], v) for k, v in decoder_before.items())


def test_fit_is_seeded() -> None:
    losses = []
    for _ in range(2):
        model = ReverseDistillation(backbone="resnet18", epochs=2, batch_size=2)
        model.setup(tiny_context())
        losses.append(model.fit(random_set(4, 64), random_set(0, 64))["loss_per_epoch"])
    assert losses[0] == losses[1]


def test_bf16_runs_the_encoder_only() -> None:
    """precision=bf16: the encoder's convolutions run in bf16, the bottleneck and decoder in fp32."""
    model = ReverseDistillation(backbone="resnet18")
    model.setup(tiny_context(precision="bf16"))
    seen: dict[str, torch.dtype] = {}

    def encoder_output(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        seen.setdefault("encoder", output.dtype)

    def bottleneck_input(module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        seen.setdefault("bottleneck_input", inputs[0][0].dtype)

    adapter.timm_network(model.model).conv1.register_forward_hook(encoder_output)
    model.model.bottleneck.register_forward_pre_hook(bottleneck_input)
    model.model.train()
    loss = model.train_step_loss(torch.rand(2, 3, 64, 64))
    assert seen == {"encoder": torch.bfloat16, "bottleneck_input": torch.float32}
    assert loss.dtype == torch.float32
    out = model.predict(torch.rand(2, 3, 64, 64))
    assert out.maps.dtype == torch.float32 and torch.isfinite(out.maps).all()


def test_loss_is_anomalibs_cosine_distance() -> None:
    """``ReverseDistillationLoss`` as the adapter hands it: sum over layers of mean(1 - cos) of the flattened maps."""
    generator = torch.Generator().manual_seed(0)
    enc = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 8, 2, 2, generator=generator)]
    dec = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 8, 2, 2, generator=generator)]
    cos = torch.nn.functional.cosine_similarity
    expected = sum((1 - cos(e.flatten(1), d.flatten(1))).mean() for e, d in zip(enc, dec, strict=True))
    torch.testing.assert_close(adapter.reverse_distillation_loss()(enc, dec), expected)


@pytest.mark.parametrize(("size", "fits"), [(64, True), (96, True), (32, False), (48, False)])
def test_image_size_must_divide_by_32(size: int, fits: bool) -> None:
    if fits:
        ReverseDistillation.check_image_size(size)
        model = ReverseDistillation(backbone="resnet18")
        model.setup(tiny_context(size))
        assert model.predict(torch.rand(2, 3, size, size)).maps.shape == (2, size, size)
    else:
        with pytest.raises(ValueError, match=rf"dataset.image_size={size} .*a multiple of 32, at least 64"):
            ReverseDistillation.check_image_size(size)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"backbone": "vgg19"}, r"model.backbone='vgg19'"),
        ({"layers": ["layer2", "layer3"]}, r"model.layers=\['layer2', 'layer3'\]"),
        ({"anomaly_map_mode": "max"}, r"model.anomaly_map_mode='max'"),
        ({"beta2": 1.0}, r"model.beta2=1.0"),
        ({"epochs": 0}, r"model.epochs=0: must be >= 1"),
    ],
)
def test_settings_are_refused_by_name(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReverseDistillation(**setting)


def test_config_defaults_are_anomalib_07s(tiny_cfg) -> None:
    """conf/model/reverse_distillation.yaml: anomalib 0.7's reverse_distillation/config.yaml."""
    cfg = tiny_cfg("model=reverse_distillation")
    model = JobSpec.from_config(cfg).build_model()
    assert model.settings == ReverseDistillationSettings(
        backbone="wide_resnet50_2",
        layers=("layer1", "layer2", "layer3"),
        anomaly_map_mode="multiply",
        epochs=200,
        batch_size=32,
        lr=0.005,
        beta1=0.5,
        beta2=0.99,
    )
    assert cfg.model.center_crop is None
