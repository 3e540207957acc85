"""CFLOW's every touch of anomalib: its torch model, its flow decoders, its likelihood and its map.

Written against anomalib 2.7.0, in the style of :mod:`ulsad_bench.models.anomalib_adapter`: the
model file (:mod:`ulsad_bench.models.cflow.model`) reaches anomalib only through the functions of
this module. Only the torch model is used: no Engine, no Lightning module (its ``training_step`` is
re-created by the harness), no pre- or post-processing.

Internals relied on (anomalib 2.7.0, ``src/anomalib/models/image/cflow/``):

- ``torch_model.py:78-121``: ``CflowModel(backbone, layers, pre_trained, fiber_batch_size, decoder,
  condition_vector, coupling_blocks, clamp_alpha, permute_soft)`` and its attributes ``encoder``
  (a ``TimmFeatureExtractor``, frozen, whose ``feature_extractor`` is the timm network and whose
  forward runs it in eval mode under ``no_grad``), ``decoders`` (an ``nn.ModuleList``, one FrEIA
  ``SequenceINN`` per layer, ``utils.py:117-159``), ``pool_layers``, ``pool_dims``,
  ``condition_vector``, ``fiber_batch_size`` and ``anomaly_map_generator``;
- ``torch_model.py:123-206``: the eval forward, returning an ``InferenceBatch`` (``anomaly_map``
  ``[B, H, W]``, ``pred_score`` ``[B]``), with the likelihoods normalised over the batch;
- a decoder's call ``decoder(fibers [N, C], [conditions [N, P]]) -> (z [N, C], log_jac_det [N])``
  (FrEIA's ``SequenceINN.forward(x, c)``);
- ``utils.py:27-46`` ``get_logp(C, z, log_jac_det)`` (the log-likelihood of a fibre under the flow,
  ``C * ln(1 / sqrt(2 pi)) - |z|^2 / 2 + log_jac_det``) and ``utils.py:49-94``
  ``positional_encoding_2d(P, h, w)`` (``[P, h, w]``, ``P`` a multiple of 4);
- ``anomaly_map.py``: ``AnomalyMapGenerator.compute_anomaly_map(distribution, height, width,
  image_size)`` (per layer ``exp(l - max l)`` over the batch, bilinear with ``align_corners=True``
  to the image, summed, ``max - map``);
- the logger ``anomalib.models.image.cflow.utils`` (``cflow_head``'s INFO line per layer, kept off the
  console while the model is built);
- ``lightning_model.py:120-136`` (``configure_optimizers``): one Adam over the parameters of every
  decoder, in layer order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from . import import_anomalib

CFLOW_MODULE = "anomalib.models.image.cflow.torch_model"
CFLOW_UTILS_MODULE = "anomalib.models.image.cflow.utils"


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Inside the block, the logger ``name`` passes warnings and errors only (``cflow_head`` logs
    "CNF coder: <n>" at INFO for every layer, which the job's console would show)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_cflow(
    backbone: str,
    layers: Sequence[str],
    fiber_batch_size: int,
    decoder: str,
    condition_vector: int,
    coupling_blocks: int,
    clamp_alpha: float,
    permute_soft: bool,
) -> nn.Module:
    """anomalib's ``CflowModel`` without pretrained weights (the harness copies its own into the timm
    network: :func:`cflow_timm_network`). Draws the flows' initial weights from torch's generator."""
    torch_model = import_anomalib(CFLOW_MODULE)
    with quiet_logger(CFLOW_UTILS_MODULE):
        return torch_model.CflowModel(
            backbone=backbone,
            layers=list(layers),
            pre_trained=False,
            fiber_batch_size=fiber_batch_size,
            decoder=decoder,
            condition_vector=condition_vector,
            coupling_blocks=coupling_blocks,
            clamp_alpha=clamp_alpha,
            permute_soft=permute_soft,
        )


def cflow_encoder(model: nn.Module) -> nn.Module:
    """The frozen feature extractor: ``images [B, 3, H, W] (ImageNet-normalised) -> {layer: [B, C, h, w]}``."""
    return model.encoder


def cflow_timm_network(model: nn.Module) -> nn.Module:
    """The timm backbone inside CFLOW's encoder (to copy the harness's weights into)."""
    return model.encoder.feature_extractor


def cflow_decoders(model: nn.Module) -> list[nn.Module]:
    """The conditional flows, one per layer, in layer order."""
    return list(model.decoders)


def cflow_layers(model: nn.Module) -> list[str]:
    """The backbone layers CFLOW models, in order."""
    return list(model.pool_layers)


def decoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What anomalib 2.7's ``configure_optimizers`` hands its one Adam: every decoder's parameters, in order."""
    return [p for index in range(len(model.pool_layers)) for p in model.decoders[index].parameters()]


def positional_encoding(condition_vector: int, height: int, width: int) -> torch.Tensor:
    """CFLOW's 2-D sinusoidal positional encoding ``[condition_vector, height, width]`` (CPU)."""
    return import_anomalib(CFLOW_UTILS_MODULE).positional_encoding_2d(condition_vector, height, width)


def decode(decoder: nn.Module, fibers: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One flow on fibres ``[N, C]`` conditioned on ``[N, P]``: ``(z [N, C], log_jac_det [N])``."""
    return decoder(fibers, [conditions])


def log_likelihood(channels: int, z: torch.Tensor, log_jac_det: torch.Tensor) -> torch.Tensor:
    """anomalib's ``get_logp``: each fibre's log-likelihood ``[N]`` under the flow (not per dimension)."""
    return import_anomalib(CFLOW_UTILS_MODULE).get_logp(channels, z, log_jac_det)


def batch_normalised_map(
    model: nn.Module,
    distribution: list[torch.Tensor],
    height: list[int],
    width: list[int],
    image_size: tuple[int, int] | torch.Size,
) -> torch.Tensor:
    """anomalib's ``AnomalyMapGenerator``: maps ``[B, H, W]`` from the per-dimension log-likelihoods
    ``distribution`` (one ``[B * h * w]`` per layer), each layer normalised by its maximum over the batch."""
    return model.anomaly_map_generator(distribution=distribution, height=height, width=width, image_size=image_size)
