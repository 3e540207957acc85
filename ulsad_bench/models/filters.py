"""Image filters shared by models: a separable Gaussian blur."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_size(sigma: float) -> int:
    """``2 * int(4 sigma + 0.5) + 1``: 33 for sigma 4, as anomalib and the ULSAD code use."""
    return 2 * int(4.0 * sigma + 0.5) + 1


class GaussianBlur(nn.Module):
    """Separable Gaussian blur with reflect padding: ``[B, 1, H, W] -> [B, 1, H, W]``.

    Equal to anomalib's ``GaussianBlur2d`` (normalised kernel, 'reflect' border, 'same'
    size), computed as two 1-D convolutions (2k instead of k^2 multiplications per pixel).
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        size = gaussian_kernel_size(sigma) if sigma > 0 else 1
        x = torch.arange(size, dtype=torch.float64) - size // 2
        kernel = torch.exp(-(x**2) / (2 * sigma**2)) if sigma > 0 else torch.ones(1, dtype=torch.float64)
        kernel = (kernel / kernel.sum()).float()
        self.pad = size // 2
        self.register_buffer("kernel_h", kernel.view(1, 1, 1, size), persistent=False)
        self.register_buffer("kernel_v", kernel.view(1, 1, size, 1), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        p = self.pad
        out = F.conv2d(F.pad(maps, (p, p, 0, 0), mode="reflect"), self.kernel_h.to(maps.dtype))
        return F.conv2d(F.pad(out, (0, 0, p, p), mode="reflect"), self.kernel_v.to(maps.dtype))
