"""ULSAD as pure torch modules (no training logic).

- :class:`UlsadModel`: everything inference needs, as submodules and buffers (the networks
  below, the Gaussian blur, the training features' channel statistics and the four quantiles
  of Section 3.5); ``forward(images) -> (map, score, extras)``, so its ``state_dict()`` is the
  whole inference model.
- :class:`FeatureAggregator`: the frozen feature extractor N_theta and feature aggregator FA
  of Section 3.1.
- :class:`FeatureReconstructionNetwork`: the local branch's FRN N_psi (Table 5), with doubled
  output channels split into U' (patch reconstruction) and U'' (global target), Section 3.2.
- :class:`GlobalAutoencoder`: the global branch's autoencoder-like network N_phi (Table 6),
  from the image to the feature space, Section 3.3.

Architecture sources. Tables 5 and 6 state layer types, kernels, strides, channel counts,
paddings and activations; where they state a value we use it. The order inside a block
(convolution, batch norm, ReLU) and the decoder's interpolation sizes are not readable from
the tables (Table 6's sizes are garbled in print: "31, 8, 16, 32, 64, 32"), so they follow
the authors' code (``anomalib/models/ulsad/torch_model.py`` of sukanyapatra1997/ULSAD-2024):
conv -> BN -> ReLU, sizes ``S/64 - 1, S/32, S/16 - 1, S/8 - 1, S/4 - 1, S/8``. Three stated
values differ from that code; ``architecture="code"`` (the default in ``conf/model/ulsad.yaml``)
builds the network that produced the published numbers, ``architecture="paper"`` the tables:

=====================================  ============  =============
where                                  Tables 5 / 6  authors' code
=====================================  ============  =============
FRN Conv-3 (bottleneck) activation     ReLU          none
Global AE encoder Conv-6 padding       1             0
Global AE Conv-7 (output) activation   ReLU          none
=====================================  ============  =============

We default to the code because the paper's results come from it (and with the tables' ReLU on
U^ the attention loss L_pg trains far less on the synthetic set).

Both use Xavier-uniform initialisation with the leaky-ReLU gain for the FRN, and batch norm
without affine parameters in the global autoencoder (authors' code; the paper is silent).
Sizes generalise the 256-pixel design to any image size ``S`` divisible by 32: the last
encoder kernel is ``S / 32`` (8 at 256) and every interpolation size is at least 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BackboneSpec, FeatureExtractor, Normalize
from ..filters import GaussianBlur
from ..precision import autocast_forward
from .losses import attention_map, distance_map
from .settings import ARCHITECTURES, UlsadSettings

MAP_NAMES = ("local", "global")


class FeatureAggregator(nn.Module):
    """Frozen patch features U (Section 3.1): ``[B, 3, S, S] -> [B, c*, S/8, S/8]``.

    Layers j and j+1 of the backbone (default ``layer2``, ``layer3``); the deeper map is
    bilinearly resized to the first's size (FA), the two are concatenated and reduced to
    ``c*`` channels by adaptive average pooling over the channel axis (authors' code:
    ``F.adaptive_avg_pool1d`` over channels; for Wide-ResNet-50-2, 512 + 1024 -> 384 averages
    groups of 4 channels).
    """

    def __init__(self, spec: BackboneSpec, layers: list[str], feature_dim: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.feature_dim = feature_dim
        self.extractor = FeatureExtractor(spec, self.layers)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(images)
        first = features[self.layers[0]]
        size = first.shape[-2:]
        maps = [first] + [
            F.interpolate(features[name], size=size, mode="bilinear", align_corners=False) for name in self.layers[1:]
        ]
        stacked = torch.cat(maps, dim=1)  # [B, C, h, w]
        b, _, h, w = stacked.shape
        pooled = F.adaptive_avg_pool1d(stacked.flatten(2).transpose(1, 2), self.feature_dim)  # [B, hw, c*]
        return pooled.transpose(1, 2).reshape(b, self.feature_dim, h, w)


def _xavier(module: nn.Module) -> nn.Module:
    nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("leaky_relu"))
    return module


class FeatureReconstructionNetwork(nn.Module):
    """FRN N_psi (Table 5): ``U [B, c*, h, w] -> U~ [B, 2 c*, h, w]`` (U' then U'').

    Encoder: 3x3 convs, stride 2, 2 and 1, widths 2c*, 4c*, 4c* (768, 1536, 1536 for
    c* = 384). Decoder: 4x4 transposed convs, stride 2, widths 2c*, c*, then a 5x5 transposed
    conv (stride 1) to 2c*: the doubled output of Section 3.2. Needs ``h`` divisible by 4.

    ``output_relu``: Table 5 and the authors' code end with ReLU, so U~ >= 0 while its
    target U is standardised (Algorithm 1, line 4) and about half negative: the negative
    part can never be reconstructed and sets a floor on the error (E[min(U, 0)^2], about 0.5
    per channel for a symmetric distribution). ``False`` drops that last ReLU (a deviation
    from the paper, recorded; see the ``output_relu`` note in ``conf/model/ulsad.yaml``).
    """

    def __init__(self, feature_dim: int = 384, architecture: str = "paper", output_relu: bool = True) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        c = feature_dim
        self.bottleneck_relu = architecture == "paper"
        self.output_relu = output_relu
        self.conv1 = _xavier(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1))
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.conv2 = _xavier(nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1))
        self.bn2 = nn.BatchNorm2d(4 * c)
        self.conv3 = _xavier(nn.Conv2d(4 * c, 4 * c, 3, stride=1, padding=1))
        self.bn3 = nn.BatchNorm2d(4 * c)
        self.deconv1 = _xavier(nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1))
        self.bn4 = nn.BatchNorm2d(2 * c)
        self.deconv2 = _xavier(nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1))
        self.bn5 = nn.BatchNorm2d(c)
        self.deconv3 = _xavier(nn.ConvTranspose2d(c, 2 * c, 5, stride=1, padding=2))
        self.bn6 = nn.BatchNorm2d(2 * c)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(features)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.bottleneck_relu:
            x = F.relu(x)
        x = F.relu(self.bn4(self.deconv1(x)))
        x = F.relu(self.bn5(self.deconv2(x)))
        x = self.bn6(self.deconv3(x))
        return F.relu(x) if self.output_relu else x


class GlobalAutoencoder(nn.Module):
    """Global branch N_phi (Table 6): ``X [B, 3, S, S] in [0, 1] -> U^ [B, c*, S/8, S/8]``.

    Encoder: five 4x4 stride-2 convs (32, 32, 64, 64, 64 channels), then an ``S/32`` x ``S/32``
    conv (8x8 at S = 256) to 64 channels. Decoder: six bilinear resizes each followed by a
    conv (4x4 padding 2, which adds one pixel; the last 3x3), then a 3x3 conv to c*. Input is
    ImageNet-normalised first (authors' code).
    """

    def __init__(self, image_size: int, feature_dim: int = 384, architecture: str = "paper") -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if image_size % 32:
            raise ValueError(f"ULSAD's global autoencoder needs an image size divisible by 32, got {image_size}")
        s = image_size
        self.output_relu = architecture == "paper"
        self.normalize = Normalize()
        widths = [3, 32, 32, 64, 64, 64]
        self.encoder = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1) for i in range(5))
        self.encoder.append(nn.Conv2d(64, 64, s // 32, stride=1, padding=1 if architecture == "paper" else 0))
        self.encoder_bn = nn.ModuleList(nn.BatchNorm2d(w, eps=1e-4, affine=False) for w in [*widths[1:], 64])
        self.sizes = [max(1, size) for size in (s // 64 - 1, s // 32, s // 16 - 1, s // 8 - 1, s // 4 - 1, s // 8)]
        self.decoder = nn.ModuleList(nn.Conv2d(64, 64, 4, stride=1, padding=2) for _ in range(5))
        self.decoder.append(nn.Conv2d(64, 64, 3, stride=1, padding=1))
        self.decoder_bn = nn.ModuleList(nn.BatchNorm2d(64, eps=1e-4, affine=False) for _ in range(6))
        self.head = nn.Conv2d(64, feature_dim, 3, stride=1, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        for conv, bn in zip(self.encoder, self.encoder_bn, strict=True):
            x = F.relu(bn(conv(x)))
        for size, conv, bn in zip(self.sizes, self.decoder, self.decoder_bn, strict=True):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = F.relu(bn(conv(x)))
        x = self.head(x)
        return F.relu(x) if self.output_relu else x


class UlsadModel(nn.Module):
    """ULSAD's inference model (Section 3.5): images -> anomaly map, image score, branch maps.

    Submodules: ``aggregator`` (frozen backbone + FA), ``frn`` (N_psi), ``global_ae`` (N_phi),
    ``blur``. Buffers: ``feature_mean`` / ``feature_std`` (channel statistics of the training
    features, Algorithm 1 line 4) and ``quantiles`` ``[local_alpha, local_beta, global_alpha,
    global_beta]`` (Section 3.5, set by calibration; float64 as computed).

    The networks are built by the caller (the harness seeds the trainable ones, the backbone
    comes from its weights); ``settings`` gives the loss and map choices (lambda_l, lambda_g,
    magnitude_reduction, loss_pg, loss_lg, branch). ``autocast_dtype``: bf16 autocast of the networks (the backbone,
    N_psi, N_phi: ``precision=bf16``, :mod:`..precision`), None for fp32; read at every call.
    The networks hand fp32 outputs on: FA, standardisation, distances, quantiles and
    normalisation always run in fp32.
    """

    def __init__(
        self,
        aggregator: FeatureAggregator,
        frn: FeatureReconstructionNetwork,
        global_ae: GlobalAutoencoder,
        image_size: int,
        settings: UlsadSettings,
        blur_sigma: float = 4.0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.feature_dim, self.image_size = aggregator.feature_dim, int(image_size)
        self.lambda_l, self.lambda_g = settings.lambda_l, settings.lambda_g
        self.reduction = settings.magnitude_reduction
        self.loss_pg, self.loss_lg, self.branch = settings.loss_pg, settings.loss_lg, settings.branch
        self.autocast_dtype = autocast_dtype
        self.aggregator, self.frn, self.global_ae = aggregator, frn, global_ae
        for network in (aggregator.extractor, frn, global_ae):
            autocast_forward(network, lambda: self.autocast_dtype)
        self.blur = GaussianBlur(blur_sigma)
        self.register_buffer("feature_mean", torch.zeros(1, self.feature_dim, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, self.feature_dim, 1, 1))
        self.register_buffer("quantiles", torch.zeros(2 * len(MAP_NAMES), dtype=torch.float64))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Channel statistics ``[c*]`` of the training features (Algorithm 1, line 4)."""
        self.feature_mean.copy_(mean.view(1, -1, 1, 1))
        self.feature_std.copy_(std.view(1, -1, 1, 1))

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """U standardised by the training features' channel statistics."""
        return (features.to(self.feature_mean.device) - self.feature_mean) / self.feature_std

    def set_quantiles(self, values: dict[str, float]) -> None:
        """``{local_alpha, local_beta, global_alpha, global_beta}`` (Section 3.5)."""
        order = [f"{name}_{q}" for name in MAP_NAMES for q in ("alpha", "beta")]
        self.quantiles.copy_(torch.tensor([values[key] for key in order], dtype=torch.float64))

    def quantile_values(self) -> dict[str, float]:
        order = [f"{name}_{q}" for name in MAP_NAMES for q in ("alpha", "beta")]
        return {key: float(value) for key, value in zip(order, self.quantiles.tolist(), strict=True)}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen patch features U (not standardised), fp32 ``[B, c*, S/8, S/8]``."""
        return self.aggregator(images)

    def raw_maps(self, u: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M_l (Eq. 7) and M_g (Eq. 8) at feature resolution, ``[B, h, w]`` each.

        Args:
            u: standardised features ``[B, c*, h, w]`` on the device.
            images: ``[B, 3, S, S]`` in [0, 1] on the device.

        Without L_lg, U'' is not trained, so the global map compares what L_pg trained
        instead: A^ with A for ``loss_pg=attention``, U^ with U for ``loss_pg=l2``.
        """
        c = self.feature_dim
        u_tilde = self.frn(u)
        local = distance_map(u_tilde[:, :c], u, self.lambda_l, self.reduction)
        if self.branch == "local":
            return local, torch.zeros_like(local)
        u_hat = self.global_ae(images)
        if self.loss_lg:
            global_ = distance_map(u_tilde[:, c:], u_hat, self.lambda_g, self.reduction)  # Eq. 8
        elif self.loss_pg == "attention":
            global_ = distance_map(attention_map(u_hat, u), attention_map(u, u), self.lambda_g, self.reduction)
        else:
            global_ = distance_map(u_hat, u, self.lambda_g, self.reduction)
        return local, global_

    def upsample(self, maps: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` -> ``[B, S, S]`` (bilinear)."""
        size = (self.image_size, self.image_size)
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    def normalise(self, maps: torch.Tensor, name: str) -> torch.Tensor:
        """t(M) = 0.1 (M - q_alpha) / (q_beta - q_alpha) (Section 3.5); ``maps`` unchanged while
        the quantiles are unset (all 0, before calibration), as the authors' code
        (``torch_model.py:254-258, 359-361`` of sukanyapatra1997/ULSAD-2024)."""
        index = 2 * MAP_NAMES.index(name)
        q_alpha, q_beta = self.quantiles[index], self.quantiles[index + 1]
        normalised = 0.1 * (maps - q_alpha) / (q_beta - q_alpha).clamp_min(1e-12)
        return torch.where(self.quantiles.ne(0).any(), normalised, maps)  # no host sync on CUDA

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """M = (t_l(M_l) + t_g(M_g)) / 2, blurred; score = max of M (Section 3.5).

        Returns ``(map [B, S, S], score [B], extras)``; extras are the blurred, normalised
        branch maps (``local``, and ``global`` unless ``branch=local``).
        """
        local, global_ = self.raw_maps(self.standardize(self.features(images)), images)
        maps = {}
        for name, raw in zip(MAP_NAMES, (local, global_), strict=True):
            normalised = self.normalise(self.upsample(raw), name)
            maps[name] = self.blur(normalised[:, None])[:, 0]
        combined = {"both": (maps["local"] + maps["global"]) / 2, "local": maps["local"], "global": maps["global"]}
        final = combined[self.branch]
        extras = {"local": maps["local"]} if self.branch == "local" else maps
        return final, final.amax(dim=(-2, -1)), extras
