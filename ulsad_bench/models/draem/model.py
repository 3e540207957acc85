"""DRAEM through anomalib's ``DraemModel``: the networks, the loss and the anomaly generator are
anomalib 2.7's; the training of its Lightning module is re-created here (:class:`Draem`).

Sources: anomalib 0.7's ``src/anomalib/models/draem/config.yaml`` (the version the paper's
baselines ran: image size 256, ``train_batch_size: 8``, ``lr: 0.0001``, ``enable_sspcab: false``,
``sspcab_lambda: 0.1``, ``max_epochs: 700``) and anomalib 2.7's ``models/image/draem/`` (the code).
anomalib is reached only through :mod:`ulsad_bench.models.anomalib_adapter.draem`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data import DatasetError, ImageSet
from ...environment import adam_implementation, seeded
from .. import anomalib_adapter
from ..anomalib_adapter import draem as adapter
from ..backbone import NO_BACKBONE, Normalize
from ..base import AnomalyModel, Prediction, RunContext
from ..settings import Count, LearningRate, Probability, Settings, Weight, adopt, as_record
from ..training import LossSums, train_epochs
from .anomaly_source import GENERATED_SUBSTITUTE, SOURCES, resolve_source, texture_files

LOSS_NAMES = ("l2", "ssim", "focal", "sspcab", "total")
#: ``model.input_normalization``: ``imagenet`` (anomalib 0.7's ``dataset.normalization: imagenet``, the
#: paper's run) | ``none`` (images in [0, 1]: anomalib 2.7 and the DRAEM authors' code)
INPUT_NORMALIZATIONS = ("imagenet", "none")


@dataclass(frozen=True)
class DraemSettings(Settings, model="draem"):
    """DRAEM's settings (``conf/model/draem.yaml``; :class:`Draem` names the source of each)."""

    anomaly_source: str = "auto"
    anomaly_source_dir: str | None = None
    beta: tuple[Probability, Probability] = (0.2, 1.0)
    enable_sspcab: bool = False
    sspcab_lambda: Weight = 0.1
    reconstructive_width: Count = adapter.RECONSTRUCTIVE_WIDTH
    discriminative_width: Count = adapter.DISCRIMINATIVE_WIDTH
    epochs: Count = 700
    batch_size: Count = 8
    lr: LearningRate = 1e-4
    lr_milestones: tuple[Count, ...] = ()
    input_normalization: str = "imagenet"

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(
                f"model.input_normalization={self.input_normalization!r}: must be one of "
                f"{', '.join(INPUT_NORMALIZATIONS)} (draem)"
            )
        if self.anomaly_source not in SOURCES:
            raise ValueError(
                f"model.anomaly_source={self.anomaly_source!r}: must be one of {', '.join(SOURCES)} (draem)"
            )
        low, high = self.beta
        if low > high:
            raise ValueError(f"model.beta={list(self.beta)}: must be [low, high] with low <= high (draem)")


