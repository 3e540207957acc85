"""The harness's FastFlow and Reverse Distillation train and predict as anomalib's own Engine does.

For each model, the same start and the same batches on both sides:

- anomalib 2.7's Engine (``anomalib.engine.Engine``, Lightning on the CPU) fits anomalib's Lightning
  module (``Fastflow`` / ``ReverseDistillation``: their own ``configure_optimizers``,
  ``training_step`` and default pre-processor, resize and ImageNet normalisation) on a ``Folder``
  datamodule of PNG files of the synthetic ``texture`` category written at exactly the model's
  input size (64 px), so that the resize is the identity;
- the harness's model (``model=fastflow`` / ``model=reverse_distillation``, the paper's settings
  but two epochs of batches of 5) fits on the same uint8 images, from the same initial weights (its
  torch model's state dict is copied into the Lightning module's before the Engine starts);
- the batches are the same: anomalib's train loader is given the harness's order of the images
  (:class:`SameOrder`; its own ``shuffle=True`` draws the order from torch's global generator), and
  the harness's model the floats that torchvision makes of the pixels (``x * (1 / 255)``, where the
  harness divides by 255: the two differ in the last bit for some values);
- the loss of every step (6: the last partial batch of each epoch kept on both sides), then the raw
  maps and scores of the Engine's ``predict`` (no post-processor, no evaluator) and of the harness
  are compared.

Measured on a 2-core CPU (anomalib 2.7.0, torch 2.14, ``OMP_NUM_THREADS=2``): losses, maps and
scores bit-identical for both models (max abs / rel difference 0). With the harness's own
division by 255 instead, the 1-ulp input differences grow over Adam's steps: FastFlow's maps differ
by at most 2.6e-5 (7e-5 relative) after 6 steps, RD's losses by up to 3.7 % and its scores by
3.3 % (Adam with beta1 = 0.5 follows the sign of tiny gradients). The tolerances below (1e-6
relative) leave room for reordered floating-point sums on other machines only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from ulsad_bench import runner
from ulsad_bench.data import ImageSet
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.anomalib_adapter import import_anomalib
from ulsad_bench.models.anomalib_adapter.fastflow import FASTFLOW_LIGHTNING_MODULE
from ulsad_bench.models.anomalib_adapter.reverse_distillation import RD_LIGHTNING_MODULE, RD_MAP_MODULE
from ulsad_bench.models.backbone import BackboneSpec, resolve_weights
from ulsad_bench.models.base import RunContext
from ulsad_bench.models.fastflow import Fastflow
from ulsad_bench.models.reverse_distillation import ReverseDistillation
from ulsad_bench.spec import JobSpec

pytestmark = pytest.mark.slow

SIZE = 64
EPOCHS = 2
#: 12 training images in batches of 5: three steps an epoch, the last of 2 images
BATCH = 5


@dataclass
class Case:
    """One model on both sides, with the tolerances of the comparison."""

    backbone: str
    build_ours: Callable[[int], Any]
    build_lightning: Callable[[], Any]
    loss_rtol: float = 1e-6
    map_atol: float = 1e-6  # times the largest absolute map value


def fastflow_lightning() -> Any:
    cls = import_anomalib(FASTFLOW_LIGHTNING_MODULE).Fastflow
    return cls(
        backbone="resnet18",
        pre_trained=False,
        flow_steps=8,
        conv3x3_only=True,  # anomalib 0.7's config (2.7's default: False)
        hidden_ratio=1.0,
        pre_processor=cls.configure_pre_processor((SIZE, SIZE)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )


def rd_lightning() -> Any:
    cls = import_anomalib(RD_LIGHTNING_MODULE).ReverseDistillation
    return cls(
        backbone="wide_resnet50_2",
        layers=("layer1", "layer2", "layer3"),
        anomaly_map_mode=import_anomalib(RD_MAP_MODULE).AnomalyMapGenerationMode.MULTIPLY,  # 0.7's config
        pre_trained=False,
        pre_processor=cls.configure_pre_processor((SIZE, SIZE)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )


CASES = {
    # the paper's settings but the epochs and the batch (lr, weight decay and betas are hard-coded in
    # anomalib 2.7's configure_optimizers and equal the harness's defaults)
    "fastflow": Case(
        backbone="resnet18",
        build_ours=lambda batch: Fastflow(epochs=EPOCHS, batch_size=batch),
        build_lightning=fastflow_lightning,
    ),
    "reverse_distillation": Case(
        backbone="wide_resnet50_2",
        build_ours=lambda batch: ReverseDistillation(epochs=EPOCHS, batch_size=batch),
        build_lightning=rd_lightning,
    ),
}


class SameOrder(Sampler[int]):
    """The harness's order of the training images: one ``torch.randperm(n, generator)`` per epoch
    from a generator seeded with the run seed (:meth:`ulsad_bench.data.ImageSet.batches`), in
    place of the ``RandomSampler`` that anomalib's ``shuffle=True`` loader draws from torch's
    global generator."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


