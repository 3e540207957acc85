"""EfficientAD through anomalib's ``EfficientAdModel``: the networks, distances and maps are
anomalib's; the training of its Lightning module is re-created here (:class:`EfficientAd`).

The harness feeds the images in [0, 1] (the networks normalise internally), takes the raw
anomaly maps and scores, and scores them with its own metrics. anomalib is reached only
through :mod:`ulsad_bench.models.anomalib_adapter`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ...data import DatasetError, ImageSet
from ...environment import adam_implementation, seeded
from .. import anomalib_adapter as adapter
from ..base import AnomalyModel, CacheEntry, CacheFacts, Prediction, RunContext
from ..precision import autocast_forward
from ..settings import (
    Count,
    CountOrNone,
    Fraction,
    LearningRate,
    Probability,
    Settings,
    WeightDecay,
    adopt,
    as_record,
)
from ..training import LossSums, train_epochs
from .penalty import penalty_files, penalty_stream
from .teacher import (
    DistillationConfig,
    TeacherWeightsNotFoundError,
    channel_mean_var,
    distil_teacher,
    load_teacher,
    resize_images,
    teacher_file,
)

# EfficientAD's autoencoder halves the image five times, then applies an 8 x 8 convolution.
EFFICIENTAD_MIN_SIZE = 256
TEACHERS_ENTRY = "EfficientAD distilled teachers"
#: ``model.input_size``'s range, and why
InputSize = Annotated[int, Field(ge=EFFICIENTAD_MIN_SIZE, description="its autoencoder takes at least 256 px")]


@functools.lru_cache(maxsize=8)
def pdn_bytes(model_size: str, out_channels: int) -> int:
    """Bytes of a distilled teacher (its patch description network, built on the meta device)."""
    with torch.device("meta"):
        pdn = adapter.build_pdn(model_size, out_channels, padding=True)
    return sum(v.numel() * v.element_size() for v in pdn.state_dict().values())


@dataclass(frozen=True)
class EfficientAdSettings(Settings, model="efficientad"):
    """EfficientAD's settings (``conf/model/efficientad.yaml``): anomalib's and the EfficientAD
    paper's (:class:`EfficientAd` says which and where they differ)."""

    model_size: str = "small"
    teacher_out_channels: Count = 384
    padding: bool = False
    pad_maps: bool = True
    steps: Count = 70000
    max_epochs: Count | None = 1000
    lr: LearningRate = 1e-4
    weight_decay: WeightDecay = 1e-5
    lr_decay_at: Fraction | None = 0.95
    hard_quantile: Probability = 0.999
    map_quantiles: tuple[Probability, Probability] = (0.9, 0.995)
    input_size: InputSize | None = None
    teacher_weights: str | None = None
    distillation: dict[str, Any] | None = None
    penalty_dir: str | None = None
    penalty_grayscale: Probability = 0.3
    penalty_workers: CountOrNone = 2
    teacher: str = "auto"
    penalty: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        DistillationConfig.check(self.distillation or {})  # model.distillation.*, kept as given for the record
        if self.teacher not in ("auto", "pretrained", "distilled"):
            raise ValueError(f"model.teacher must be auto, pretrained or distilled, got {self.teacher!r}")
        if self.penalty not in ("auto", "imagenette", "off"):
            raise ValueError(f"model.penalty must be auto, imagenette or off, got {self.penalty!r}")
        if self.model_size not in ("small", "medium"):
            raise ValueError(f"model_size must be 'small' or 'medium', got {self.model_size!r}")
        low, high = self.map_quantiles
        if not 0 <= low < high <= 1:
            raise ValueError(f"map_quantiles must be two increasing values in [0, 1], got {self.map_quantiles}")