class Draem(AnomalyModel):
    """DRAEM (Zavrtanik, Kristan, Skocaj, ICCV 2021) via ``anomalib.models.image.draem``.

    Training re-creates anomalib 2.7's ``Draem`` Lightning module (``lightning_model.py``):

    - ``training_step`` (L160-193): anomalies synthesised on the batch by ``PerlinAnomalyGenerator``
      (``blend_factor`` = ``beta``; probability 0.5), the
      training-mode forward on the augmented images, ``DraemLoss`` against the *clean* images
      (L2 + 2 x SSIM + focal), plus ``sspcab_lambda`` x the MSE between SSPCAB's input and output
      when ``enable_sspcab``;
    - ``configure_optimizers`` (L224-233): Adam over every parameter, and in 2.7 MultiStepLR (x0.1 at
      epochs 400 and 600, stepped once per epoch as Lightning does; the DRAEM paper's, Sec. 4.1);
      anomalib 2.7 hard-codes lr 1e-4, the harness reads ``lr`` (0.7's config: 0.0001). anomalib 0.7,
      the paper's run, had no scheduler (``draem/lightning_model.py`` ``configure_optimizers``: Adam
      alone): ``lr_milestones`` is empty by default, ``[400, 600]`` gives 2.7's;
    - the blend factor range ``beta``: 0.7's ``Augmenter`` default (0.2, 1.0) (``data/utils/augmenter.py``
      ``__init__``; 0.7's Draem builds it with the source path alone); 2.7's ``Draem`` uses (0.1, 1.0);
    - the training loader: shuffled, ``batch_size`` 8, the last partial batch kept (0.7 and 2.7).

    0.7's config stops early on the *test* set's pixel AUROC (patience 20); the harness's clean
    protocol trains the fixed ``epochs`` (700), and ``protocol.select_on_test`` re-creates a
    selection on the test set through :meth:`end_epoch`.

    Input (``input_normalization``): ImageNet-normalised by default, as anomalib 0.7 fed DRAEM
    (``draem/config.yaml``: ``dataset.normalization: imagenet``; its ``Augmenter.augment_batch`` blends
    the [0, 1] textures into the normalised batch, ``lightning_model.py`` L84-88, and the reconstruction
    loss compares with the normalised images), the paper's run; ``none`` feeds images in [0, 1] as
    anomalib 2.7 does (its ``on_train_start`` refuses a Normalize, L150-158) and the DRAEM authors'
    code. Either way the textures are blended in as anomalib's generator makes them. The map is the
    softmax probability of the anomalous class ``[B, H, W]``, the score its maximum (anomalib's eval
    forward, raw).

    Anomaly source (``anomaly_source``, :mod:`.anomaly_source`): DTD images (the paper's setting)
    or generated Perlin-noise textures (a substitute, recorded as such).

    ``reconstructive_width`` / ``discriminative_width`` are the sub-networks' base widths (anomalib
    and the DRAEM authors: 128 and 64, 97 M parameters); smaller widths are for quick CPU runs only.

    Precision: DRAEM has no frozen pretrained network, so nothing runs under autocast: its two
    sub-networks are trained, and the loss and maps are computed, in fp32 under every
    ``precision`` setting (:mod:`..precision`).
    """

    name = "draem"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    # the discriminative U-Net halves the image five times and concatenates each skip connection
    min_image_size = 32
    image_size_multiple = 32

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`DraemSettings`'s (``conf/model/draem.yaml``), checked there."""
        adopt(self, DraemSettings(**settings))
        self.source = self.anomaly_source  # resolved in setup
        self.textures: list[Path] = []

    # ------------------------------------------------------------------ set-up

    def own_backbone(self) -> str | None:
        return NO_BACKBONE  # both sub-networks are trained from scratch

    def check_files(self, weights_policy: str = "imagenet") -> None:
        if resolve_source(self.anomaly_source, self.anomaly_source_dir, weights_policy) == "dtd":
            assert self.anomaly_source_dir is not None
            texture_files(self.anomaly_source_dir)

    def input_files(self, weights_policy: str = "imagenet") -> list[Path]:
        """The texture images a DTD source reads (none when the setting cannot resolve or the folder
        has none: the job then refuses it by name)."""
        with contextlib.suppress(FileNotFoundError, DatasetError):
            if resolve_source(self.anomaly_source, self.anomaly_source_dir, weights_policy) == "dtd":
                assert self.anomaly_source_dir is not None
                return [p.resolve() for p in texture_files(self.anomaly_source_dir)]
        return []

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.source = resolve_source(self.anomaly_source, self.anomaly_source_dir, ctx.backbone.weights.policy)
        if self.source == "dtd":
            assert self.anomaly_source_dir is not None
            self.textures = texture_files(self.anomaly_source_dir)
        with anomalib_adapter.no_downloads(), seeded(ctx.seed, ctx.device):
            self.model = adapter.build_draem(self.enable_sspcab, self.reconstructive_width, self.discriminative_width)
            self.generator = adapter.build_anomaly_generator(self.textures, self.beta)
        self.loss = adapter.build_draem_loss()
        self.activations = adapter.sspcab_activations(self.model) if self.enable_sspcab else {}
        self.model.to(ctx.device)
        self.loss.to(ctx.device)
        self.normalize: nn.Module = Normalize() if self.input_normalization == "imagenet" else nn.Identity()
        self.normalize.to(ctx.device)

    # ------------------------------------------------------------------ training

    def losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """anomalib 2.7's ``training_step`` on clean images ``[B, 3, H, W]`` in [0, 1] (normalised
        first under ``input_normalization=imagenet``, as 0.7): the loss terms and their ``total``."""
        images = self.normalize(images)
        augmented, mask = adapter.synthesise_anomalies(self.generator, images)
        reconstruction, prediction = adapter.reconstruct_and_segment(self.model, augmented)
        terms = adapter.draem_loss_terms(self.loss, images, reconstruction, mask, prediction)
        total = terms["l2"] + terms["ssim"] + terms["focal"]  # DraemLoss.forward's order
        sspcab = torch.zeros((), device=images.device)
        if self.enable_sspcab:
            sspcab = F.mse_loss(self.activations["input"], self.activations["output"])
            total = total + self.sspcab_lambda * sspcab
        return {**terms, "sspcab": sspcab, "total": total}

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        if len(train) == 0:
            raise ValueError("draem: no training images")
        device = self.ctx.device
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, **adam_implementation(device))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.lr_milestones), gamma=0.1)
        generator = torch.Generator().manual_seed(self.ctx.seed)

        def run_epoch(epoch: int, sums: LossSums) -> None:
            for idx, images in train.batches(self.batch_size, shuffle=True, generator=generator):
                losses = self.losses(images.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                optimizer.step()
                sums.add(losses, weight=len(idx))
            scheduler.step()  # Lightning steps an epoch-interval scheduler after each epoch

        with anomalib_adapter.no_downloads():
            log = train_epochs(
                self,
                self.epochs,
                run_epoch,
                [self.model],
                LOSS_NAMES,
                hint=f"lr {self.lr}, batch size {self.batch_size}",
            )
        last = log.losses[-1] if log.losses else {}
        return {
            "train_images": len(train),
            "epochs": self.epochs,
            "steps": self.epochs * -(-len(train) // self.batch_size),
            "final_loss": {name: round(value, 6) for name, value in last.items()},
            "loss_per_epoch": [round(epoch["total"], 6) for epoch in log.losses],
            "timing": {"epoch_s": log.epoch_s},
        }

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        maps, scores = anomalib_adapter.maps_and_scores(self.model(self.normalize(images)))
        return Prediction(maps=maps.float(), scores=scores.float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model, self.normalize]

    def hyperparameters(self) -> dict[str, Any]:
        """Every setting, the anomaly source as resolved (DTD's folder and image count, or generated),
        the fixed values of anomalib's training, and whether this is the paper's setting."""
        folder = self.anomaly_source_dir
        resolved = {
            "anomaly_source": self.source,
            "anomaly_source_dir": str(Path(folder).expanduser().resolve()) if folder else None,
        }
        record = {
            **as_record(self, DraemSettings, **resolved),
            "anomaly_source_setting": self.anomaly_source,
            "anomaly_source_images": len(self.textures),
            "anomaly_probability": 0.5,  # PerlinAnomalyGenerator's default, as anomalib's Draem uses it
            "optimizer": "Adam",
            "lr_gamma": 0.1,  # MultiStepLR, per epoch (anomalib 2.7 configure_optimizers)
            "loss": "l2 + 2 * ssim(window 11) + focal(alpha 1)",
            "input": "ImageNet-normalised" if self.input_normalization == "imagenet" else "[0, 1], not normalised",
            "map": "softmax probability of the anomalous class",
            "score": "max of the map",
            "paper_setting": self.source == "dtd",
        }
        if self.source != "dtd":
            record["substitute"] = GENERATED_SUBSTITUTE
        return record
