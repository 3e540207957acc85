"""FastFlow as a model of the harness: anomalib 2.7's ``FastflowModel``, trained by the harness.

The networks, the loss and the anomaly map are anomalib's (reached only through
:mod:`ulsad_bench.models.anomalib_adapter.fastflow`); what anomalib's Lightning module and its
trainer do around them is re-created here, step for step (``lightning_model.py``'s
``configure_optimizers`` and ``training_step``; ``tests/test_reference_equality.py`` checks the
losses, maps and scores against anomalib's Engine):

- the images ImageNet-normalised, as anomalib's default pre-processing;
- Adam (lr 1e-3, weight decay 1e-5) on the layer norms and the flows; the frozen ResNet stays in
  eval mode (the model's forward sets it so on every call);
- per step ``FastflowLoss`` (negative log-likelihood of the flows' outputs), one backward pass,
  one optimiser step; no gradient clipping (its ``trainer_arguments``: ``gradient_clip_val 0``);
- batches of 32 from the training images shuffled each epoch from the run seed, the last partial
  batch kept: anomalib's train loader has no ``drop_last`` (2.7 ``data/datamodules/base/image.py``
  ``train_dataloader``; the 0.x base datamodule neither).

The values are anomalib 0.7's ``src/anomalib/models/fastflow/config.yaml``, the configuration the
paper ran (``conf/model/fastflow.yaml`` names each): 256 px, no centre crop, ResNet-18, 8 flow
steps, hidden ratio 1.0, 3 x 3 convolutions only (anomalib 2.7's default is ``conv3x3_only=False``;
0.7's config sets True for ResNet-18), lr 1e-3, weight decay 1e-5, batch 32, at most 500 epochs.
0.7 stops early on the test set's pixel AUROC (patience 3; its validation split is the test set):
the harness's clean protocol trains the 500 epochs and tests the last; ``protocol=authors``
(``protocol.select_on_test``) scores the test set after each epoch instead (:meth:`end_epoch`).

The anomaly map is anomalib's: per level ``-exp(-mean_c(z ** 2) / 2)``, bilinear to the image,
averaged over the three levels; the score is its maximum. Both are returned raw.

Precision (``precision=bf16``, :mod:`..precision`): only the frozen ResNet runs under autocast and
hands fp32 features on; the layer norms, the flows, the loss and the maps run in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...data import ImageSet
from ...environment import adam_implementation, seeded
from .. import anomalib_adapter
from ..anomalib_adapter import fastflow as adapter
from ..backbone import Normalize, load_into
from ..base import AnomalyModel, Prediction, RunContext
from ..precision import autocast_forward
from ..settings import Count, LearningRate, Positive, Settings, WeightDecay, adopt, as_record
from ..training import train_batches

#: the side of the input must divide by the ResNet's largest reduction (16 at layer3): anomalib's
#: layer norms are sized ``int(side / reduction)`` while the ResNet's maps are ``ceil(side / reduction)``
FASTFLOW_SIDE_MULTIPLE = 16


@dataclass(frozen=True)
class FastflowSettings(Settings, model="fastflow"):
    """FastFlow's settings (``conf/model/fastflow.yaml``): anomalib 0.7's ``fastflow/config.yaml``."""

    backbone: str = "resnet18"
    flow_steps: Count = 8
    hidden_ratio: Positive = 1.0
    conv3x3_only: bool = True
    epochs: Count = 500
    batch_size: Count = 32
    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.backbone not in adapter.FASTFLOW_BACKBONES:
            allowed = ", ".join(adapter.FASTFLOW_BACKBONES)
            raise ValueError(f"model.backbone={self.backbone!r}: FastFlow's CNN backbones are {allowed} (fastflow)")


class Fastflow(AnomalyModel):
    """FastFlow (Yu et al. 2021) via ``anomalib.models.image.fastflow.torch_model.FastflowModel``
    (module docstring: what is anomalib's, what is re-created, and the sources)."""

    name = "fastflow"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    min_image_size = FASTFLOW_SIDE_MULTIPLE
    image_size_multiple = FASTFLOW_SIDE_MULTIPLE

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`FastflowSettings`'s (``conf/model/fastflow.yaml``), checked there."""
        adopt(self, FastflowSettings(**settings))

    def own_backbone(self) -> str | None:
        """FastFlow's paper setting fixes its network (ResNet-18), whatever ``backbone=`` says."""
        return self.backbone

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        with anomalib_adapter.no_downloads(), seeded(ctx.seed):  # built on the CPU: the flows' draws
            self.model = adapter.build_fastflow(
                ctx.backbone.name, ctx.image_size, self.flow_steps, self.conv3x3_only, self.hidden_ratio
            )
        load_into(adapter.timm_network(self.model), ctx.backbone)
        autocast_forward(adapter.timm_network(self.model), self.autocast_dtype)
        self.model.to(ctx.device)
        self.normalize = Normalize().to(ctx.device)
        self.loss = adapter.fastflow_loss()

    def train_step_loss(self, images: torch.Tensor) -> torch.Tensor:
        """anomalib's ``training_step``: ``FastflowLoss`` of the training forward of ``images``
        (``[B, 3, S, S]`` in [0, 1] on the device)."""
        return self.loss(*adapter.hidden_variables(self.model, self.normalize(images)))

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        """``epochs`` epochs of Adam on the flows (module docstring), through the one training loop."""
        optimizer = torch.optim.Adam(
            adapter.trainable_parameters(self.model),
            lr=self.lr,
            weight_decay=self.weight_decay,
            **adam_implementation(self.ctx.device),
        )
        with anomalib_adapter.no_downloads():
            log, steps = train_batches(
                self,
                train,
                self.epochs,
                self.batch_size,
                optimizer,
                self.train_step_loss,
                [self.model],
                hint=f"lr {self.lr}, batch size {self.batch_size}",
            )
        losses = [epoch["loss"] for epoch in log.losses]
        return {
            "train_images": len(train),
            "epochs": self.epochs,
            "steps": steps,
            "levels": adapter.flow_levels(self.model),
            "loss_per_epoch": [round(v, 6) for v in losses],
            "final_loss": round(losses[-1], 6) if losses else None,
            "timing": {"epoch_s": log.epoch_s},
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """anomalib's eval forward: the map ``[B, S, S]`` and its maximum ``[B]``, raw."""
        self.model.eval()
        maps, scores = anomalib_adapter.maps_and_scores(self.model(self.normalize(images)))
        return Prediction(maps=maps.float(), scores=scores.float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model, self.normalize]

    def hyperparameters(self) -> dict[str, Any]:
        """Every setting (the backbone as resolved for the job) and the choices fixed by anomalib's code."""
        ctx = getattr(self, "ctx", None)
        resolved = {"backbone": ctx.backbone.name} if ctx is not None else {}
        return {
            **as_record(self, FastflowSettings, **resolved),
            "input_size": ctx.image_size if ctx is not None else None,
            "clamp": adapter.FASTFLOW_CLAMP,
            "optimizer": "Adam",
            "drop_last": False,
            "loss": "FastflowLoss: sum over levels of mean(0.5 * sum(z^2) - log|det J|)",
            "map": "mean over levels of -exp(-mean_c(z^2) / 2), bilinear to the image",
            "score": "max",
        }
