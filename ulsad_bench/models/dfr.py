"""DFR (Yang, Shi, Qi, "Unsupervised anomaly segmentation via deep feature reconstruction",
Neurocomputing 2020), reimplemented from the paper and the authors' public code
(github.com/YoungGod/DFR, ``DFR-source/``), the eighth baseline of the ULSAD paper.

Pure torch parts (no training logic) and the model of the harness that trains them, as
anomalib splits ``torch_model`` from ``lightning_model``:

- :class:`RegionalFeatures`: the multi-scale regional feature generator;
- :class:`FeatCAE`: the convolutional autoencoder of 1 x 1 convolutions;
- :func:`pca_latent_dim`: the latent width, chosen by PCA;
- :class:`Dfr`: the :class:`~ulsad_bench.models.base.AnomalyModel`.

Facts taken from the authors' code (file names under ``DFR-source/``):

- ``main.py``: the 12 layers ``relu1_1`` ... ``relu4_4`` of VGG19 (``cfg.cnn_layers``), image
  size 256 x 256, ``featmap_size`` 256 x 256 (= the image size), ``upsample="bilinear"``,
  ``is_agg=True``, aggregation kernel 4 x 4, stride 4 x 4, dilation 1; ``latent_dim=None``
  (chosen by PCA); ``is_bn=True``; batch size 4; Adam with learning rate 1e-4; 150 epochs
  (the comment says "default 700, for wine 150"; 150 is the value that runs).
- ``vgg19.py`` / ``vgg.py``: torchvision's VGG19 ImageNet weights (``vgg19-dcbb9e9d.pth``, the
  file the harness reads from the torch cache), but every 3 x 3 convolution is built without
  padding and preceded by ``ReflectionPad2d(1)``: reflection instead of zero padding. The maps
  it returns for the ReLUs that feed another convolution (``relu1_1``, ``relu2_1``,
  ``relu3_1``-``relu3_3``, ``relu4_1``-``relu4_3``) are the already padded ones, 2 pixels larger.
- ``feature.py`` (``Extractor``): each layer's map is resized to ``featmap_size``
  (``F.interpolate``, ``align_corners=True`` for bilinear), replication-padded by
  ``(kernel - stride) // 2`` (0 for 4 / 4), averaged over ``kernel x kernel`` windows with
  ``stride`` (``AvgFeatAGG2d``: unfold + mean), then the layers are concatenated along the
  channels in network order: 64 x 2 + 128 x 2 + 256 x 4 + 512 x 4 = 3456 channels at
  ``featmap_size / 4`` (64 x 64 at 256 px).
- ``MVTec.py``: images normalised with ImageNet's mean and std (``Normalize`` in the
  backbone extractor here).
- ``anoseg_dfr.py`` (``build_classifier``): the latent width is
  ``PCA(n_components=0.90).fit(feats)`` on the regional feature vectors (every position) of
  the first batch of the unshuffled training loader, batch size 10, i.e. the first 10
  training images; sklearn keeps the fewest components whose cumulated explained variance
  ratio exceeds 0.9.
- ``feat_cae.py`` (``FeatCAE``): 1 x 1 convolutions C -> (C + 2d) / 2 -> 2d -> d (encoder) and
  d -> 2d -> (C + 2d) / 2 -> C (decoder), batch norm + ReLU after every convolution but the
  encoder's and the decoder's last; loss ``mean((x - x_hat) ** 2)``; energy
  ``mean((x - x_hat) ** 2, dim=1)`` per position.
- ``anoseg_dfr.py`` (``train``, ``score``, ``metrics_evaluation``): Adam without weight decay,
  the training loader shuffled, the last epoch's model kept (its periodic test-set AUC is only
  logged); the anomaly map is the energy bilinearly upsampled (``align_corners=True``) to the
  image size, no smoothing; the image score is the map's maximum (``scores.max(1).max(1)``,
  "for detection"; the mean is commented out).

Choices where the paper and code are silent, or where the harness differs:

- The backbone runs through torchvision's ``create_feature_extractor`` (node names
  ``features.N``, :data:`VGG19_RELUS`); ``vgg_padding="reflect"`` switches its convolutions to
  reflection padding and reflection-pads the returned maps that DFR returns padded, so the
  features equal the authors'; ``"zeros"`` keeps torchvision's network as it is.
- Resize, replication padding and average pooling are linear and separable, so each layer's
  map goes through one ``[out, in]`` matrix per axis (:func:`resize_pool_matrix`) instead of
  being upsampled to the full feature-map size first: the same numbers without the 256 x 256 x
  3456 intermediate.
- ``featmap_size=null`` follows the image size (the authors' 256 at 256 px), so the regional
  features are ``image_size / 4`` on each side at any ``dataset.image_size``.
- Images are read and resized by the harness (bilinear, the same for every model), not by
  DFR's nearest-neighbour ``Resize``; the validation split is not used (DFR calibrates nothing).
- DFR runs in fp32 (as the authors' code); ``precision=bf16`` is refused.

Scale. At 256 px the training features are 3456 x 64 x 64 per image, 56.6 MB in fp32. The
frozen features of the training images are extracted once per (images, backbone, weights,
layers, padding, resize, kernel, stride) through the harness's feature cache, never per
seed, and stored in ``cache_dtype`` (float16 by default: 28 MB per image, 11 GB for 400
images); batches are cast back to fp32 for the autoencoder. Features larger than 1 GiB stay on
disk between jobs, not in the cache's in-process memory. When the estimate exceeds
``max_cache_gb`` (16 by default, about 560 images at 256 px) they are not cached: every epoch
runs the backbone again on each batch, as the authors' code does (recorded as
``features: on_the_fly``). That costs little where it matters: at 256 px the VGG19 forward
pass (about 23 GMAC per image up to ``relu4_4``) is about an eighth of the autoencoder's
training step (forward and backward, about 180 GMAC per image at latent width 200), while each cached category
takes up to 16 GB of ``cache_dir``. On CUDA the cached features are moved to the GPU once
when they take less than half its free memory.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from .backbone import BackboneSpec, FeatureExtractor
from .base import AnomalyModel, Prediction, RunContext

#: DFR's names of VGG19's ReLU layers (``vgg19.py``) -> torchvision node names.
VGG19_RELUS: dict[str, str] = {
    "relu1_1": "features.1",
    "relu1_2": "features.3",
    "relu2_1": "features.6",
    "relu2_2": "features.8",
    "relu3_1": "features.11",
    "relu3_2": "features.13",
    "relu3_3": "features.15",
    "relu3_4": "features.17",
    "relu4_1": "features.20",
    "relu4_2": "features.22",
    "relu4_3": "features.24",
    "relu4_4": "features.26",
    "relu5_1": "features.29",
    "relu5_2": "features.31",
    "relu5_3": "features.33",
    "relu5_4": "features.35",
}
#: The 12 layers of DFR's ``main.py``.
DFR_LAYERS = tuple(name for name in VGG19_RELUS if not name.startswith("relu5"))
VGG_PADDINGS = ("reflect", "zeros")
UPSAMPLES = {"bilinear": "linear", "nearest": "nearest"}  # 2-D mode -> its 1-D factor
#: Cached features above this size are not kept in the cache's in-process memory.
MEMORY_CACHE_BYTES = 1 << 30


# ----------------------------------------------------------------------------- features


def resize_pool_matrix(
    in_size: int, featmap_size: int, kernel: int, stride: int, upsample: str = "bilinear", border: int = 0
) -> torch.Tensor:
    """The 1-D factor of DFR's per-layer chain as a matrix, float64 ``[out, in_size]``.

    The chain (``feature.py``): reflection border of ``border`` pixels (the padded maps of
    ``vgg19.py``), resize to ``featmap_size`` (bilinear with ``align_corners=True``, or
    nearest), replication padding ``(kernel - stride) // 2``, average pooling ``kernel`` /
    ``stride``. Each step is linear and acts on the two axes independently, so for a map
    ``X [.., H, W]`` the chain is ``M_H @ X @ M_W.T``. Built by passing the identity through
    the same torch operations.
    """
    if upsample not in UPSAMPLES:
        raise ValueError(f"upsample must be one of {tuple(UPSAMPLES)}, got {upsample!r}")
    signals = torch.eye(in_size, dtype=torch.float64)[:, None, :]  # in_size signals [in, 1, in]
    if border:
        signals = F.pad(signals, (border, border), mode="reflect")
    mode = UPSAMPLES[upsample]
    signals = F.interpolate(
        signals, size=featmap_size, mode=mode, align_corners=True if mode == "linear" else None
    )  # [in, 1, featmap]
    pad = (kernel - stride) // 2
    if pad:
        signals = F.pad(signals, (pad, pad), mode="replicate")
    signals = F.avg_pool1d(signals, kernel_size=kernel, stride=stride)  # [in, 1, out]
    return signals[:, 0, :].T.contiguous()


def vgg19_plan() -> list[tuple[str, int]]:
    """torchvision's ``vgg19().features`` as ``(kind, channels)`` per index (``conv``, ``relu``, ``pool``)."""
    plan: list[tuple[str, int]] = []
    for width in torchvision.models.vgg.cfgs["E"]:
        plan += [("pool", 0)] if width == "M" else [("conv", int(width)), ("relu", int(width))]
    return plan


