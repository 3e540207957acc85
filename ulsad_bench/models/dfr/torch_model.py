"""DFR's networks as pure torch modules (no training logic).

- :class:`RegionalFeatures`: the multi-scale regional feature generator over a frozen VGG19;
- :class:`FeatCAE`: the convolutional autoencoder of 1 x 1 convolutions;
- :func:`reconstruction_error`: DFR's energy per position;
- :class:`DfrModel`: both, for inference: images -> anomaly maps and image scores.

Facts taken from the authors' code (file names under ``DFR-source/`` of YoungGod/DFR):

- ``main.py``: the 12 layers ``relu1_1`` ... ``relu4_4`` of VGG19 (``cfg.cnn_layers``), image
  size 256 x 256, ``featmap_size`` 256 x 256 (= the image size), ``upsample="bilinear"``,
  ``is_agg=True``, aggregation kernel 4 x 4, stride 4 x 4, dilation 1; ``is_bn=True``.
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
- ``feat_cae.py`` (``FeatCAE``): 1 x 1 convolutions C -> (C + 2d) / 2 -> 2d -> d (encoder) and
  d -> 2d -> (C + 2d) / 2 -> C (decoder), batch norm + ReLU after every convolution but the
  encoder's and the decoder's last; energy ``mean((x - x_hat) ** 2, dim=1)`` per position.
- ``anoseg_dfr.py`` (``score``, ``metrics_evaluation``): the anomaly map is the energy
  bilinearly upsampled (``align_corners=True``) to the image size, no smoothing; the image
  score is the map's maximum (``scores.max(1).max(1)``, "for detection"; the mean is
  commented out).

Choices where the paper and code are silent, or where the harness differs:

- The backbone runs through torchvision's ``create_feature_extractor`` (node names
  ``features.N``, :data:`VGG19_RELUS`); ``vgg_padding="reflect"`` switches its convolutions to
  reflection padding and reflection-pads the returned maps that DFR returns padded, so the
  features equal the authors'; ``"zeros"`` keeps torchvision's network as it is.
- Resize, replication padding and average pooling are linear and separable, so each layer's
  map goes through one ``[feature_size, map_size]`` matrix per axis (:func:`resize_pool_matrix`)
  instead of being upsampled to the full feature-map size first: the same numbers without the
  256 x 256 x 3456 intermediate. The matrices for ``image_size`` are buffers of
  :class:`RegionalFeatures`, so the module's buffers hold every tensor inference uses.
- ``featmap_size=None`` follows the image size (the authors' 256 at 256 px), so the regional
  features are ``image_size / 4`` on each side at any image size.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..backbone import BackboneSpec, FeatureExtractor

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


# ----------------------------------------------------------------------------- features


def resize_pool_matrix(
    map_size: int, featmap_size: int, kernel_size: int, stride: int, upsample: str = "bilinear", border: int = 0
) -> torch.Tensor:
    """The 1-D factor of DFR's per-layer chain as a matrix, float64 ``[feature_size, map_size]``.

    The chain (``feature.py``): reflection border of ``border`` pixels (the padded maps of
    ``vgg19.py``), resize to ``featmap_size`` (bilinear with ``align_corners=True``, or
    nearest), replication padding ``(kernel_size - stride) // 2``, average pooling
    ``kernel_size`` / ``stride``. Each step is linear and acts on the two axes independently, so
    for a map ``X [.., H, W]`` the chain is ``M_H @ X @ M_W.T``. Built by passing the identity
    through the same torch operations.
    """
    if upsample not in UPSAMPLES:
        raise ValueError(f"upsample must be one of {tuple(UPSAMPLES)}, got {upsample!r}")
    signals = torch.eye(map_size, dtype=torch.float64)[:, None, :]  # map_size signals [map, 1, map]
    if border:
        signals = F.pad(signals, (border, border), mode="reflect")
    mode = UPSAMPLES[upsample]
    signals = F.interpolate(
        signals, size=featmap_size, mode=mode, align_corners=True if mode == "linear" else None
    )  # [map, 1, featmap]
    pad = (kernel_size - stride) // 2
    if pad:
        signals = F.pad(signals, (pad, pad), mode="replicate")
    signals = F.avg_pool1d(signals, kernel_size=kernel_size, stride=stride)  # [map, 1, feature_size]
    return signals[:, 0, :].T.contiguous()


def feature_side(featmap_size: int, kernel_size: int, stride: int) -> int:
    """The side of the regional features: ``featmap_size`` replication-padded by
    ``(kernel_size - stride) // 2``, then average-pooled with ``kernel_size`` / ``stride``."""
    pad = (kernel_size - stride) // 2
    return (featmap_size + 2 * pad - kernel_size) // stride + 1


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


