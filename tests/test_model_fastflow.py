"""FastFlow on anomalib 2.7's torch model, trained by the harness: it detects, runs offline,
refuses missing weights by name, follows the precision policy, and reaches Table 1.

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
from ulsad_bench import runner
from ulsad_bench.data import NORMAL, ImageSet, Sample
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.anomalib_adapter import fastflow as adapter
from ulsad_bench.models.backbone import BackboneSpec, WeightsInfo, build_network, resolve_weights
from ulsad_bench.models.base import AnomalyModel, RunContext
from ulsad_bench.models.fastflow import Fastflow, FastflowSettings
from ulsad_bench.report.build import build_report
from ulsad_bench.spec import JobSpec

# tiny settings: two flow steps, two epochs of batches of 4 (12 training images at 64 px); enough
# to detect the synthetic defects with a random-init ResNet-18: image / pixel AUROC measured
# 1.0 / 0.93-0.98 over seed = backbone.random_init_seed = 0-7, about 2.5 s a job on one CPU thread
FASTFLOW_FAST = [
    "model=fastflow",
    "model.flow_steps=2",
    "model.epochs=2",
    "model.batch_size=4",
    "profile.enabled=false",
]
RESNET18_FILE = "resnet18-5c106cde.pth"


def refuse_network(*args: Any, **kwargs: Any) -> None:
    raise OSError("network access during an offline test")


@pytest.fixture(scope="module")
def fastflow_job(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Fastflow]:
    """One tiny FastFlow job on the synthetic ``texture`` category, run offline (no socket may
    connect, ``HF_HUB_OFFLINE``, an empty torch hub folder): ``(record, outputs, fitted model)``."""
    outputs = tmp_path_factory.mktemp("fastflow_outputs")
    cfg = compose_config(
        [*TINY_DATA, f"cache_dir={shared_cache}", f"output_root={outputs}", "dataset.category=texture", *FASTFLOW_FAST]
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
        record = runner.run(cfg, outputs / "synthetic" / "texture" / "fastflow" / "seed=0")
    model = built[-1]
    assert isinstance(model, Fastflow)
    return record, outputs, model


def tiny_context(size: int = 32, precision: str = "fp32", spec: BackboneSpec | None = None) -> RunContext:
    return RunContext(
        device=torch.device("cpu"),
        seed=0,
        image_size=size,
        backbone=spec or BackboneSpec("resnet18", resolve_weights("resnet18", "random")),
        feature_cache=FeatureCache(None, enabled=False),
        precision=precision,
        progress=False,
    )


def random_set(n: int, size: int) -> ImageSet:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    samples = [Sample(Path(f"{i}.png"), 0, "good", NORMAL) for i in range(n)]
    return ImageSet(samples=samples, images=images, masks=None, key=f"random{n}x{size}")


# ---------------------------------------------------------------------------------------------- jobs


def test_fastflow_detects_offline(fastflow_job: tuple[dict[str, Any], Path, Fastflow]) -> None:
    record, _, model = fastflow_job
    assert record["status"] == "ok", record.get("traceback")
    assert record["model"] == "fastflow"
    assert record["backbone"] == "resnet18"  # its own network, under backbone.weights=random
    assert record["weights"] == {"policy": "random", "random_init_seed": 0}
    assert record["val_source"].startswith("none")  # uses_validation = False
    assert record["metrics"]["image_auroc"] > 0.8
    assert record["metrics"]["pixel_auroc"] > 0.75
    fit = record["fit"]
    assert fit["steps"] == 2 * 3  # 12 images in batches of 4, two epochs
    assert fit["loss_per_epoch"][-1] < fit["loss_per_epoch"][0]  # the flows learn
    assert fit["levels"] == [
        {"shape": [64, 16, 16], "blocks": 2},
        {"shape": [128, 8, 8], "blocks": 2},
        {"shape": [256, 4, 4], "blocks": 2},
    ]
    assert record["hyperparameters"] == {
        "backbone": "resnet18",
        "flow_steps": 2,
        "hidden_ratio": 1.0,
        "conv3x3_only": True,
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "input_size": 64,
        "clamp": 2.0,
        "optimizer": "Adam",
        "drop_last": False,
        "loss": "FastflowLoss: sum over levels of mean(0.5 * sum(z^2) - log|det J|)",
        "map": "mean over levels of -exp(-mean_c(z^2) / 2), bilinear to the image",
        "score": "max",
    }
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        out = model.predict(images)
    assert out.maps.shape == (3, 64, 64) and out.scores.shape == (3,)
    assert out.maps.dtype == out.scores.dtype == torch.float32
    torch.testing.assert_close(out.scores, out.maps.amax(dim=(1, 2)))  # raw: the map's maximum, not normalised


def test_fastflow_reaches_table1(fastflow_job: tuple[dict[str, Any], Path, Fastflow], tmp_path: Path) -> None:
    record, outputs, _ = fastflow_job
    report = build_report(outputs, tmp_path / "reports", figures=False)
    table = (report.out / "table01_image_auroc.md").read_text()
    row = re.search(r"^\| FastFlow \| (\d+\.\d\d)", table, re.MULTILINE)
    assert row is not None, table
    assert row.group(1) == f"{100 * record['metrics']['image_auroc']:.2f}"


def test_fastflow_refuses_missing_weights_by_name(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backbone.weights=imagenet with an empty torch hub folder: the job stops naming FastFlow's own
    network's file (ResNet-18), not the configured backbone's (Wide-ResNet-50-2 here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    cfg = tiny_cfg(*FASTFLOW_FAST, "backbone=wide_resnet50_2", "backbone.weights=imagenet")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "failed"
    assert "WeightsNotFoundError" in record["error"]
    assert RESNET18_FILE in record["error"] and str(tmp_path / "empty_torch_home") in record["error"]
    assert "wide_resnet50_racm" not in record["error"]


def test_a_job_runs_on_a_stand_in_accelerator_as_on_the_cpu(tiny_cfg, tmp_path: Path) -> None:
    """Every tensor on the job's device (:mod:`tests.device_check` refuses what CUDA refuses); the
    same losses and scores as on the CPU."""
    overrides = [*FASTFLOW_FAST, "feature_cache=false", "dataset.category=texture", "profile.enabled=true"]
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
    """anomalib builds its ResNet without weights; set-up copies the job's resolved weights into it."""
    network = build_network("resnet18", WeightsInfo(policy="random", random_init_seed=7))
    file = tmp_path / "weights.pth"
    torch.save(network.state_dict(), file)
    model = Fastflow()
    model.setup(tiny_context(spec=BackboneSpec("resnet18", WeightsInfo(policy="file", file=str(file)))))
    copied = adapter.timm_network(model.model).state_dict()
    for name, value in network.state_dict().items():
        if not name.startswith(("layer4.", "fc.")):  # anomalib's extractor stops at layer3
            torch.testing.assert_close(copied[name], value, rtol=0, atol=0)
    frozen = {id(p) for p in adapter.timm_network(model.model).parameters()}
    assert not frozen & {id(p) for p in adapter.trainable_parameters(model.model)}


