"""ULSAD's networks as pure torch modules (no training logic).

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

We default to the code because the paper's results come from it, and because with the
tables' ReLU on U^ the attention loss L_pg barely trains (measured on the synthetic
``pinbox`` set, c* = 64, 1000 steps: L_pg 0.41 with ``paper``, 0.03 with ``code``).

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

ARCHITECTURES = ("paper", "code")


class FeatureAggregator(nn.Module):
    """Frozen patch features U (Section 3.1): ``[B, 3, S, S] -> [B, c*, S/8, S/8]``.

    Layers j and j+1 of the backbone (default ``layer2``, ``layer3``); the deeper map is
    bilinearly resized to the first's size (FA), the two are concatenated and reduced to
    ``c*`` channels by adaptive average pooling over the channel axis (authors' code:
    ``F.adaptive_avg_pool1d`` over channels; for Wide-ResNet-50-2, 512 + 1024 -> 384 averages
    groups of 4 channels).
    """

    def __init__(self, spec: BackboneSpec, layers: list[str], out_channels: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.out_channels = out_channels
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
        pooled = F.adaptive_avg_pool1d(stacked.flatten(2).transpose(1, 2), self.out_channels)  # [B, hw, c*]
        return pooled.transpose(1, 2).reshape(b, self.out_channels, h, w)


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

    def __init__(self, channels: int = 384, architecture: str = "paper", output_relu: bool = True) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        c = channels
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

    def __init__(self, image_size: int, out_channels: int = 384, architecture: str = "paper") -> None:
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
        self.head = nn.Conv2d(64, out_channels, 3, stride=1, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        for conv, bn in zip(self.encoder, self.encoder_bn, strict=True):
            x = F.relu(bn(conv(x)))
        for size, conv, bn in zip(self.sizes, self.decoder, self.decoder_bn, strict=True):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = F.relu(bn(conv(x)))
        x = self.head(x)
        return F.relu(x) if self.output_relu else x