def _map_sizes(image_size: int) -> list[int]:
    """The side of ``vgg19().features``'s output at each index for images of ``image_size``
    (3 x 3 convolutions keep it, each 2 x 2 max pooling halves it, rounding down)."""
    sizes, size = [], image_size
    for kind, _ in vgg19_plan():
        size = size // 2 if kind == "pool" else size
        sizes.append(size)
    return sizes


class RegionalFeatures(nn.Module):
    """DFR's multi-scale regional feature generator over a frozen VGG19.

    ``forward(images [B, 3, S, S] in [0, 1]) -> [B, feature_dim, h, h]`` with ``feature_dim``
    the sum of the layers' channels (3456 for the 12 layers) and ``h = feature_size =
    (featmap_size + 2 p - kernel_size) // stride + 1`` (``S / 4`` by default). Each layer's map
    is resized to ``featmap_size``, replication padded, average pooled, and the layers are
    concatenated in network order (``feature.py``). The resize-and-pool matrices for
    ``image_size`` are (non-persistent) buffers; images of another size get theirs built per call.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        layers: list[str],
        image_size: int,
        featmap_size: int | None = None,
        kernel_size: int = 4,
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
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.upsample, self.vgg_padding = upsample, vgg_padding
        self.feature_size = feature_side(self.featmap_size, self.kernel_size, self.stride)
        if self.feature_size < 1:
            raise ValueError(f"featmap_size {self.featmap_size} is smaller than the kernel {self.kernel_size}")
        self.extractor = FeatureExtractor(spec, self.nodes)
        if vgg_padding == "reflect":
            _reflect_convolutions(self.extractor.body)
        plan = vgg19_plan()
        index = {node: int(node.split(".")[1]) for node in self.nodes}
        # DFR's vgg19.py returns the maps that feed a convolution already padded
        self.borders = {n: int(vgg_padding == "reflect" and plan[i + 1][0] == "conv") for n, i in index.items()}
        self.feature_dim = sum(plan[i][1] for i in index.values())
        map_sizes = _map_sizes(int(image_size))
        for node, i in index.items():
            matrix = self._build_matrix(node, map_sizes[i]).float()  # [feature_size, map_size]
            self.register_buffer(self._buffer_name(node), matrix, persistent=False)

    @staticmethod
    def _buffer_name(node: str) -> str:
        return "matrix_" + node.replace(".", "_")

    def _build_matrix(self, node: str, map_size: int) -> torch.Tensor:
        """:func:`resize_pool_matrix` of a layer, float64 ``[feature_size, map_size]``."""
        return resize_pool_matrix(
            map_size, self.featmap_size, self.kernel_size, self.stride, self.upsample, self.borders[node]
        )

    def _matrix(self, node: str, map_size: int, like: torch.Tensor) -> torch.Tensor:
        """A layer's matrix for maps of ``map_size``: the buffer (built for ``image_size``), or
        built on ``like``'s device and dtype for another size."""
        matrix: torch.Tensor = getattr(self, self._buffer_name(node))
        if matrix.shape[1] == map_size:
            return matrix
        return self._build_matrix(node, map_size).to(device=like.device, dtype=like.dtype)

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

    ``forward(x [B, C, h, w]) -> [B, C, h, w]`` with ``C = feature_dim``; encoder
    C -> (C + 2d) // 2 -> 2d -> d, decoder d -> 2d -> (C + 2d) // 2 -> C, each inner convolution
    followed by batch norm (``is_bn``) and ReLU; no activation on the latent code or the output.
    """

    def __init__(self, feature_dim: int, latent_dim: int, batch_norm: bool = True) -> None:
        super().__init__()
        hidden = (feature_dim + 2 * latent_dim) // 2
        self.encoder = self._stack([feature_dim, hidden, 2 * latent_dim, latent_dim], batch_norm)
        self.decoder = self._stack([latent_dim, 2 * latent_dim, hidden, feature_dim], batch_norm)

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


# ----------------------------------------------------------------------------- inference


class DfrModel(nn.Module):
    """Everything DFR's inference uses: the regional features and the trained autoencoder.

    ``forward(images [B, 3, S, S] in [0, 1]) -> (maps [B, S, S], scores [B])``: the energy
    upsampled bilinearly (``align_corners=True``) to the image, and its maximum
    (``anoseg_dfr.py``).
    """

    def __init__(self, features: RegionalFeatures, cae: FeatCAE) -> None:
        super().__init__()
        self.features = features
        self.cae = cae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(images)
        energy = reconstruction_error(x, self.cae(x))  # [B, h, h]
        maps = F.interpolate(energy[:, None], size=images.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
        return maps, maps.amax(dim=(-2, -1))
