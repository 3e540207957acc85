"""The shared part of PaDiM and PatchCore: anomalib torch models that collect frozen-backbone
embeddings of the training images, then fit.

The harness feeds them ImageNet-normalised images, as anomalib's default pre-processing
produces, and takes their raw anomaly maps and scores. Backbone weights come from the
harness's one backbone source (:mod:`ulsad_bench.models.backbone`) and are copied into
anomalib's timm feature extractor, so all models of a comparison share one weights file.

Unlike anomalib's Lightning training loop (which puts the whole module, backbone included,
in train mode), the frozen backbone stays in eval mode while embeddings are collected, so
its batch-norm statistics are never updated.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from ..data import ImageSet
from ..environment import seeded
from .anomalib_adapter import backbone_of, maps_and_scores, no_downloads, timm_network, train_with_frozen_backbone
from .backbone import Normalize, load_into
from .base import AnomalyModel, Prediction, RunContext
from .precision import autocast_forward


class FeatureBankModel(AnomalyModel):
    """An anomalib model that collects frozen-backbone embeddings, then fits (PaDiM, PatchCore).

    Precision (``precision=bf16``, :mod:`.precision`): the backbone runs under autocast and hands
    fp32 features on; the embeddings, PaDiM's Gaussians and Mahalanobis distances, PatchCore's
    coreset and nearest-neighbour distances are computed in fp32.
    """

    batch_size: int = 32

    @abstractmethod
    def _build(self, ctx: RunContext) -> nn.Module:
        """The anomalib torch model, built without pretrained weights."""

    @abstractmethod
    def _finish_fit(self) -> dict[str, Any]:
        """Turn the collected embeddings into the fitted model; returns a summary for the record."""

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        with no_downloads(), seeded(ctx.seed):  # built on the CPU; draws PaDiM's random feature subset
            self.model = self._build(ctx)
        load_into(timm_network(self.model), ctx.backbone)
        autocast_forward(backbone_of(self.model), self.autocast_dtype)
        self.model.to(ctx.device)
        self.normalize = Normalize().to(ctx.device)

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        train_with_frozen_backbone(self.model)
        with no_downloads(), torch.no_grad():
            batches = train.batches(self.batch_size, progress=self.ctx.progress, desc=f"{self.name}: embeddings")
            for _, images in batches:
                self.model(self.normalize(images.to(self.ctx.device)))
            summary = self._finish_fit()
        self.model.eval()
        return {"train_images": len(train), **summary}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        maps, scores = maps_and_scores(self.model(self.normalize(images)))
        return Prediction(maps=maps.float(), scores=scores.float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model, self.normalize]
