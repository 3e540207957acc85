"""DFR as a model of the harness: training and inference of :mod:`.torch_model`'s networks.

- :func:`pca_latent_dim`: the latent width, chosen by PCA;
- :class:`Dfr`: the :class:`~ulsad_bench.models.base.AnomalyModel`.

Facts taken from the authors' code (file names under ``DFR-source/`` of YoungGod/DFR):

- ``main.py``: ``latent_dim=None`` (chosen by PCA); batch size 4; Adam with learning rate
  1e-4; 700 epochs for MVTec AD. The first commit (efddc81, 2020-06-17, the code released
  with the paper's MVTec AD experiments) has ``--epochs`` default 700; the commit that added
  the authors' wine dataset (8c72aba, 2020-12-15) set it to 150 with the comment "default 700,
  for wine 150", i.e. 700 remains the value for MVTec AD and 150 is the wine setting. The ULSAD
  paper ran DFR with "the hyperparameters mentioned in the respective papers" on MVTec-style
  datasets, so 700 is the default; ``+dfr=shipped_code`` (``experiments/dfr/shipped_code.yaml``)
  runs the 150 of the code as last shipped.
- ``anoseg_dfr.py`` (``build_classifier``): the latent width is
  ``PCA(n_components=0.90).fit(feats)`` on the regional feature vectors (every position) of
  the first batch of the unshuffled training loader, batch size 10, i.e. the first 10
  training images; sklearn keeps the fewest components whose cumulated explained variance
  ratio exceeds 0.9.
- ``feat_cae.py``: loss ``mean((x - x_hat) ** 2)``.
- ``anoseg_dfr.py`` (``train``): Adam without weight decay, the training loader shuffled, the
  last epoch's model kept (its periodic test-set AUC is only logged).

Choices where the paper and code are silent, or where the harness differs:

- Images are read and resized by the harness (bilinear, the same for every model), not by
  DFR's nearest-neighbour ``Resize``; the validation split is not used (DFR calibrates nothing).
- DFR runs in fp32 by default (as the authors' code). ``precision=bf16`` (:mod:`..precision`)
  runs VGG19 and the autoencoder under bf16 autocast, each handing fp32 outputs on; the
  resize-and-pool matrices, the loss and the reconstruction error stay in fp32.

Scale. At 256 px the training features are 3456 x 64 x 64 per image, 56.6 MB in fp32. The
frozen features of the training images are extracted once per (images, backbone, weights,
layers, padding, resize, kernel, stride) through the harness's feature cache, never per
seed, and stored in ``cache_dtype`` (float16 by default: 28 MB per image, 11 GB for 400
images); batches are cast back to fp32 for the autoencoder. Features larger than 1 GiB stay on
disk between jobs, not in the cache's in-process memory. When the estimate exceeds
``max_cache_gb`` (16 by default, about 560 images at 256 px) they are not cached: every epoch
runs the backbone again on each batch, as the authors' code does (recorded as
``features: on_the_fly``). That costs little where it matters: at 256 px the VGG19 forward
pass (about 23 GMAC per image up to ``relu4_4``) is small next to the autoencoder's training
step, whose first and last 1 x 1 convolutions alone (3456 channels to and from at least 1728,
at 64 x 64 positions) take about 49 GMAC per image in the forward pass and twice that in the
backward pass, while each cached category takes up to 16 GB of ``cache_dir``. On an accelerator
the cached features are moved to it once when they fit (less than half its free memory on CUDA).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data import ImageSet
from ...environment import adam_implementation, keep_on_device, seeded
from ..base import AnomalyModel, CacheEntry, CacheFacts, Prediction, RunContext
from ..precision import autocast_forward
from ..settings import Count, LearningRate, NonNegative, OpenFraction, Settings, WeightDecay, adopt, as_record
from ..training import LossSums, TrainingLog, train_epochs
from .torch_model import DFR_LAYERS, VGG19_RELUS, DfrModel, FeatCAE, RegionalFeatures, feature_side, vgg19_plan

#: Cached features above this size are not kept in the cache's in-process memory.
MEMORY_CACHE_BYTES = 1 << 30
FEATURES_ENTRY = "DFR features (train)"


def feature_width(layers: list[str]) -> int:
    """DFR's regional feature width: the channels of its VGG19 layers (3456 for the 12 layers)."""
    plan = vgg19_plan()
    return sum(plan[int(VGG19_RELUS[layer].split(".")[1])][1] for layer in dict.fromkeys(layers))


