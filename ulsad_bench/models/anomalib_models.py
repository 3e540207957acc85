"""Baselines from anomalib 2.x, driven by the harness through their pure torch models.

Only anomalib's ``torch_model`` classes are used: no Engine, no Lightning module, no
PreProcessor / PostProcessor / Evaluator / Visualizer. The harness feeds ImageNet-normalised
images (what anomalib's default pre-processing produces), takes the raw anomaly maps and
scores, and scores them with its own metrics. Backbone weights come from the harness's one
backbone source (:mod:`ulsad_bench.models.backbone`) and are copied into anomalib's timm
feature extractor, so all models of a comparison share one weights file.

Unlike anomalib's Lightning training loop (which puts the whole module, backbone included,
in train mode), the frozen backbone stays in eval mode while embeddings are collected, so
its batch-norm statistics are never updated.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from .backbone import Normalize, load_into
from .base import AnomalyModel, Prediction, RunContext

# PaDiM paper (Defard et al. 2021), also anomalib's table: retained feature dimensions.
PADIM_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}


class _AnomalibFeatureModel(AnomalyModel):
    """Shared logic of anomalib models that collect frozen-backbone embeddings, then fit."""

    batch_size: int = 32

    @abstractmethod
    def _build(self, ctx: RunContext) -> nn.Module:
        """The anomalib torch model, built without pretrained weights."""

    @abstractmethod
    def _finish_fit(self) -> None:
        """Turn the collected embeddings into the fitted model."""

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)  # draws PaDiM's random feature subset
            self.model = self._build(ctx)
        load_into(self.model.feature_extractor.feature_extractor, ctx.backbone)
        self.model.to(ctx.device)
        self.normalize = Normalize().to(ctx.device)

    def _frozen_backbone_train_mode(self) -> None:
        self.model.train()
        self.model.feature_extractor.eval()

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        self._frozen_backbone_train_mode()
        with torch.no_grad():
            for _, images in tqdm(
                train.batches(self.batch_size),
                total=-(-len(train) // self.batch_size),
                desc=f"{self.name}: embeddings",
                leave=False,
                disable=not self.ctx.progress,
            ):
                self.model(self.normalize(images.to(self.ctx.device)))
        self._finish_fit()
        self.model.eval()
        return {"train_images": len(train)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        output = self.model(self.normalize(images))
        maps = output.anomaly_map
        if maps.ndim == 4:
            maps = maps[:, 0]
        return Prediction(maps=maps.float(), scores=output.pred_score.reshape(-1).float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model]


class Padim(_AnomalibFeatureModel):
    """PaDiM (Defard et al. 2021) via ``anomalib.models.image.padim.torch_model.PadimModel``.

    Hyperparameters: layers 1-3 and the retained feature count of the PaDiM paper (100 for
    ResNet-18, 550 for Wide-ResNet-50-2, the anomalib defaults); for other backbones
    ``n_features`` must be set or 550 is used (recorded).
    """

    name = "padim"

    def __init__(
        self,
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        n_features: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.layers = list(layers)
        self.n_features = n_features
        self.batch_size = batch_size

    def _build(self, ctx: RunContext) -> nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        if self.n_features is None:
            self.n_features = PADIM_N_FEATURES.get(ctx.backbone.name, 550)
        return PadimModel(
            backbone=ctx.backbone.name, layers=list(self.layers), pre_trained=False, n_features=self.n_features
        )

    def _finish_fit(self) -> None:
        self.model.fit()

    def hyperparameters(self) -> dict[str, Any]:
        return {"layers": self.layers, "n_features": self.n_features, "batch_size": self.batch_size}