def _reflect_convolutions(module: nn.Module) -> None:
    """Reflection instead of zero padding in every convolution (DFR's ``vgg.py`` / ``vgg19.py``)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer.padding_mode = "reflect"


class RegionalFeatures(nn.Module):
    """DFR's multi-scale regional feature generator over a frozen VGG19.

    ``forward(images [B, 3, S, S] in [0, 1]) -> [B, C, h, h]`` with ``C`` the sum of the
    layers' channels (3456 for the 12 layers) and ``h = (featmap_size + 2 p - kernel) // stride
    + 1`` (``S / 4`` by default). Each layer's map is resized to ``featmap_size``, replication
    padded, average pooled, and the layers are concatenated in network order (``feature.py``).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        layers: list[str],
        image_size: int,
        featmap_size: int | None = None,
        kernel: int = 4,
        stride: int = 4,
        upsample: str = "bilinear",
        vgg_padding: str = "reflect",
    ) -> None:
        super().__init__()
        unknown = [layer for layer in layers if layer not in VGG19_RELUS]
        if unknown:
            raise ValueError(f"unknown VGG19 layers {unknown}; DFR's names: {', '.join(VGG19_RELUS)}")
        if vgg_padding not in VGG_PADDINGS:
            raise ValueError(f"vgg_padding must be one of {VGG_PADDINGS}, got {vgg_padding!r}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {tuple(UPSAMPLES)}, got {upsample!r}")
        if spec.name != "vgg19":
            raise ValueError(f"DFR's regional features are defined on vgg19, got {spec.name}")
        order = list(VGG19_RELUS)
        self.layers = sorted(dict.fromkeys(layers), key=order.index)  # network order, as DFR's dict
        self.nodes = [VGG19_RELUS[layer] for layer in self.layers]
        self.featmap_size = int(featmap_size or image_size)
        self.kernel, self.stride = int(kernel), int(stride)
        self.upsample, self.vgg_padding = upsample, vgg_padding
        pad = (self.kernel - self.stride) // 2
        self.out_size = (self.featmap_size + 2 * pad - self.kernel) // self.stride + 1
        if self.out_size < 1:
            raise ValueError(f"featmap_size {self.featmap_size} is smaller than the kernel {self.kernel}")
        self.extractor = FeatureExtractor(spec, self.nodes)
        if vgg_padding == "reflect":
            _reflect_convolutions(self.extractor.body)
        plan = vgg19_plan()
        index = {node: int(node.split(".")[1]) for node in self.nodes}
        # DFR's vgg19.py returns the maps that feed a convolution already padded
        self.borders = {n: int(vgg_padding == "reflect" and plan[i + 1][0] == "conv") for n, i in index.items()}
        self.channels = sum(plan[i][1] for i in index.values())
        self._matrices: dict[tuple[str, int, torch.device, torch.dtype], torch.Tensor] = {}

    def _matrix(self, node: str, in_size: int, like: torch.Tensor) -> torch.Tensor:
        """:func:`resize_pool_matrix` of a layer, ``[h, in_size]`` on ``like``'s device and dtype (memoised)."""
        key = (node, in_size, like.device, like.dtype)
        if key not in self._matrices:
            matrix = resize_pool_matrix(
                in_size, self.featmap_size, self.kernel, self.stride, self.upsample, self.borders[node]
            )
            self._matrices[key] = matrix.to(device=like.device, dtype=like.dtype)
        return self._matrices[key]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.extractor(images)
        pooled = []
        for node in self.nodes:
            layer = maps[node].float()  # [B, C_l, H_l, W_l]
            rows = self._matrix(node, layer.shape[-2], layer)  # [h, H_l]
            cols = self._matrix(node, layer.shape[-1], layer)  # [h, W_l]
            pooled.append(rows @ layer @ cols.T)  # [B, C_l, h, h]
        return torch.cat(pooled, dim=1)