def pca_latent_dim(vectors: torch.Tensor, variance_ratio: float) -> int:
    """The fewest principal components whose explained variance ratio exceeds ``variance_ratio``.

    The rule of sklearn's ``PCA(n_components=variance_ratio)`` that DFR calls
    (``anoseg_dfr.py``): centred data, eigenvalues in decreasing order, the count ``k`` with
    ``cumsum[k - 2] <= ratio < cumsum[k - 1]``. Computed in float64 from the smaller of the two
    Gram matrices.

    Args:
        vectors: ``[n, feature_dim]`` feature vectors (one per row).
        variance_ratio: in (0, 1).
    """
    if not 0 < variance_ratio < 1:
        raise ValueError(f"variance_ratio must be in (0, 1), got {variance_ratio}")
    x = vectors.double()
    x = x - x.mean(dim=0, keepdim=True)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    eigenvalues = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
    total = eigenvalues.sum()
    if total <= 0:
        raise ValueError("PCA of constant features: the latent width is undefined")
    cumulative = torch.cumsum(eigenvalues, 0) / total
    ratio = torch.tensor([variance_ratio], dtype=torch.float64, device=cumulative.device)
    k = int(torch.searchsorted(cumulative, ratio, right=True)) + 1
    return min(k, len(eigenvalues))


@dataclass(frozen=True)
class DfrSettings(Settings, model="dfr"):
    """DFR's settings (``conf/model/dfr.yaml``), each from the authors' code (module docstrings)."""

    backbone: str = "vgg19"
    layers: tuple[str, ...] = DFR_LAYERS
    vgg_padding: str = "reflect"
    upsample: str = "bilinear"
    featmap_size: Count | None = None
    kernel_size: Count = 4
    stride: Count = 4
    latent_dim: Count | None = None
    variance_ratio: OpenFraction = 0.9
    pca_images: Count = 10
    batch_norm: bool = True
    epochs: Count = 700
    batch_size: Count = 4
    lr: LearningRate = 1e-4
    weight_decay: WeightDecay = 0.0
    feature_batch_size: Count = 8
    cache_dtype: str = "float16"
    max_cache_gb: NonNegative = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.backbone != "vgg19":
            raise ValueError(f"DFR's regional features are defined on vgg19, got backbone={self.backbone!r}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be float16 or float32, got {self.cache_dtype!r}")


