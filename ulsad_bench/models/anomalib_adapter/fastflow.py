"""Every touch of anomalib's FastFlow: its torch model, its loss and the internals the harness relies on.

Written against anomalib 2.7.0; the model file (:mod:`ulsad_bench.models.fastflow`) reaches
anomalib only through the functions here. Only the torch model and the loss are used: no
Engine, no Lightning module (``lightning_model.py`` is read for what its training does, and
``tests/test_reference_equality.py`` drives it to check that the harness's training equals it).

Internals relied on (anomalib 2.7.0, ``anomalib/models/image/fastflow/``):

- ``torch_model.FastflowModel(input_size, backbone, pre_trained, flow_steps, conv3x3_only,
  hidden_ratio)`` (torch_model.py:88-166): ``feature_extractor`` (the timm ResNet built with
  ``features_only=True, out_indices=[1, 2, 3]``, its parameters frozen: torch_model.py:127-154),
  ``norms`` (trainable ``LayerNorm`` over ``[C, H/s, W/s]`` per level: torch_model.py:138-145, so
  the input size is fixed at construction) and ``fast_flow_blocks`` (FrEIA ``SequenceINN`` of
  ``AllInOneBlock``, ``affine_clamping=2.0``, whose construction draws a random channel
  permutation from torch's global generator: torch_model.py:53-85);
- its forward (torch_model.py:168-202) puts ``feature_extractor`` in eval mode on every call;
  in training mode it returns ``(hidden_variables, log_jacobians)``, in eval mode an
  ``InferenceBatch`` (``anomaly_map [B, 1, H, W]``, ``pred_score [B, 1]``, the map's maximum);
- ``loss.FastflowLoss`` (loss.py:28-65): ``sum over levels of mean over the batch of
  0.5 * sum(z ** 2) - log|det J|``;
- ``lightning_model.Fastflow``: ``configure_optimizers`` (lightning_model.py:177-187; Adam over
  ``model.parameters()``, lr 1e-3, weight decay 1e-5; the frozen backbone gets no gradient, so
  Adam leaves it alone) and ``training_step`` (lightning_model.py:138-154;
  ``loss(*model(batch.image))``, the whole module in training mode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import import_anomalib

FASTFLOW_MODULE = "anomalib.models.image.fastflow.torch_model"
FASTFLOW_LOSS_MODULE = "anomalib.models.image.fastflow.loss"
FASTFLOW_LIGHTNING_MODULE = "anomalib.models.image.fastflow.lightning_model"
#: the CNN backbones anomalib 2.7's FastflowModel takes (torch_model.py:126; the transformers need other weights)
FASTFLOW_BACKBONES = ("resnet18", "wide_resnet50_2")
#: the affine clamping of every coupling block (``create_fast_flow_block``'s default, torch_model.py:58)
FASTFLOW_CLAMP = 2.0


def build_fastflow(
    backbone: str, input_size: int, flow_steps: int, conv3x3_only: bool, hidden_ratio: float
) -> nn.Module:
    """anomalib's ``FastflowModel`` for square inputs of ``input_size`` px, without pretrained
    weights (the flows' permutations and initial weights drawn from torch's global generator)."""
    torch_model = import_anomalib(FASTFLOW_MODULE)
    return torch_model.FastflowModel(
        input_size=(input_size, input_size),
        backbone=backbone,
        pre_trained=False,
        flow_steps=flow_steps,
        conv3x3_only=conv3x3_only,
        hidden_ratio=hidden_ratio,
    )


def fastflow_loss() -> nn.Module:
    """anomalib's ``FastflowLoss``: ``loss(hidden_variables, log_jacobians)`` -> a scalar."""
    return import_anomalib(FASTFLOW_LOSS_MODULE).FastflowLoss()


def timm_network(model: nn.Module) -> nn.Module:
    """The timm ResNet inside a FastFlow model (to copy the harness's backbone weights into, and
    to run under autocast): images -> the features of layer1-3."""
    return model.feature_extractor


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What FastFlow trains: the layer norms and the flows. anomalib's ``configure_optimizers``
    hands Adam every parameter; the frozen backbone's get no gradient, so Adam skips them and
    the two are the same optimisation."""
    return [p for p in model.parameters() if p.requires_grad]


def hidden_variables(model: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The training-mode forward of ImageNet-normalised ``images [B, 3, H, W]``: ``(z per level
    [B, C, h, w], log|det J| per level [B])``. The model must be in training mode."""
    if not model.training:
        raise RuntimeError("FastFlow's training forward needs the model in training mode")
    outputs, log_jacobians = model(images)
    return list(outputs), list(log_jacobians)


def flow_levels(model: nn.Module) -> list[dict[str, Any]]:
    """Each level's normalised shape ``[C, h, w]`` and number of coupling blocks (for the record)."""
    return [
        {"shape": list(norm.normalized_shape), "blocks": len(block)}
        for norm, block in zip(model.norms, model.fast_flow_blocks, strict=True)
    ]
