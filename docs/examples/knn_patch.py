"""A k-nearest-neighbour patch detector: the worked example of ``docs/adding-a-method.md``.

Frozen backbone features of ``layer2`` and ``layer3`` (3 x 3 local average, ``layer3`` resized
to ``layer2``'s grid, as PatchCore's, without its coreset) of every training image form a memory
bank; a test patch's anomaly score is its distance to the nearest training patch, the map is
those distances upsampled to the image size and the image score is the map's maximum.

Two parts, as anomalib's models: :class:`KnnPatchModel`, a plain torch module
(``forward(images) -> maps``), and :class:`KnnPatch`, the harness's wrapper that builds it in
``setup``, fills its memory bank in ``fit`` and turns its maps into a ``Prediction``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ulsad_bench.data import ImageSet
from ulsad_bench.environment import seeded
from ulsad_bench.models.backbone import BackboneSpec, FeatureExtractor
from ulsad_bench.models.base import AnomalyModel, Prediction, RunContext


class KnnPatchModel(nn.Module):
    """``forward(images [B, 3, S, S] in [0, 1]) -> maps [B, S, S]``: nearest-patch distances."""

    def __init__(self, backbone: BackboneSpec, layers: list[str], chunk_size: int = 4096) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers)
        self.layers = list(layers)
        self.chunk_size = chunk_size
        # a buffer, so that .to(device) moves it and profiling counts it as the model's state
        self.register_buffer("memory_bank", torch.empty(0))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, C, h, w]`` on the grid of the first layer."""
        features = self.extractor(images)
        grid = features[self.layers[0]].shape[-2:]
        pooled = [F.avg_pool2d(features[layer], 3, stride=1, padding=1) for layer in self.layers]
        resized = [F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in pooled]
        return torch.cat(resized, dim=1)

    def nearest_distance(self, patches: torch.Tensor) -> torch.Tensor:
        """Euclidean distance ``[P]`` of each patch ``[P, C]`` to its nearest memory-bank patch."""
        best = torch.full((len(patches),), float("inf"), device=patches.device)
        for part in self.memory_bank.split(self.chunk_size):
            best = torch.minimum(best, torch.cdist(patches, part).amin(dim=1))
        return best

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.embed(images)
        b, c, h, w = embedding.shape
        distances = self.nearest_distance(embedding.permute(0, 2, 3, 1).reshape(-1, c)).reshape(b, 1, h, w)
        return F.interpolate(distances, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


class KnnPatch(AnomalyModel):
    """The harness's wrapper of :class:`KnnPatchModel` (config: ``conf/model/knn_patch.yaml``)."""

    name = "knn_patch"
    uses_validation = False  # calibrates nothing: no validation split, every training image is used
    min_image_size = 32  # layer3 (stride 16) keeps at least a 2 x 2 grid

    def __init__(self, layers: tuple[str, ...] = ("layer2", "layer3"), bank_size: int | None = None) -> None:
        self.layers = list(layers)
        self.bank_size = bank_size  # None: every training patch; else a random subset drawn from the seed

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.model = KnnPatchModel(ctx.backbone, self.layers).to(ctx.device)

    def train_patches(self, train: ImageSet) -> torch.Tensor:
        """Patch features ``[N * h * w, C]`` of the training images, computed once per key (cached)."""

        def compute() -> torch.Tensor:
            chunks = [self.model.embed(x.to(self.ctx.device)).cpu() for _, x in train.batches(32)]
            embedding = torch.cat(chunks)
            return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])

        key = {
            "what": "knn_patch-features",
            "images": train.key,  # the files and the image size
            "backbone": self.ctx.backbone.name,
            "weights": self.ctx.backbone.weights.identity,
            "layers": self.layers,
        }
        with torch.no_grad():
            patches, _hit = self.ctx.feature_cache.get_or_compute(key, compute)
        return patches

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        patches = self.train_patches(train)
        if self.bank_size is not None and self.bank_size < len(patches):
            with seeded(self.ctx.seed, self.ctx.device):  # the run seed draws the subset, nothing else
                patches = patches[torch.randperm(len(patches))[: self.bank_size]]
        self.model.memory_bank = patches.to(self.ctx.device)
        return {"train_images": len(train), "memory_bank": len(patches)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        maps = self.model(images)
        return Prediction(maps=maps, scores=maps.amax(dim=(-2, -1)))

    def hyperparameters(self) -> dict[str, Any]:
        return {"layers": self.layers, "bank_size": self.bank_size}

    def inference_modules(self) -> list[nn.Module]:
        return [self.model]
