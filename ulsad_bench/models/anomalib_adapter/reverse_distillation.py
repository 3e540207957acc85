"""Every touch of anomalib's Reverse Distillation: its torch model, its loss and the internals the
harness relies on.

Written against anomalib 2.7.0; the model file (:mod:`ulsad_bench.models.reverse_distillation`)
reaches anomalib only through the functions here. Only the torch model and the loss are used: no
Engine, no Lightning module (``lightning_model.py`` is read for what its training does, and
``tests/test_reference_equality.py`` drives it to check that the harness's training equals it).

Internals relied on (anomalib 2.7.0, ``anomalib/models/image/reverse_distillation/``):

- ``torch_model.ReverseDistillationModel(backbone, input_size, layers, anomaly_map_mode,
  pre_trained)`` (torch_model.py:51-112): ``encoder`` (a ``TimmFeatureExtractor`` whose
  ``feature_extractor`` is the timm network, its parameters frozen), ``bottleneck`` (``OCBE``,
  components/bottleneck.py, taking exactly three feature maps: layer1-3) and ``decoder``
  (``get_decoder(backbone)`` of anomalib's ``models/components/backbone/resnet_decoder.py``), both
  built with Kaiming initialisation drawn from torch's global generator;
- its forward (torch_model.py:114-168) puts ``encoder`` in eval mode on every call; in training
  mode it returns ``(encoder_features, decoder_features)`` (lists of ``[B, C, h, w]``), in eval
  mode an ``InferenceBatch`` (``anomaly_map [B, 1, H, W]``: ``1 - cos`` per level, bilinear with
  ``align_corners=True`` to the input size, multiplied or added, Gaussian blur sigma 4:
  anomaly_map.py:82; ``pred_score [B, 1]``: the map's maximum);
- ``anomaly_map.AnomalyMapGenerationMode`` (``add`` / ``multiply``, anomaly_map.py:44);
- ``loss.ReverseDistillationLoss`` (loss.py:35-90): ``sum over levels of mean over the batch of
  1 - cos`` of the flattened feature maps;
- ``lightning_model.ReverseDistillation``: ``configure_optimizers`` (lightning_model.py:122-132;
  Adam over ``list(decoder.parameters()) + list(bottleneck.parameters())``, lr 0.005, betas
  (0.5, 0.99), no weight decay) and ``training_step`` (lightning_model.py:134-153;
  ``loss(*model(batch.image))``, the whole module in training mode: the bottleneck's and
  decoder's batch norms use and update batch statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from . import import_anomalib

RD_MODULE = "anomalib.models.image.reverse_distillation.torch_model"
RD_LOSS_MODULE = "anomalib.models.image.reverse_distillation.loss"
RD_MAP_MODULE = "anomalib.models.image.reverse_distillation.anomaly_map"
RD_LIGHTNING_MODULE = "anomalib.models.image.reverse_distillation.lightning_model"
#: the layers anomalib's one-class bottleneck embedding takes (it fuses exactly these three)
RD_LAYERS = ("layer1", "layer2", "layer3")
#: backbones with an anomalib decoder (resnet_decoder.py ``get_decoder``) that the harness can load weights for
RD_BACKBONES = ("resnet18", "resnet50", "resnet152", "wide_resnet50_2", "wide_resnet101_2")
#: the modes of the anomaly map (``AnomalyMapGenerationMode``'s values)
RD_MAP_MODES = ("add", "multiply")


def build_reverse_distillation(backbone: str, input_size: int, layers: list[str], anomaly_map_mode: str) -> nn.Module:
    """anomalib's ``ReverseDistillationModel`` for square inputs of ``input_size`` px, without
    pretrained weights (bottleneck and decoder initialised from torch's global generator)."""
    torch_model = import_anomalib(RD_MODULE)
    mode = import_anomalib(RD_MAP_MODULE).AnomalyMapGenerationMode(anomaly_map_mode)
    return torch_model.ReverseDistillationModel(
        backbone=backbone,
        input_size=(input_size, input_size),
        layers=list(layers),
        anomaly_map_mode=mode,
        pre_trained=False,
    )


def reverse_distillation_loss() -> nn.Module:
    """anomalib's ``ReverseDistillationLoss``: ``loss(encoder_features, decoder_features)`` -> a scalar."""
    return import_anomalib(RD_LOSS_MODULE).ReverseDistillationLoss()


def encoder(model: nn.Module) -> nn.Module:
    """The frozen encoder (images -> {layer: features}), run under autocast."""
    return model.encoder


def timm_network(model: nn.Module) -> nn.Module:
    """The timm network inside the encoder (to copy the harness's backbone weights into)."""
    return model.encoder.feature_extractor


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What RD trains, in the order of anomalib's ``configure_optimizers``: the decoder's
    parameters, then the bottleneck's."""
    return [*model.decoder.parameters(), *model.bottleneck.parameters()]


def trained_modules(model: nn.Module) -> list[nn.Module]:
    """The trained networks: the bottleneck and the decoder."""
    return [model.bottleneck, model.decoder]


def encoder_decoder_features(model: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The training-mode forward of ImageNet-normalised ``images [B, 3, H, W]``: ``(encoder
    features, decoder features)``, each a list of ``[B, C, h, w]`` for layer1-3. The model must be
    in training mode."""
    if not model.training:
        raise RuntimeError("Reverse Distillation's training forward needs the model in training mode")
    encoder_features, decoder_features = model(images)
    return list(encoder_features), list(decoder_features)