def test_fit_is_seeded_and_keeps_the_last_partial_batch() -> None:
    """Same seed, same losses; 5 images in batches of 2 make 3 steps an epoch (anomalib's loader
    keeps the last partial batch)."""
    summaries = []
    for _ in range(2):
        model = Fastflow(flow_steps=2, epochs=2, batch_size=2)
        model.setup(tiny_context())
        summaries.append(model.fit(random_set(5, 32), random_set(0, 32)))
    assert summaries[0]["steps"] == 2 * 3
    assert summaries[0]["loss_per_epoch"] == summaries[1]["loss_per_epoch"]


def test_bf16_runs_the_backbone_only() -> None:
    """precision=bf16: the ResNet's convolutions run in bf16, everything after it in fp32."""
    model = Fastflow(flow_steps=2)
    model.setup(tiny_context(precision="bf16"))
    seen: dict[str, torch.dtype] = {}

    def backbone_output(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        seen.setdefault("backbone", output.dtype)

    def norm_input(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.setdefault("norm_input", inputs[0].dtype)

    adapter.timm_network(model.model).conv1.register_forward_hook(backbone_output)
    model.model.norms[0].register_forward_pre_hook(norm_input)
    model.model.train()
    loss = model.train_step_loss(torch.rand(2, 3, 32, 32))
    assert seen == {"backbone": torch.bfloat16, "norm_input": torch.float32}
    assert loss.dtype == torch.float32
    out = model.predict(torch.rand(2, 3, 32, 32))
    assert out.maps.dtype == torch.float32 and torch.isfinite(out.maps).all()


def test_loss_is_anomalibs_negative_log_likelihood() -> None:
    """``FastflowLoss`` as the adapter hands it: sum over levels of mean(0.5 * |z|^2 - log|det J|)."""
    generator = torch.Generator().manual_seed(0)
    z = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 8, 2, 2, generator=generator)]
    log_det = [torch.randn(2, generator=generator), torch.randn(2, generator=generator)]
    expected = sum((0.5 * (h**2).sum(dim=(1, 2, 3)) - j).mean() for h, j in zip(z, log_det, strict=True))
    torch.testing.assert_close(adapter.fastflow_loss()(z, log_det), expected)


@pytest.mark.parametrize(("size", "fits"), [(64, True), (48, True), (16, True), (56, False), (8, False)])
def test_image_size_must_divide_by_16(size: int, fits: bool) -> None:
    if fits:
        Fastflow.check_image_size(size)
        model = Fastflow(flow_steps=2)
        model.setup(tiny_context(size))
        assert model.predict(torch.rand(1, 3, size, size)).maps.shape == (1, size, size)
    else:
        with pytest.raises(ValueError, match=rf"dataset.image_size={size} .*multiple of 16"):
            Fastflow.check_image_size(size)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"backbone": "vgg19"}, r"model.backbone='vgg19'"),
        ({"flow_steps": 0}, r"model.flow_steps=0: must be >= 1"),
        ({"lr": 0}, r"model.lr=0"),
    ],
)
def test_settings_are_refused_by_name(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fastflow(**setting)


def test_config_defaults_are_anomalib_07s(tiny_cfg) -> None:
    """conf/model/fastflow.yaml: anomalib 0.7's fastflow/config.yaml (resnet18, conv3x3_only True, ...)."""
    cfg = tiny_cfg("model=fastflow")
    model = JobSpec.from_config(cfg).build_model()
    assert model.settings == FastflowSettings(
        backbone="resnet18",
        flow_steps=8,
        hidden_ratio=1.0,
        conv3x3_only=True,
        epochs=500,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-5,
    )
    assert cfg.model.center_crop is None