class EfficientAd(AnomalyModel):
    """EfficientAD (Batzner et al., WACV 2024) via ``anomalib.models.image.efficient_ad.torch_model``.

    anomalib's ``EfficientAdModel`` provides the networks, the distances and the maps; the
    training of its Lightning module is re-created here:

    1. teacher: loaded from ``teacher_weights`` or distilled from the configured backbone
       (:mod:`.teacher`);
    2. the teacher's channel mean and std over the training images (``teacher_channel_mean_std``);
    3. ``steps`` steps with batch size 1 (anomalib requires it), one training image and, if
       ``penalty_dir`` is set, one penalty image per step; losses of ``compute_losses``
       (hard feature loss at the 0.999 quantile + penalty, autoencoder, student-autoencoder);
       Adam on student and autoencoder. As in anomalib's trainer config, training stops after
       ``steps`` steps or ``max_epochs`` passes over the training images, whichever is first;
    4. map normalisation quantiles (0.9, 0.995) on the normal images of the *validation*
       split (``map_norm_quantiles``), never the test set.

    One deliberate difference: the learning rate drops x0.1 after ``lr_decay_at`` of the steps,
    per step, as the EfficientAD paper and its authors' code do. anomalib 2.7 builds the same
    ``StepLR`` but Lightning steps it once per *epoch*, so there the decay never comes;
    ``lr_decay_at=null`` reproduces that.

    Images smaller than 256 px (the smallest size the autoencoder takes) are upsampled to 256
    (``input_size=null``); maps are returned at the input size and the harness brings them to the
    image size like every model's.

    Precision (``precision=bf16``, :mod:`..precision`): the teacher and the student run under
    autocast and hand fp32 outputs on; the autoencoder, the teacher's standardisation, the
    distances, the losses' quantile and the map normalisation run in fp32. The autoencoder stays
    in fp32 because bf16 there, unlike in the teacher and the student, costs detection (the
    README's measured section: "Mixed precision").
    """

    name = "efficientad"

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`EfficientAdSettings`'s (``conf/model/efficientad.yaml``), checked there."""
        adopt(self, EfficientAdSettings(**settings))
        self.map_quantiles = tuple(self.map_quantiles)
        self.distillation = DistillationConfig.from_dict(self.settings.distillation or {})
        self.teacher_setting, self.penalty_setting = self.teacher, self.penalty  # resolved in setup
        self.teacher_record: dict[str, Any] = {}
        self.penalty_record: str | dict[str, Any] = "off"
        self.penalty_images: list[Path] | None = None

    # ------------------------------------------------------------------ set-up

    def resolve_setting(self, weights_policy: str) -> tuple[str, str]:
        """``(teacher, penalty)``: the paper's setting (anomalib's pretrained teacher, ImageNette
        penalty) unless asked for the substitutes (``model.teacher=distilled``,
        ``model.penalty=off``). ``auto``: the paper's, except with a random-init backbone (the
        synthetic set), where a teacher distilled from it and no penalty are the only consistent
        choice (a file given is used all the same)."""
        substitute = weights_policy == "random"
        teacher = self.teacher_setting
        if teacher == "auto":
            teacher = "distilled" if substitute and self.teacher_weights is None else "pretrained"
        penalty = self.penalty_setting
        if penalty == "auto":
            penalty = "off" if substitute and self.penalty_dir is None else "imagenette"
        missing = []
        if teacher == "pretrained" and self.teacher_weights is None:
            missing.append(
                f"model.teacher_weights=/path/to/pretrained_teacher_{self.model_size}.pth (anomalib's "
                "efficientad_pretrained_weights.zip)"
            )
        if penalty == "imagenette" and self.penalty_dir is None:
            missing.append("model.penalty_dir=/path/to/imagenette2 (any ImageNet-like image folder)")
        if missing:
            raise TeacherWeightsNotFoundError(
                "EfficientAD in the paper's setting needs " + " and ".join(missing) + ". Nothing is downloaded. "
                "To run the substitute instead, ask for it explicitly: model.teacher=distilled (a teacher distilled "
                "from the configured backbone on the training images) and/or model.penalty=off; records and "
                "tables mark it as not the paper's EfficientAD."
            )
        return teacher, penalty

    @classmethod
    def cache_entries(cls, settings: Mapping[str, Any], facts: CacheFacts) -> tuple[list[CacheEntry], list[str]]:
        """The distilled teacher (``teacher=distilled``, or ``auto`` with a random-init backbone
        and no teacher file), one per training set whatever the seed."""
        model = cls(**settings)
        teacher = model.teacher_setting
        random_init = facts.weights_policy == "random"
        if not (teacher == "distilled" or (teacher == "auto" and random_init and model.teacher_weights is None)):
            return [], []
        size = int(model.input_size or max(facts.image_size, EFFICIENTAD_MIN_SIZE))
        key = [facts.train_id, facts.backbone, facts.weights_policy, size, model.model_size]
        key += [model.teacher_out_channels, model.distillation.as_record()]
        nbytes = pdn_bytes(model.model_size, model.teacher_out_channels)
        return [CacheEntry(TEACHERS_ENTRY, json.dumps(key), nbytes)], []

    def check_files(self, weights_policy: str = "imagenet") -> None:
        teacher, penalty = self.resolve_setting(weights_policy)
        if teacher == "pretrained" and self.teacher_weights is not None:
            teacher_file(self.teacher_weights, self.model_size)
        if penalty == "imagenette" and self.penalty_dir is not None:
            penalty_files(self.penalty_dir)

    def input_files(self, weights_policy: str = "imagenet") -> list[Path]:
        """The teacher file and the penalty images the job will read (those that exist); none when
        the setting cannot resolve (the job then refuses it by name, with its record)."""
        try:
            teacher, penalty = self.resolve_setting(weights_policy)
        except TeacherWeightsNotFoundError:
            return []
        found: list[Path] = []
        if teacher == "pretrained" and self.teacher_weights is not None:
            file = Path(self.teacher_weights).expanduser()
            found += [file.resolve()] if file.is_file() else []
        if penalty == "imagenette" and self.penalty_dir is not None:
            with contextlib.suppress(DatasetError):  # missing: the job refuses it by name
                found += penalty_files(self.penalty_dir)
        return found

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.size = self.input_size or max(ctx.image_size, EFFICIENTAD_MIN_SIZE)
        with adapter.no_downloads(), seeded(ctx.seed, ctx.device):
            self.model = adapter.build_efficientad(
                self.model_size, self.teacher_out_channels, self.padding, self.pad_maps
            )
        for network in adapter.efficientad_pdns(self.model):
            autocast_forward(network, self.autocast_dtype)
        self.model.to(ctx.device)
        self.teacher_setting, self.penalty_setting = self.resolve_setting(ctx.backbone.weights.policy)
        if self.teacher_setting == "pretrained":
            assert self.teacher_weights is not None
            file = teacher_file(self.teacher_weights, self.model_size)
            self.teacher_record = load_teacher(adapter.efficientad_teacher(self.model), file)
        use_penalty = self.penalty_setting == "imagenette" and self.penalty_dir is not None
        self.penalty_images = penalty_files(self.penalty_dir) if use_penalty else None
        if self.penalty_images is not None:
            folder = Path(self.penalty_dir).expanduser().resolve()
            self.penalty_record = {"dir": str(folder), "images": len(self.penalty_images)}

    def _distil(self, train: ImageSet) -> None:
        spec = self.ctx.backbone
        key = {
            "what": "efficientad-teacher",
            "images": train.key,
            "backbone": spec.name,
            "weights": spec.weights.identity,
            "size": self.size,
            "model_size": self.model_size,
            "channels": self.teacher_out_channels,
            **self.distillation.as_record(),
        }

        def compute() -> dict[str, Any]:
            with seeded(self.distillation.seed, self.ctx.device):
                pdn = adapter.build_pdn(self.model_size, self.teacher_out_channels, padding=True)
            return distil_teacher(
                pdn,
                train,
                spec,
                self.size,
                self.teacher_out_channels,
                self.distillation,
                self.ctx.device,
                self.ctx.progress,
            )

        result, _ = self.ctx.feature_cache.get_or_compute(key, compute)
        adapter.efficientad_teacher(self.model).load_state_dict(result["state_dict"])
        self.teacher_record = {
            "source": "distilled",
            "backbone": spec.name,
            "weights": spec.weights.as_record(),
            **self.distillation.as_record(),
            "final_loss": round(float(result["loss"]), 6),
        }

    # ------------------------------------------------------------------ training

    def _images(self, images: ImageSet, indices: torch.Tensor) -> torch.Tensor:
        return resize_images(images.float_images(indices).to(self.ctx.device), self.size)

    @torch.no_grad()
    def _teacher_mean_std(self, train: ImageSet) -> None:
        """anomalib's ``teacher_channel_mean_std``: per-channel mean and (population) std of the teacher."""
        teacher = adapter.efficientad_teacher(self.model)
        teacher.eval()
        mean, var = channel_mean_var(
            teacher(resize_images(images.to(self.ctx.device), self.size)) for _, images in train.batches(16)
        )
        adapter.set_teacher_statistics(self.model, mean, torch.sqrt(var))

    def losses(
        self, batch: torch.Tensor, penalty: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """anomalib's ``EfficientAdModel.compute_losses`` with the penalty optional: (L_ST, L_AE, L_STAE).

        Line for line the same computation and the same draws from the global generator
        (augmentation, dropout), so with a penalty image it equals anomalib's training forward.
        """
        model = self.model
        distance_st = adapter.reduce_elements(adapter.student_teacher_distance(model, batch))
        d_hard = torch.quantile(distance_st, self.hard_quantile)
        loss_st = torch.mean(distance_st[distance_st >= d_hard])
        if penalty is not None:
            loss_st = loss_st + torch.mean(adapter.split_student(model, penalty)[0] ** 2)
        augmented = adapter.random_augmentation(model, batch)
        ae_output = adapter.autoencoder_output(model, augmented, batch.shape[-2:])
        with torch.no_grad():
            teacher_output = adapter.standardised_teacher_output(model, augmented)
        student_output = adapter.split_student(model, augmented)[1]
        loss_ae = torch.mean((teacher_output - ae_output) ** 2)
        loss_stae = torch.mean((ae_output - student_output) ** 2)
        return loss_st, loss_ae, loss_stae

    def _training_images(self, train: ImageSet) -> Iterator[torch.Tensor]:
        """Endless training images ``[1, 3, S, S]``, each epoch in a new order from the run seed
        (anomalib's shuffled loader, batch size 1); the images are moved to the device once."""
        on_device = replace(train, images=train.images.to(self.ctx.device))
        generator = torch.Generator().manual_seed(self.ctx.seed)
        while True:
            for _, images in on_device.batches(1, shuffle=True, generator=generator):
                yield resize_images(images, self.size)

    def _penalty_images(self) -> Iterator[torch.Tensor | None]:
        """One penalty image ``[1, 3, S, S]`` per step, or None forever when the penalty is off."""
        if self.penalty_images is None:
            yield from itertools.repeat(None)
            return
        pin = self.ctx.device.type == "cuda"
        stream = penalty_stream(
            self.penalty_images, self.size, self.penalty_grayscale, self.ctx.seed, self.penalty_workers, pin
        )
        for images in stream:
            yield images.to(self.ctx.device, non_blocking=True)

    def _train(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        """The training steps, in epochs of ``len(train)`` steps (batch size 1; the last one may be
        shorter) through the one training loop (:func:`..training.train_epochs`: losses read once
        per epoch). Under ``protocol.select_on_test`` the map quantiles are taken on ``val`` at the
        end of each epoch, as anomalib's ``on_validation_start`` does before each validation, and
        the harness scores the model."""
        steps = self.steps if self.max_epochs is None else min(self.steps, self.max_epochs * len(train))
        parameters = adapter.trainable_parameters(self.model)
        optimizer = torch.optim.Adam(
            parameters, lr=self.lr, weight_decay=self.weight_decay, **adam_implementation(self.ctx.device)
        )
        scheduler = None
        if self.lr_decay_at is not None:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, max(1, int(self.lr_decay_at * steps)), gamma=0.1)
        if len(train) == 0:
            raise ValueError("no images to train on")
        images = self._training_images(train)
        penalties = self._penalty_images()
        recent: list[torch.Tensor] = []  # the last 100 steps' (L_ST, L_AE, L_STAE), on the device

        def run_epoch(epoch: int, sums: LossSums) -> None:
            for _ in range(min(len(train), steps - epoch * len(train))):
                loss_st, loss_ae, loss_stae = self.losses(next(images), next(penalties))
                loss = loss_st + loss_ae + loss_stae
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                recent.append(torch.stack([loss_st, loss_ae, loss_stae]).detach())
                del recent[:-100]
                sums.add({"st": loss_st, "ae": loss_ae, "stae": loss_stae, "total": loss})

        log = train_epochs(
            self,
            -(-steps // len(train)),
            run_epoch,
            [self.model],
            ["st", "ae", "stae", "total"],
            hint=f"lr {self.lr}",
            before_hook=lambda: self._map_quantiles(val),
        )
        images.close()
        penalties.close()
        means = np.mean(torch.stack(recent).double().cpu().numpy(), axis=0) if recent else [math.nan] * 3
        return {
            "steps": steps,
            "epochs": round(steps / len(train), 2),
            "final_loss": {k: round(float(v), 6) for k, v in zip(("st", "ae", "stae"), means, strict=True)},
            "timing": {"epoch_s": log.epoch_s},
        }

    @torch.no_grad()
    def _map_quantiles(self, val: ImageSet) -> dict[str, float]:
        """anomalib's ``map_norm_quantiles`` on the normal validation images."""
        normal = np.flatnonzero(val.labels == 0)
        if len(normal) == 0:
            raise ValueError("EfficientAD normalises its maps on normal validation images; the split has none")
        self.model.eval()
        maps_st, maps_ae = [], []
        for start in range(0, len(normal), 16):
            batch = self._images(val, torch.from_numpy(normal[start : start + 16]))
            map_st, map_ae = adapter.unnormalised_maps(self.model, batch)
            maps_st.append(map_st.flatten())
            maps_ae.append(map_ae.flatten())
        low, high = self.map_quantiles
        values = {}
        for name, maps in (("st", maps_st), ("ae", maps_ae)):
            flat = adapter.reduce_elements(torch.cat(maps))
            values[f"qa_{name}"] = torch.quantile(flat, low)
            values[f"qb_{name}"] = torch.quantile(flat, high)
        adapter.set_map_quantiles(self.model, values)
        return {k: round(float(v), 8) for k, v in values.items()}

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        with adapter.no_downloads():
            if self.teacher_setting == "distilled":
                self._distil(train)
            self._teacher_mean_std(train)
            summary = self._train(train, val)
            quantiles = self._map_quantiles(val)
        return {
            "train_images": len(train),
            **summary,
            "val_images": int((val.labels == 0).sum()),
            "quantiles": quantiles,
        }

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        maps, scores = adapter.maps_and_scores(self.model(resize_images(images, self.size)))
        return Prediction(maps=maps.float(), scores=scores.float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model]

    def hyperparameters(self) -> dict[str, Any]:
        """Every setting (the input size, teacher and penalty as resolved: where they came from),
        the batch size anomalib requires, and whether this is the paper's setting."""
        resolved = {
            "input_size": getattr(self, "size", self.input_size),
            "map_quantiles": list(self.map_quantiles),
            "distillation": self.distillation.as_record(),
            "teacher": self.teacher_record or {"source": "file" if self.teacher_weights else "distilled"},
            "penalty": self.penalty_record,
        }
        return {
            **as_record(self, EfficientAdSettings, **resolved),
            "batch_size": 1,  # anomalib requires it (EfficientAD paper)
            "teacher_setting": self.teacher_setting,
            "penalty_setting": self.penalty_setting,
            "paper_setting": self.teacher_setting == "pretrained" and self.penalty_setting == "imagenette",
        }
