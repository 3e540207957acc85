"""PaDiM (Defard et al. 2021) through anomalib's ``PadimModel`` (:mod:`.feature_bank`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .anomalib_adapter import build_padim, fit_gaussian
from .base import RunContext
from .feature_bank import FeatureBankModel
from .settings import Count, Settings, adopt, as_record

# PaDiM paper (Defard et al. 2021), also anomalib's table: retained feature dimensions.
PADIM_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}


@dataclass(frozen=True)
class PadimSettings(Settings, model="padim"):
    """PaDiM's settings (``conf/model/padim.yaml``): layers 1-3 and the retained feature count of
    the PaDiM paper (None: 100 for ResNet-18, 550 for Wide-ResNet-50-2 and any other backbone)."""

    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    n_features: Count | None = None
    batch_size: Count = 32


class Padim(FeatureBankModel):
    """PaDiM (Defard et al. 2021) via ``anomalib.models.image.padim.torch_model.PadimModel``.

    Hyperparameters: layers 1-3 and the retained feature count of the PaDiM paper (100 for
    ResNet-18, 550 for Wide-ResNet-50-2, the anomalib defaults); for other backbones
    ``n_features`` must be set or 550 is used (recorded).
    """

    name = "padim"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    min_image_size = 17  # the map's Gaussian blur (sigma 4, kernel 33) reflect-pads 16 pixels

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`PadimSettings`'s."""
        adopt(self, PadimSettings(**settings))

    def _build(self, ctx: RunContext) -> nn.Module:
        if self.n_features is None:
            self.n_features = PADIM_N_FEATURES.get(ctx.backbone.name, 550)
        return build_padim(ctx.backbone.name, self.layers, self.n_features)

    def _finish_fit(self) -> dict[str, Any]:
        fit_gaussian(self.model)
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        return as_record(self, PadimSettings)  # n_features as resolved for the backbone
