"""PatchCore (Roth et al. 2022) through anomalib's ``PatchcoreModel`` (:mod:`.feature_bank`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..environment import limit_heap_fragmentation, seeded
from .anomalib_adapter import build_patchcore, select_coreset, stored_patches
from .base import RunContext
from .feature_bank import FeatureBankModel
from .settings import Count, Fraction, Settings, adopt, as_record


@dataclass(frozen=True)
class PatchcoreSettings(Settings, model="patchcore"):
    """PatchCore's settings (``conf/model/patchcore.yaml``): the PatchCore paper's and anomalib's."""

    layers: tuple[str, ...] = ("layer2", "layer3")
    coreset_sampling_ratio: Fraction = 0.1
    num_neighbors: Count = 9
    batch_size: Count = 32


class Patchcore(FeatureBankModel):
    """PatchCore (Roth et al. 2022) via ``anomalib.models.image.patchcore.torch_model.PatchcoreModel``.

    Hyperparameters of the PatchCore paper and anomalib's defaults: ``layer2`` + ``layer3``
    (3 x 3 local average, ``layer3`` resized to ``layer2``'s grid), greedy coreset of 10 % of
    the training patches, image score re-weighted over 9 nearest neighbours. Maps are
    anomalib's: nearest patch distances upsampled to the input size, Gaussian blur sigma 4.
    The coreset (random start, random projection) is drawn from the run seed.
    """

    name = "patchcore"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    min_image_size = 17  # the map's Gaussian blur (sigma 4, kernel 33) reflect-pads 16 pixels
    alters_process = True  # its coreset selection sets glibc's mmap threshold for the process

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`PatchcoreSettings`'s."""
        adopt(self, PatchcoreSettings(**settings))

    def _build(self, ctx: RunContext) -> nn.Module:
        return build_patchcore(ctx.backbone.name, self.layers, self.num_neighbors)

    def _finish_fit(self) -> dict[str, Any]:
        patches = stored_patches(self.model)
        limit_heap_fragmentation()  # the coreset loop fragments glibc's heap otherwise
        with seeded(self.ctx.seed, self.ctx.device):
            memory_bank = select_coreset(self.model, self.coreset_sampling_ratio, self.ctx.progress)
        return {"train_patches": patches, "memory_bank": memory_bank}

    def hyperparameters(self) -> dict[str, Any]:
        return {**as_record(self, PatchcoreSettings), "blur_sigma": 4}  # anomalib's AnomalyMapGenerator (fixed)
