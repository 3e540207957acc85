"""DRAEM's every touch of anomalib: its torch model, its loss and its anomaly generator.

Written against anomalib 2.7.0, in the style of :mod:`ulsad_bench.models.anomalib_adapter`: the
model file (:mod:`ulsad_bench.models.draem.model`) reaches anomalib only through the functions of
this module. Only the torch model, the loss module and the augmenter are used: no Engine, no
Lightning module (its ``training_step`` is re-created by the harness; its constructor would
download DTD), no pre- or post-processing.

Internals relied on (anomalib 2.7.0):

- ``models/image/draem/torch_model.py:37-40``: ``DraemModel(sspcab)``'s constructor sets nothing
  but ``reconstructive_subnetwork`` (``ReconstructiveSubNetwork(in_channels, out_channels,
  base_width=128, sspcab)``, L94) and ``discriminative_subnetwork``
  (``DiscriminativeSubNetwork(in_channels=6, out_channels=2, base_width=64)``, L139), built in that
  order; its forward (L42-73) returns ``(reconstruction, prediction)`` in training mode and an
  ``InferenceBatch`` (``anomaly_map`` = softmax channel 1 ``[B, H, W]``, ``pred_score`` = its
  maximum) in eval mode;
- the reconstructive encoder's ``mp4`` and ``block5`` (SSPCAB's input and output, hooked as
  ``lightning_model.py:117-148`` does);
- ``models/image/draem/loss.py:26-74``: ``DraemLoss`` with the modules ``l2_loss`` (MSE),
  ``focal_loss`` (kornia ``FocalLoss(alpha=1)``) and ``ssim_loss`` (kornia ``SSIMLoss(11)``),
  summed as ``l2 + 2 * ssim + focal``;
- ``data/utils/generators/perlin.py:154-422``: ``PerlinAnomalyGenerator(anomaly_source_path,
  probability, blend_factor)`` and its attribute ``anomaly_source_paths`` (the texture files, read
  with ``torchvision.io.read_image`` when drawn; empty: Perlin-noise textures, L321-330); its
  constructor draws RandomSolarize's threshold from torch's generator (L243); its forward draws
  from torch's generator and from the images' device's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from . import import_anomalib

DRAEM_MODULE = "anomalib.models.image.draem.torch_model"
DRAEM_LOSS_MODULE = "anomalib.models.image.draem.loss"
PERLIN_MODULE = "anomalib.data.utils.generators.perlin"

#: anomalib 2.7's widths of DRAEM's sub-networks (``torch_model.py`` L94 and L139; the DRAEM authors')
RECONSTRUCTIVE_WIDTH = 128
DISCRIMINATIVE_WIDTH = 64


def build_draem(sspcab: bool, reconstructive_width: int, discriminative_width: int) -> nn.Module:
    """anomalib's ``DraemModel(sspcab)`` with sub-networks of the given base widths, built as its
    constructor builds them (L37-40: the reconstructive, then the discriminative sub-network; the
    same draws from torch's generator): with anomalib's widths, ``DraemModel(sspcab)`` exactly."""
    torch_model = import_anomalib(DRAEM_MODULE)
    model = torch_model.DraemModel.__new__(torch_model.DraemModel)
    nn.Module.__init__(model)
    model.reconstructive_subnetwork = torch_model.ReconstructiveSubNetwork(
        base_width=reconstructive_width, sspcab=sspcab
    )
    model.discriminative_subnetwork = torch_model.DiscriminativeSubNetwork(
        in_channels=6, out_channels=2, base_width=discriminative_width
    )
    return model


def build_draem_loss() -> nn.Module:
    """anomalib's ``DraemLoss`` (L2 + SSIM + focal)."""
    return import_anomalib(DRAEM_LOSS_MODULE).DraemLoss()


def draem_loss_terms(
    loss: nn.Module,
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    mask: torch.Tensor,
    prediction: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``DraemLoss.forward``'s three terms, named (their sum is its value): ``l2`` (MSE of the
    reconstruction), ``ssim`` (2 x kornia's SSIM loss, window 11) and ``focal`` (focal loss of the
    segmentation ``[B, 2, H, W]`` against the mask ``[B, 1, H, W]``)."""
    return {
        "l2": loss.l2_loss(reconstruction, images),
        "ssim": loss.ssim_loss(reconstruction, images) * 2,
        "focal": loss.focal_loss(prediction, mask.squeeze(1).long()),
    }


def sspcab_activations(model: nn.Module) -> dict[str, torch.Tensor]:
    """Hook SSPCAB's input (the reconstructive encoder's ``mp4``) and output (``block5``): the returned
    dict holds ``input`` and ``output`` of the latest forward (anomalib 2.7's ``setup_sspcab``)."""
    activations: dict[str, torch.Tensor] = {}
    encoder = model.reconstructive_subnetwork.encoder

    def keep(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            activations[name] = output

        return hook

    encoder.mp4.register_forward_hook(keep("input"))
    encoder.block5.register_forward_hook(keep("output"))
    return activations


def build_anomaly_generator(
    textures: Sequence[Path], blend_factor: tuple[float, float], probability: float = 0.5
) -> nn.Module:
    """anomalib's ``PerlinAnomalyGenerator``: Perlin-noise masks filled with a texture drawn from
    ``textures`` (the harness's listing of DTD), or with the Perlin noise itself when ``textures`` is
    empty. Draws RandomSolarize's threshold from torch's generator."""
    perlin = import_anomalib(PERLIN_MODULE)
    generator = perlin.PerlinAnomalyGenerator(
        anomaly_source_path=None, probability=probability, blend_factor=tuple(blend_factor)
    )
    generator.anomaly_source_paths = list(textures)
    return generator


def synthesise_anomalies(generator: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(augmented [B, 3, H, W], mask [B, 1, H, W])`` of images ``[B, 3, H, W]`` in [0, 1]."""
    return generator(images)


def reconstruct_and_segment(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training-mode forward: ``(reconstruction [B, 3, H, W], segmentation logits [B, 2, H, W])``."""
    return model(images)