class Dfr(AnomalyModel):
    """DFR as a model of the harness (see the module docstrings for every source)."""

    name = "dfr"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    min_image_size = 16  # VGG19's four poolings before relu4_4 and the 4 x 4 regional windows

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`DfrSettings`'s (``conf/model/dfr.yaml``), checked there."""
        adopt(self, DfrSettings(**settings))
        self.config_latent_dim = self.latent_dim  # None: chosen by PCA in fit()
        self.feature_mode = "cached"

    # ------------------------------------------------------------------ set-up

    @classmethod
    def cache_entries(cls, settings: Mapping[str, Any], facts: CacheFacts) -> tuple[list[CacheEntry], list[str]]:
        """The training features (N x feature width x h^2 x 2 (float16) or 4 bytes), none when above
        ``max_cache_gb`` (extracted every epoch instead)."""
        model = cls(**settings)
        featmap = int(model.featmap_size or facts.image_size)
        side = feature_side(featmap, model.kernel_size, model.stride)
        per_value = 2 if model.cache_dtype == "float16" else 4
        nbytes = facts.n_train * feature_width(model.layers) * side * side * per_value
        if nbytes > model.max_cache_gb * 1e9:
            note = (
                f"DFR features above model.max_cache_gb={model.max_cache_gb:g} (GB) are not cached: extracted every "
                "epoch instead (slower)"
            )
            return [], [note]
        key = [facts.train_id, model.backbone, facts.weights_policy, model.layers, model.vgg_padding]
        key += [model.upsample, featmap, model.kernel_size, model.stride, model.cache_dtype, facts.precision]
        return [CacheEntry(FEATURES_ENTRY, json.dumps(key), nbytes)], []

    def own_backbone(self) -> str | None:
        return self.backbone

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.features = RegionalFeatures(
            ctx.backbone,
            self.layers,
            image_size=ctx.image_size,
            featmap_size=self.featmap_size,
            kernel_size=self.kernel_size,
            stride=self.stride,
            upsample=self.upsample,
            vgg_padding=self.vgg_padding,
        ).to(ctx.device)
        autocast_forward(self.features.extractor, self.autocast_dtype)
        self.layers = self.features.layers
        self.model: DfrModel | None = None  # built in fit(), once the latent width is known

    @property
    def latent_dim_source(self) -> str:
        return "config" if self.config_latent_dim is not None else "pca"

    # ------------------------------------------------------------------ features

    def _feature_key(self, images: ImageSet) -> dict[str, Any]:
        f = self.features
        return {
            "what": "dfr-features",
            "images": images.key,
            "backbone": self.ctx.backbone.name,
            "weights": self.ctx.backbone.weights.identity,
            "layers": f.layers,
            "vgg_padding": f.vgg_padding,
            "upsample": f.upsample,
            "featmap_size": f.featmap_size,
            "kernel": f.kernel_size,
            "stride": f.stride,
            "dtype": self.cache_dtype,
            "precision": self.ctx.precision,  # VGG19 runs under the precision policy
        }

    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        """Regional features of images ``[B, 3, S, S]`` (any device) in fp32 on the device."""
        return self.features(images.to(self.ctx.device, non_blocking=True))

    def train_features(self, train: ImageSet) -> tuple[torch.Tensor | None, bool]:
        """``(features, hit)``: the frozen regional features of ``train``, ``[N, feature_dim, h, h]``
        in ``cache_dtype``, and whether they came from the feature cache; ``(None, False)`` when
        they would exceed ``max_cache_gb`` (then every epoch extracts them again)."""
        f = self.features
        dtype = getattr(torch, self.cache_dtype)
        nbytes = len(train) * f.feature_dim * f.feature_size**2 * torch.finfo(dtype).bits // 8
        if nbytes > self.max_cache_gb * 1e9:
            self.feature_mode = "on_the_fly"
            self.ctx.log(
                f"dfr: training features would take {nbytes / 1e9:.1f} GB (> max_cache_gb={self.max_cache_gb}); "
                "extracting them every epoch instead"
            )
            return None, False
        self.feature_mode = "cached"

        def compute() -> torch.Tensor:
            out = torch.empty((len(train), f.feature_dim, f.feature_size, f.feature_size), dtype=dtype)
            batches = train.batches(self.feature_batch_size, progress=self.ctx.progress, desc="dfr: features")
            for idx, images in batches:
                out[idx] = self._extract(images).to(dtype).cpu()
            return out

        return self.ctx.feature_cache.get_or_compute(
            self._feature_key(train), compute, keep_in_memory=nbytes <= MEMORY_CACHE_BYTES
        )

    def _on_device(self, features: torch.Tensor) -> torch.Tensor:
        """Move cached features to the accelerator once when they fit comfortably; else keep them
        in host memory (:func:`~ulsad_bench.environment.keep_on_device`)."""
        return features.to(self.ctx.device) if keep_on_device(features.nbytes, self.ctx.device) else features

    def choose_latent_dim(self, train: ImageSet, features: torch.Tensor | None) -> tuple[int, int]:
        """(latent width, feature vectors used): PCA on the first ``pca_images`` training images."""
        if self.config_latent_dim is not None:
            return self.config_latent_dim, 0
        n = min(self.pca_images, len(train))
        if features is not None:
            first = features[:n].to(self.ctx.device).float()
        else:
            first = self._extract(train.float_images(slice(0, n)))
        vectors = first.permute(0, 2, 3, 1).reshape(-1, first.shape[1])  # [n * h * w, feature_dim]
        return pca_latent_dim(vectors, self.variance_ratio), vectors.shape[0]

    # ------------------------------------------------------------------ training

    def train_epochs(self, cae: FeatCAE, train: ImageSet, features: torch.Tensor | None, epochs: int) -> TrainingLog:
        """Train ``cae`` on the l2 reconstruction loss; the mean loss (``mse``) and the seconds of each epoch.

        ``features``: the cached ``[N, feature_dim, h, h]`` of ``train`` (CPU or device), or None
        to run the backbone on every batch (:func:`..training.train_epochs`: the loss is read once
        per epoch).
        """
        device = self.ctx.device
        optimizer = torch.optim.Adam(
            cae.parameters(), lr=self.lr, weight_decay=self.weight_decay, **adam_implementation(device)
        )
        generator = torch.Generator().manual_seed(self.ctx.seed)

        def run_epoch(epoch: int, sums: LossSums) -> None:
            for idx, images in train.batches(self.batch_size, shuffle=True, generator=generator):
                if features is None:
                    x = self._extract(images)
                else:
                    x = features[idx.to(features.device)].to(device, non_blocking=True).float()
                loss = F.mse_loss(cae(x), x)  # feat_cae.py: mean((x - x_hat) ** 2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums.add({"mse": loss}, weight=len(idx))  # the epoch's mean over images

        return train_epochs(self, epochs, run_epoch, [cae], ["mse"], hint=f"lr {self.lr}, batch size {self.batch_size}")

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        features, reused = self.train_features(train)
        if features is not None:
            features = self._on_device(features)
        latent_dim, pca_vectors = self.choose_latent_dim(train, features)
        self.latent_dim = latent_dim
        feature_dim = self.features.feature_dim
        self.ctx.log(
            f"dfr: latent width {latent_dim} ({self.latent_dim_source}, variance ratio {self.variance_ratio}, "
            f"{pca_vectors} vectors of {feature_dim} channels)"
        )
        device = self.ctx.device
        with seeded(self.ctx.seed, device):
            cae = FeatCAE(feature_dim, latent_dim, self.batch_norm).to(device)
        autocast_forward(cae, self.autocast_dtype)
        self.model = DfrModel(self.features, cae)
        log = self.train_epochs(cae, train, features, self.epochs)
        losses = [epoch["mse"] for epoch in log.losses]
        return {
            "train_images": len(train),
            "features": self.feature_mode,
            "features_reused": reused,
            "channels": feature_dim,
            "feature_size": self.features.feature_size,
            "latent_dim": latent_dim,
            "pca_vectors": pca_vectors,
            "loss_per_epoch": [round(v, 6) for v in losses],
            "final_loss": round(losses[-1], 6) if losses else None,
            "timing": {"epoch_s": log.epoch_s},
        }

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Energy map upsampled bilinearly (``align_corners=True``) to the image; score = its max."""
        assert self.model is not None, "fit() first"
        self.model.eval()
        maps, scores = self.model(images.to(self.ctx.device, non_blocking=True))
        return Prediction(maps=maps, scores=scores)

    def inference_modules(self) -> list[nn.Module]:
        return [self.model] if self.model is not None else [self.features]

    def hyperparameters(self) -> dict[str, Any]:
        """Every setting (the layers, feature-map size and latent width as resolved), what they make
        of the regional features, and the fixed choices of the authors' code."""
        f = self.features
        resolved = {"backbone": self.ctx.backbone.name, "layers": list(f.layers), "featmap_size": f.featmap_size}
        return {
            **as_record(self, DfrSettings, **resolved),
            "nodes": list(f.nodes),
            "channels": f.feature_dim,
            "feature_size": f.feature_size,
            "latent_dim_source": self.latent_dim_source,
            "optimizer": "Adam",
            "loss": "mse",
            "map": "channel-mean squared error, bilinear (align_corners) to the image, no blur",
            "score": "max",
            "features": self.feature_mode,
        }
