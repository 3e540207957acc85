"""Reverse Distillation as a model of the harness: anomalib 2.7's ``ReverseDistillationModel``,
trained by the harness.

The networks, the loss and the anomaly map are anomalib's (reached only through
:mod:`ulsad_bench.models.anomalib_adapter.reverse_distillation`); what anomalib's Lightning module
and its trainer do around them is re-created here, step for step (``lightning_model.py``'s
``configure_optimizers`` and ``training_step``; ``tests/test_reference_equality.py`` checks the
losses, maps and scores against anomalib's Engine):

- the images ImageNet-normalised, as anomalib's default pre-processing;
- Adam (lr 0.005, betas (0.5, 0.99), no weight decay) on the decoder's and the bottleneck's
  parameters; the frozen encoder stays in eval mode (the model's forward sets it so on every
  call), the bottleneck and the decoder train in training mode (their batch norms use batch
  statistics and update their running ones, as under Lightning);
- per step ``ReverseDistillationLoss`` (``1 - cos`` of the flattened encoder and decoder
  features, summed over layer1-3), one backward pass, one optimiser step; no gradient clipping
  (its ``trainer_arguments``: ``gradient_clip_val 0``);
- batches of 32 from the training images shuffled each epoch from the run seed, the last partial
  batch kept: anomalib's train loader has no ``drop_last`` (2.7 ``data/datamodules/base/image.py``
  ``train_dataloader``; the 0.x base datamodule neither).

The values are anomalib 0.7's ``src/anomalib/models/reverse_distillation/config.yaml``, the
configuration the paper ran (``conf/model/reverse_distillation.yaml`` names each): 256 px, no centre
crop, Wide-ResNet-50-2 layers 1-3, lr 0.005, betas (0.5, 0.99), the anomaly map's ``multiply``
mode (anomalib 2.7's default is ``add``), batch 32, at most 200 epochs. Early stopping on the
test set (its validation split) is the authors' protocol (``protocol.select_on_test``,
:meth:`end_epoch`); the clean protocol trains the 200 epochs and tests the last.

The anomaly map is anomalib's: per layer ``1 - cos(encoder, decoder)`` over the channels,
bilinear (``align_corners=True``) to the image, multiplied over the layers, blurred (Gaussian,
sigma 4); the score is its maximum. Both are returned raw.

Precision (``precision=bf16``, :mod:`..precision`): only the frozen encoder runs under autocast and
hands fp32 features on; the bottleneck, the decoder, the loss and the maps run in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from ...data import ImageSet
from ...environment import adam_implementation, seeded
from .. import anomalib_adapter
from ..anomalib_adapter import reverse_distillation as adapter
from ..backbone import Normalize, load_into
from ..base import AnomalyModel, Prediction, RunContext
from ..precision import autocast_forward
from ..settings import Count, LearningRate, Settings, adopt, as_record
from ..training import train_batches

#: the side of the input must divide by 32: the bottleneck halves layer3's map (stride 16) once
#: more, and the decoder's transposed convolutions must come back to the encoder's map sizes
RD_SIDE_MULTIPLE = 32
#: the range of Adam's decay rates (``model.beta1``, ``model.beta2``), and why
Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False, description="Adam's betas lie in [0, 1)")]


@dataclass(frozen=True)
class ReverseDistillationSettings(Settings, model="reverse_distillation"):
    """Reverse Distillation's settings (``conf/model/reverse_distillation.yaml``): anomalib 0.7's
    ``reverse_distillation/config.yaml``."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = adapter.RD_LAYERS
    anomaly_map_mode: str = "multiply"
    epochs: Count = 200
    batch_size: Count = 32
    lr: LearningRate = 0.005
    beta1: Beta = 0.5
    beta2: Beta = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.backbone not in adapter.RD_BACKBONES:
            raise ValueError(
                f"model.backbone={self.backbone!r}: Reverse Distillation runs on {', '.join(adapter.RD_BACKBONES)} "
                "(anomalib's decoders) (reverse_distillation)"
            )
        if tuple(self.layers) != adapter.RD_LAYERS:
            raise ValueError(
                f"model.layers={list(self.layers)}: anomalib's bottleneck fuses exactly {list(adapter.RD_LAYERS)} "
                "(reverse_distillation)"
            )
        if self.anomaly_map_mode not in adapter.RD_MAP_MODES:
            raise ValueError(
                f"model.anomaly_map_mode={self.anomaly_map_mode!r}: must be one of {', '.join(adapter.RD_MAP_MODES)} "
                "(reverse_distillation)"
            )


class ReverseDistillation(AnomalyModel):
    """Reverse Distillation (Deng and Li, CVPR 2022) via
    ``anomalib.models.image.reverse_distillation.torch_model.ReverseDistillationModel`` (module
    docstring: what is anomalib's, what is re-created, and the sources)."""

    name = "reverse_distillation"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    #: at 32 px the bottleneck's output is 1 x 1: a training batch of one image (the last partial
    #: batch) leaves its batch norms one value per channel, which torch refuses
    min_image_size = 2 * RD_SIDE_MULTIPLE
    image_size_multiple = RD_SIDE_MULTIPLE

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`ReverseDistillationSettings`'s (``conf/model/reverse_distillation.yaml``)."""
        adopt(self, ReverseDistillationSettings(**settings))

    def own_backbone(self) -> str | None:
        """Reverse Distillation's paper setting fixes its encoder (Wide-ResNet-50-2), whatever ``backbone=`` says."""
        return self.backbone

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        with anomalib_adapter.no_downloads(), seeded(ctx.seed):  # built on the CPU: the Kaiming draws
            self.model = adapter.build_reverse_distillation(
                ctx.backbone.name, ctx.image_size, self.layers, self.anomaly_map_mode
            )
        load_into(adapter.timm_network(self.model), ctx.backbone)
        autocast_forward(adapter.encoder(self.model), self.autocast_dtype)
        self.model.to(ctx.device)
        self.normalize = Normalize().to(ctx.device)
        self.loss = adapter.reverse_distillation_loss()

    def train_step_loss(self, images: torch.Tensor) -> torch.Tensor:
        """anomalib's ``training_step``: ``ReverseDistillationLoss`` of the training forward of
        ``images`` (``[B, 3, S, S]`` in [0, 1] on the device)."""
        return self.loss(*adapter.encoder_decoder_features(self.model, self.normalize(images)))

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        """``epochs`` epochs of Adam on the bottleneck and decoder (module docstring), through the one training loop."""
        optimizer = torch.optim.Adam(
            adapter.trainable_parameters(self.model),
            lr=self.lr,
            betas=(self.beta1, self.beta2),
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
            "loss_per_epoch": [round(v, 6) for v in losses],
            "final_loss": round(losses[-1], 6) if losses else None,
            "timing": {"epoch_s": log.epoch_s},
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """anomalib's eval forward: the blurred map ``[B, S, S]`` and its maximum ``[B]``, raw."""
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
            **as_record(self, ReverseDistillationSettings, **resolved),
            "input_size": ctx.image_size if ctx is not None else None,
            "optimizer": "Adam",
            "weight_decay": 0.0,
            "drop_last": False,
            "loss": "ReverseDistillationLoss: sum over layers of mean(1 - cos) of the flattened features",
            "map": f"1 - cos per layer, bilinear (align_corners) to the image, {self.anomaly_map_mode}, blur sigma 4",
            "score": "max",
        }