# ----------------------------------------------------------------------------- autoencoder


class FeatCAE(nn.Module):
    """DFR's convolutional autoencoder of 1 x 1 convolutions (``feat_cae.py``).

    ``forward(x [B, C, h, w]) -> [B, C, h, w]``; encoder C -> (C + 2d) // 2 -> 2d -> d, decoder
    d -> 2d -> (C + 2d) // 2 -> C, each inner convolution followed by batch norm (``is_bn``)
    and ReLU; no activation on the latent code or the output.
    """

    def __init__(self, in_channels: int, latent_dim: int, batch_norm: bool = True) -> None:
        super().__init__()
        hidden = (in_channels + 2 * latent_dim) // 2
        self.encoder = self._stack([in_channels, hidden, 2 * latent_dim, latent_dim], batch_norm)
        self.decoder = self._stack([latent_dim, 2 * latent_dim, hidden, in_channels], batch_norm)

    @staticmethod
    def _stack(widths: list[int], batch_norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Conv2d(width_in, width_out, kernel_size=1))
            if i < len(widths) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width_out))
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """DFR's energy: squared error averaged over channels, ``[B, C, h, w] x 2 -> [B, h, w]``."""
    return ((x - x_hat) ** 2).mean(dim=1)


def pca_latent_dim(vectors: torch.Tensor, variance_ratio: float) -> int:
    """The fewest principal components whose explained variance ratio exceeds ``variance_ratio``.

    The rule of sklearn's ``PCA(n_components=variance_ratio)`` that DFR calls
    (``anoseg_dfr.py``): centred data, eigenvalues in decreasing order, the count ``k`` with
    ``cumsum[k - 2] <= ratio < cumsum[k - 1]``. Computed in float64 from the smaller of the two
    Gram matrices.

    Args:
        vectors: ``[n, C]`` feature vectors (one per row).
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
    k = int(torch.searchsorted(cumulative, torch.tensor([variance_ratio], dtype=torch.float64), right=True)) + 1
    return min(k, len(eigenvalues))


# ----------------------------------------------------------------------------- the model


class Dfr(AnomalyModel):
    """DFR as a model of the harness (see the module docstring for every source)."""

    name = "dfr"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    uses_configured_backbone = False  # VGG19, whatever backbone= says
    min_image_size = 16  # VGG19's four poolings before relu4_4 and the 4 x 4 regional windows

    def __init__(
        self,
        backbone: str = "vgg19",
        layers: tuple[str, ...] = DFR_LAYERS,
        vgg_padding: str = "reflect",
        upsample: str = "bilinear",
        featmap_size: int | None = None,
        kernel_size: int = 4,
        stride: int = 4,
        latent_dim: int | None = None,
        variance_ratio: float = 0.9,
        pca_images: int = 10,
        batch_norm: bool = True,
        epochs: int = 150,
        batch_size: int = 4,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        feature_batch_size: int = 8,
        cache_dtype: str = "float16",
        max_cache_gb: float = 16.0,
    ) -> None:
        if backbone != "vgg19":
            raise ValueError(f"DFR's regional features are defined on vgg19, got backbone={backbone!r}")
        if cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be float16 or float32, got {cache_dtype!r}")
        if latent_dim is not None and latent_dim < 1:
            raise ValueError(f"latent_dim must be positive or null (PCA), got {latent_dim}")
        self.backbone_name = backbone
        self.layers = list(layers)
        self.vgg_padding = vgg_padding
        self.upsample = upsample
        self.featmap_size = featmap_size
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.config_latent_dim = latent_dim  # None: chosen by PCA in fit()
        self.latent_dim: int | None = latent_dim
        self.variance_ratio = float(variance_ratio)
        self.pca_images = int(pca_images)
        self.batch_norm = bool(batch_norm)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.feature_batch_size = int(feature_batch_size)
        self.cache_dtype = cache_dtype
        self.max_cache_gb = float(max_cache_gb)
        self.feature_mode = "cached"

    # ------------------------------------------------------------------ set-up

    def own_backbone(self) -> str | None:
        return self.backbone_name

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        if ctx.autocast_dtype is not None:
            raise ValueError("DFR runs in fp32 (as the authors' code); use precision=fp32")
        self.spec = ctx.backbone_spec(self.backbone_name)
        self.features = RegionalFeatures(
            self.spec,
            self.layers,
            ctx.image_size,
            self.featmap_size,
            self.kernel_size,
            self.stride,
            self.upsample,
            self.vgg_padding,
        ).to(ctx.device)
        self.layers = self.features.layers
        self.cae: FeatCAE | None = None

    def backbone_used(self) -> BackboneSpec:
        return self.spec

    def _feature_key(self, images: ImageSet) -> dict[str, Any]:
        f = self.features
        return {
            "what": "dfr-features",
            "images": images.key,
            "backbone": self.spec.name,
            "weights": self.spec.weights.identity,
            "layers": f.layers,
            "vgg_padding": f.vgg_padding,
            "upsample": f.upsample,
            "featmap_size": f.featmap_size,
            "kernel": f.kernel,
            "stride": f.stride,
            "dtype": self.cache_dtype,
        }

    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        """Regional features of images ``[B, 3, S, S]`` (any device) in fp32 on the device."""
        return self.features(images.to(self.ctx.device, non_blocking=True))

    def train_features(self, train: ImageSet) -> torch.Tensor | None:
        """Frozen regional features of ``train``, ``[N, C, h, h]`` in ``cache_dtype`` (cached), or
        None when they would exceed ``max_cache_gb`` (then every epoch extracts them again)."""
        f = self.features
        dtype = getattr(torch, self.cache_dtype)
        nbytes = len(train) * f.channels * f.out_size**2 * torch.finfo(dtype).bits // 8
        if nbytes > self.max_cache_gb * 1e9:
            self.feature_mode = "on_the_fly"
            self.ctx.log(
                f"dfr: training features would take {nbytes / 1e9:.1f} GB (> max_cache_gb={self.max_cache_gb}); "
                "extracting them every epoch instead"
            )
            return None
        self.feature_mode = "cached"

        def compute() -> torch.Tensor:
            out = torch.empty((len(train), f.channels, f.out_size, f.out_size), dtype=dtype)
            total = -(-len(train) // self.feature_batch_size)
            batches = train.batches(self.feature_batch_size)
            for idx, images in tqdm(
                batches, total=total, desc="dfr: features", leave=False, disable=not self.ctx.progress
            ):
                out[idx] = self._extract(images).to(dtype).cpu()
            return out

        features, _ = self.ctx.feature_cache.get_or_compute(
            self._feature_key(train), compute, keep_in_memory=nbytes <= MEMORY_CACHE_BYTES
        )
        return features

    def _on_device(self, features: torch.Tensor) -> torch.Tensor:
        """Move cached features to the GPU once when they fit comfortably; else keep them on CPU."""
        device = self.ctx.device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if features.numel() * features.element_size() < free / 2:
                return features.to(device)
        return features

    def choose_latent_dim(self, train: ImageSet, features: torch.Tensor | None) -> tuple[int, int]:
        """(latent width, feature vectors used): PCA on the first ``pca_images`` training images."""
        if self.config_latent_dim is not None:
            return self.config_latent_dim, 0
        n = min(self.pca_images, len(train))
        if features is not None:
            first = features[:n].to(self.ctx.device).float()
        else:
            first = self._extract(train.float_images(slice(0, n)))
        vectors = first.permute(0, 2, 3, 1).reshape(-1, first.shape[1])  # [n * h * w, C]
        return pca_latent_dim(vectors, self.variance_ratio), vectors.shape[0]

    @property
    def _latent_source(self) -> str:
        return "config" if self.config_latent_dim is not None else "pca"

    # ------------------------------------------------------------------ training

    def train_epochs(self, train: ImageSet, features: torch.Tensor | None, epochs: int) -> list[float]:
        """Train the CAE on the l2 reconstruction loss; the mean loss of each epoch.

        ``features``: the cached ``[N, C, h, h]`` of ``train`` (CPU or device), or None to run
        the backbone on every batch.
        """
        assert self.cae is not None
        device = self.ctx.device
        optimizer = torch.optim.Adam(self.cae.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.ctx.seed)
        self.cae.train()
        losses: list[float] = []
        bar = tqdm(range(epochs), desc="dfr: train", leave=False, disable=not self.ctx.progress)
        for _ in bar:
            total, count = 0.0, 0
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), self.batch_size):
                idx = order[start : start + self.batch_size]
                if features is None:
                    x = self._extract(train.float_images(idx))
                else:
                    x = features[idx.to(features.device)].to(device, non_blocking=True).float()
                loss = F.mse_loss(self.cae(x), x)  # feat_cae.py: mean((x - x_hat) ** 2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                count += len(idx)
            losses.append(total / count)
            bar.set_postfix(loss=f"{losses[-1]:.5f}", refresh=False)
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"dfr: training loss is {losses[-1]} after {len(losses)} epochs")
        self.cae.eval()
        return losses

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        misses = self.ctx.feature_cache.misses
        features = self.train_features(train)
        reused = features is not None and self.ctx.feature_cache.misses == misses
        if features is not None:
            features = self._on_device(features)
        latent_dim, n_vectors = self.choose_latent_dim(train, features)
        self.latent_dim = latent_dim
        self.ctx.log(
            f"dfr: latent width {latent_dim} ({self._latent_source}, variance ratio {self.variance_ratio}, "
            f"{n_vectors} vectors of {self.features.channels} channels)"
        )
        device = self.ctx.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.ctx.seed)
            self.cae = FeatCAE(self.features.channels, latent_dim, self.batch_norm).to(device)
        losses = self.train_epochs(train, features, self.epochs)
        return {
            "train_images": len(train),
            "features": self.feature_mode,
            "features_reused": reused,
            "channels": self.features.channels,
            "feature_size": self.features.out_size,
            "latent_dim": latent_dim,
            "pca_vectors": n_vectors,
            "loss_per_epoch": [round(v, 6) for v in losses],
            "final_loss": round(losses[-1], 6) if losses else None,
        }

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Energy map upsampled bilinearly (``align_corners=True``) to the image; score = its max."""
        assert self.cae is not None, "fit() first"
        self.cae.eval()
        x = self._extract(images)
        energy = reconstruction_error(x, self.cae(x))  # [B, h, h]
        maps = F.interpolate(energy[:, None], size=images.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
        return Prediction(maps=maps, scores=maps.amax(dim=(-2, -1)))

    def inference_modules(self) -> list[nn.Module]:
        return [self.features] + ([self.cae] if self.cae is not None else [])

    def hyperparameters(self) -> dict[str, Any]:
        f = self.features
        return {
            "backbone": self.spec.name,
            "layers": list(f.layers),
            "nodes": list(f.nodes),
            "vgg_padding": f.vgg_padding,
            "upsample": f.upsample,
            "featmap_size": f.featmap_size,
            "kernel_size": f.kernel,
            "stride": f.stride,
            "channels": f.channels,
            "feature_size": f.out_size,
            "latent_dim": self.latent_dim,
            "latent_dim_source": self._latent_source,
            "variance_ratio": self.variance_ratio,
            "pca_images": self.pca_images,
            "batch_norm": self.batch_norm,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "optimizer": "Adam",
            "loss": "mse",
            "map": "channel-mean squared error, bilinear (align_corners) to the image, no blur",
            "score": "max",
            "features": self.feature_mode,
            "cache_dtype": self.cache_dtype,
            "max_cache_gb": self.max_cache_gb,
        }