class StepLosses(Callback):
    """The loss ``training_step`` returned, at every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def write_pngs(folder: Path, images: torch.Tensor) -> list[Path]:
    """uint8 ``[N, 3, S, S]`` as lossless PNG files ``000.png`` ... in ``folder``."""
    folder.mkdir(parents=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def run_engine(
    module: Any, root: Path, train_paths: list[Path], batch: int, epochs: int
) -> tuple[list[float], dict[str, tuple[torch.Tensor, float]]]:
    """anomalib's Engine fits ``module`` on ``root``'s PNGs (the training images in the harness's
    order, :class:`SameOrder`); the loss of every step, and the raw map and score of every test
    image by its path."""
    folder = import_anomalib("anomalib.data").Folder
    engine_class = import_anomalib("anomalib.engine").Engine
    step_losses = StepLosses()
    datamodule = folder(
        name="equality",
        root=root,
        normal_dir="train",
        abnormal_dir="test_defect",
        normal_test_dir="test_good",
        train_batch_size=batch,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="same_as_test",  # validation only runs the eval forward: nothing trains on it
        seed=0,
    )
    datamodule.setup()
    listed = [Path(p) for p in datamodule.train_data.samples["image_path"]]
    assert listed == train_paths  # the loader's indices are the harness's
    datamodule.train_dataloader = lambda: DataLoader(  # anomalib's loader (no drop_last), the harness's order
        dataset=datamodule.train_data,
        batch_size=batch,
        sampler=SameOrder(len(listed), seed=0),
        num_workers=0,
        collate_fn=datamodule.train_data.collate_fn,
    )
    engine = engine_class(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        barebones=True,
        callbacks=[step_losses],
        default_root_dir=root / "results",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=module, datamodule=datamodule)
    predicted = engine.predict(model=module, datamodule=datamodule)
    outputs = {}
    for item in predicted:
        maps = item.anomaly_map.reshape(len(item.image_path), SIZE, SIZE)
        for path, amap, score in zip(item.image_path, maps, item.pred_score.reshape(-1), strict=True):
            outputs[str(Path(path).relative_to(root))] = (amap.float(), float(score))
    return step_losses.losses, outputs


def context(backbone: str) -> RunContext:
    return RunContext(
        device=torch.device("cpu"),
        seed=0,
        image_size=SIZE,
        backbone=BackboneSpec(backbone, resolve_weights(backbone, "random")),
        feature_cache=FeatureCache(None, enabled=False),
        progress=False,
    )


def synthetic_images(tiny_cfg: Callable[..., Any]) -> tuple[ImageSet, ImageSet]:
    """The synthetic ``texture`` category's training and test images at the input size."""
    cfg = tiny_cfg("dataset.category=texture", f"dataset.image_size={SIZE}", "model=padim")
    spec = JobSpec.from_config(cfg)
    train, _, test = runner.load_data(spec, spec.data.splits())
    return train, test


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def torchvision_floats(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1] as torchvision's ``to_dtype(..., scale=True)`` makes them for
    anomalib's datasets: times 1 / 255 (the harness divides by 255; the two differ in the last bit)."""
    return images.float().mul_(1.0 / 255)


def fit_and_predict_ours(
    case: Case, train: ImageSet, test_images: torch.Tensor, batch: int
) -> tuple[dict[str, torch.Tensor], list[float], np.ndarray, np.ndarray]:
    """The harness's model: its initial state dict, the loss of every step, its maps and scores."""
    ours = case.build_ours(batch)
    ours.setup(context(case.backbone))
    start = {k: v.clone() for k, v in ours.model.state_dict().items()}
    losses: list[float] = []
    step_loss = ours.train_step_loss  # type: ignore[attr-defined]

    def recorded(images: torch.Tensor) -> torch.Tensor:
        loss = step_loss(images)
        losses.append(float(loss))
        return loss

    ours.train_step_loss = recorded  # type: ignore[attr-defined]
    ours.fit(train, train)
    with torch.no_grad():
        prediction = ours.predict(torchvision_floats(test_images))
    return start, losses, prediction.maps.numpy(), prediction.scores.numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_training_and_maps_equal_anomalibs_engine(
    name: str, tiny_cfg: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    monkeypatch.chdir(tmp_path)  # the Engine's folders stay in the test's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    train, test = synthetic_images(tiny_cfg)
    # the same floats on both sides: 1-ulp differences of the inputs grow over Adam's steps
    monkeypatch.setattr(ImageSet, "float_images", lambda self, indices: torchvision_floats(self.images[indices]))
    normal = torch.from_numpy(test.labels == 0)
    test_images = torch.cat([test.images[normal], test.images[~normal]])
    root = tmp_path / "data"
    train_paths = write_pngs(root / "train", train.images)
    test_paths = write_pngs(root / "test_good", test.images[normal])
    test_paths += write_pngs(root / "test_defect", test.images[~normal])

    start, ours_losses, ours_maps, ours_scores = fit_and_predict_ours(case, train, test_images, BATCH)
    module = case.build_lightning()
    module.model.load_state_dict(start)
    engine_losses, engine_outputs = run_engine(module, root, train_paths, BATCH, EPOCHS)

    assert len(engine_losses) == len(ours_losses) == EPOCHS * -(-len(train) // BATCH)  # the last partial batch kept
    engine_maps = torch.stack([engine_outputs[str(p.relative_to(root))][0] for p in test_paths]).numpy()
    engine_scores = np.array([engine_outputs[str(p.relative_to(root))][1] for p in test_paths])
    diffs = {
        "loss_abs": float(np.max(np.abs(np.subtract(ours_losses, engine_losses)))),
        "loss_rel": relative(np.array(ours_losses), np.array(engine_losses)),
        "map_abs": float(np.max(np.abs(ours_maps - engine_maps))),
        "map_rel": relative(ours_maps, engine_maps),
        "score_abs": float(np.max(np.abs(ours_scores - engine_scores))),
        "score_rel": relative(ours_scores, engine_scores),
    }
    print(f"\n{name}: step losses {engine_losses} (Engine) vs {ours_losses} (harness); max differences {diffs}")
    assert engine_losses[-1] != engine_losses[0]  # it trained
    np.testing.assert_allclose(ours_losses, engine_losses, rtol=case.loss_rtol)
    scale = float(np.abs(engine_maps).max())
    np.testing.assert_allclose(ours_maps, engine_maps, rtol=0, atol=case.map_atol * scale)
    np.testing.assert_allclose(ours_scores, engine_scores, rtol=0, atol=case.map_atol * scale)
