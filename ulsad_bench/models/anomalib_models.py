"""Baselines from anomalib 2.x, driven by the harness through their pure torch models.

Only anomalib's ``torch_model`` classes are used: no Engine, no Lightning module, no
PreProcessor / PostProcessor / Evaluator / Visualizer. The harness feeds the images each torch
model expects (ImageNet-normalised for PaDiM and PatchCore, as anomalib's default
pre-processing produces; in [0, 1] for EfficientAD, whose networks normalise internally),
takes the raw anomaly maps and scores, and scores them with its own metrics. Backbone
weights come from the harness's one backbone source (:mod:`ulsad_bench.models.backbone`) and
are copied into anomalib's timm feature extractor, so all models of a comparison share one
weights file. anomalib is kept off the network and the console (:mod:`.anomalib_offline`).

Unlike anomalib's Lightning training loop (which puts the whole module, backbone included,
in train mode), the frozen backbone stays in eval mode while embeddings are collected, so
its batch-norm statistics are never updated.
"""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from ..environment import limit_heap_fragmentation, seeded
from .anomalib_offline import anomalib_progress, import_anomalib, no_downloads
from .backbone import Normalize, load_into
from .base import AnomalyModel, Prediction, RunContext
from .efficientad_offline import (
    DistillationConfig,
    IndexStream,
    TeacherWeightsNotFoundError,
    channel_mean_var,
    distil_teacher,
    load_teacher,
    penalty_files,
    penalty_stream,
    resize_images,
    teacher_file,
)

# PaDiM paper (Defard et al. 2021), also anomalib's table: retained feature dimensions.
PADIM_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
# EfficientAD's autoencoder halves the image five times, then applies an 8 x 8 convolution.
EFFICIENTAD_MIN_SIZE = 256


class _AnomalibFeatureModel(AnomalyModel):
    """Shared logic of anomalib models that collect frozen-backbone embeddings, then fit."""

    batch_size: int = 32

    @abstractmethod
    def _build(self, ctx: RunContext) -> nn.Module:
        """The anomalib torch model, built without pretrained weights."""

    @abstractmethod
    def _finish_fit(self) -> dict[str, Any]:
        """Turn the collected embeddings into the fitted model; returns a summary for the record."""

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        with no_downloads(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)  # draws PaDiM's random feature subset
            self.model = self._build(ctx)
        load_into(self.model.feature_extractor.feature_extractor, ctx.backbone)
        self.model.to(ctx.device)
        self.normalize = Normalize().to(ctx.device)

    def _frozen_backbone_train_mode(self) -> None:
        self.model.train()
        self.model.feature_extractor.eval()

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        self._frozen_backbone_train_mode()
        with no_downloads(), torch.no_grad():
            for _, images in tqdm(
                train.batches(self.batch_size),
                total=-(-len(train) // self.batch_size),
                desc=f"{self.name}: embeddings",
                leave=False,
                disable=not self.ctx.progress,
            ):
                self.model(self.normalize(images.to(self.ctx.device)))
            summary = self._finish_fit()
        self.model.eval()
        return {"train_images": len(train), **summary}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        output = self.model(self.normalize(images))
        maps = output.anomaly_map
        if maps.ndim == 4:
            maps = maps[:, 0]
        return Prediction(maps=maps.float(), scores=output.pred_score.reshape(-1).float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model]


class Padim(_AnomalibFeatureModel):
    """PaDiM (Defard et al. 2021) via ``anomalib.models.image.padim.torch_model.PadimModel``.

    Hyperparameters: layers 1-3 and the retained feature count of the PaDiM paper (100 for
    ResNet-18, 550 for Wide-ResNet-50-2, the anomalib defaults); for other backbones
    ``n_features`` must be set or 550 is used (recorded).
    """

    name = "padim"
    uses_validation = False  # nothing is calibrated: trains on every training image (anomalib)
    min_image_size = 17  # the map's Gaussian blur (sigma 4, kernel 33) reflect-pads 16 pixels

    def __init__(
        self,
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        n_features: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.layers = list(layers)
        self.n_features = n_features
        self.batch_size = batch_size

    def _build(self, ctx: RunContext) -> nn.Module:
        padim = import_anomalib("anomalib.models.image.padim.torch_model")
        if self.n_features is None:
            self.n_features = PADIM_N_FEATURES.get(ctx.backbone.name, 550)
        return padim.PadimModel(
            backbone=ctx.backbone.name, layers=list(self.layers), pre_trained=False, n_features=self.n_features
        )

    def _finish_fit(self) -> dict[str, Any]:
        self.model.fit()
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        return {"layers": self.layers, "n_features": self.n_features, "batch_size": self.batch_size}


class Patchcore(_AnomalibFeatureModel):
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

    def __init__(
        self,
        layers: tuple[str, ...] = ("layer2", "layer3"),
        coreset_sampling_ratio: float = 0.1,
        num_neighbors: int = 9,
        batch_size: int = 32,
    ) -> None:
        if not 0 < coreset_sampling_ratio <= 1:
            raise ValueError(f"coreset_sampling_ratio must be in (0, 1], got {coreset_sampling_ratio}")
        self.layers = list(layers)
        self.coreset_sampling_ratio = float(coreset_sampling_ratio)
        self.num_neighbors = int(num_neighbors)
        self.batch_size = batch_size

    def _build(self, ctx: RunContext) -> nn.Module:
        patchcore = import_anomalib("anomalib.models.image.patchcore.torch_model")
        return patchcore.PatchcoreModel(
            layers=list(self.layers), backbone=ctx.backbone.name, pre_trained=False, num_neighbors=self.num_neighbors
        )

    def _finish_fit(self) -> dict[str, Any]:
        patches = sum(len(e) for e in self.model.embedding_store)
        limit_heap_fragmentation()  # the coreset loop fragments glibc's heap otherwise
        sampler = import_anomalib("anomalib.models.components.sampling.k_center_greedy")
        with seeded(self.ctx.seed, self.ctx.device), anomalib_progress(sampler, self.ctx.progress):
            self.model.subsample_embedding(self.coreset_sampling_ratio)
        return {"train_patches": patches, "memory_bank": len(self.model.memory_bank)}

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "coreset_sampling_ratio": self.coreset_sampling_ratio,
            "num_neighbors": self.num_neighbors,
            "batch_size": self.batch_size,
            "blur_sigma": 4,  # anomalib's AnomalyMapGenerator (fixed)
        }


class EfficientAd(AnomalyModel):
    """EfficientAD (Batzner et al., WACV 2024) via ``anomalib.models.image.efficient_ad.torch_model``.

    anomalib's ``EfficientAdModel`` provides the networks, the distances and the maps; the
    training of its Lightning module is re-created here:

    1. teacher: loaded from ``teacher_weights`` or distilled from the configured backbone
       (:mod:`.efficientad_offline`);
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
    """

    name = "efficientad"

    def __init__(
        self,
        model_size: str = "small",
        teacher_out_channels: int = 384,
        padding: bool = False,
        pad_maps: bool = True,
        steps: int = 70000,
        max_epochs: int | None = 1000,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        lr_decay_at: float | None = 0.95,
        hard_quantile: float = 0.999,
        map_quantiles: tuple[float, float] = (0.9, 0.995),
        input_size: int | None = None,
        teacher_weights: str | None = None,
        distillation: dict[str, Any] | None = None,
        penalty_dir: str | None = None,
        penalty_grayscale: float = 0.3,
        penalty_workers: int = 2,
        teacher: str = "auto",
        penalty: str = "auto",
    ) -> None:
        if teacher not in ("auto", "pretrained", "distilled"):
            raise ValueError(f"model.teacher must be auto, pretrained or distilled, got {teacher!r}")
        if penalty not in ("auto", "imagenette", "off"):
            raise ValueError(f"model.penalty must be auto, imagenette or off, got {penalty!r}")
        if model_size not in ("small", "medium"):
            raise ValueError(f"model_size must be 'small' or 'medium', got {model_size!r}")
        if input_size is not None and input_size < EFFICIENTAD_MIN_SIZE:
            raise ValueError(f"input_size must be at least {EFFICIENTAD_MIN_SIZE} (EfficientAD's autoencoder)")
        if lr_decay_at is not None and not 0 < lr_decay_at <= 1:
            raise ValueError(f"lr_decay_at must be in (0, 1] or null, got {lr_decay_at}")
        low, high = map(float, map_quantiles)
        if not 0 <= low < high <= 1:
            raise ValueError(f"map_quantiles must be two increasing values in [0, 1], got {map_quantiles}")
        self.model_size = model_size
        self.teacher_out_channels = int(teacher_out_channels)
        self.padding = bool(padding)
        self.pad_maps = bool(pad_maps)
        self.steps = int(steps)
        self.max_epochs = None if max_epochs is None else int(max_epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.lr_decay_at = None if lr_decay_at is None else float(lr_decay_at)
        self.hard_quantile = float(hard_quantile)
        self.map_quantiles = (low, high)
        self.input_size = input_size
        self.teacher_weights = teacher_weights
        self.distillation = DistillationConfig.from_dict(distillation or {})
        self.penalty_dir = penalty_dir
        self.penalty_grayscale = float(penalty_grayscale)
        self.penalty_workers = int(penalty_workers)
        self.teacher_setting = teacher
        self.penalty_setting = penalty
        self.teacher_record: dict[str, Any] = {}
        self.penalty_record: str | dict[str, Any] = "off"

    # ------------------------------------------------------------------ set-up

    def resolve_setting(self, weights_kind: str) -> tuple[str, str]:
        """``(teacher, penalty)``: the paper's setting (anomalib's pretrained teacher, ImageNette
        penalty) unless asked for the substitutes (``model.teacher=distilled``,
        ``model.penalty=off``). ``auto``: the paper's, except with a random-init backbone (the
        synthetic set), where a teacher distilled from it and no penalty are the only consistent
        choice (a file given is used all the same)."""
        substitute = weights_kind == "random"
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

    def check_files(self, weights_kind: str = "imagenet") -> None:
        teacher, penalty = self.resolve_setting(weights_kind)
        if teacher == "pretrained" and self.teacher_weights is not None:
            teacher_file(self.teacher_weights, self.model_size)
        if penalty == "imagenette" and self.penalty_dir is not None:
            penalty_files(self.penalty_dir)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.size = self.input_size or max(ctx.image_size, EFFICIENTAD_MIN_SIZE)
        self.torch_model = import_anomalib("anomalib.models.image.efficient_ad.torch_model")
        size = self.torch_model.EfficientAdModelSize(self.model_size)
        with no_downloads(), seeded(ctx.seed, ctx.device):
            self.model = self.torch_model.EfficientAdModel(
                teacher_out_channels=self.teacher_out_channels,
                model_size=size,
                padding=self.padding,
                pad_maps=self.pad_maps,
            )
        self.model.to(ctx.device)
        self.teacher_setting, self.penalty_setting = self.resolve_setting(ctx.backbone.weights.kind)
        if self.teacher_setting == "pretrained":
            assert self.teacher_weights is not None
            self.teacher_record = load_teacher(self.model.teacher, teacher_file(self.teacher_weights, self.model_size))
        use_penalty = self.penalty_setting == "imagenette" and self.penalty_dir is not None
        self.penalty = penalty_files(self.penalty_dir) if use_penalty else None
        if self.penalty is not None:
            folder = Path(self.penalty_dir).expanduser().resolve()
            self.penalty_record = {"dir": str(folder), "images": len(self.penalty)}

    def _pdn(self, padding: bool) -> nn.Module:
        cls = (
            self.torch_model.SmallPatchDescriptionNetwork
            if self.model_size == "small"
            else self.torch_model.MediumPatchDescriptionNetwork
        )
        return cls(out_channels=self.teacher_out_channels, padding=padding)

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
                pdn = self._pdn(padding=True)
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
        self.model.teacher.load_state_dict(result["state_dict"])
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
        self.model.teacher.eval()
        mean, var = channel_mean_var(
            self.model.teacher(resize_images(images.to(self.ctx.device), self.size)) for _, images in train.batches(16)
        )
        std = torch.sqrt(var)
        self._set(self.model.mean_std, {"mean": mean.view(1, -1, 1, 1), "std": std.view(1, -1, 1, 1)})

    @staticmethod
    def _set(parameters: nn.ParameterDict, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            parameters[name] = nn.Parameter(value.detach().float().to(parameters[name].device), requires_grad=False)

    def losses(
        self, batch: torch.Tensor, penalty: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """anomalib's ``EfficientAdModel.compute_losses`` with the penalty optional: (L_ST, L_AE, L_STAE).

        Line for line the same computation and the same draws from the global generator
        (augmentation, dropout), so with a penalty image it equals anomalib's training forward.
        """
        model = self.model
        channels = model.teacher_out_channels
        _, distance_st = model.compute_student_teacher_distance(batch)
        distance_st = self.torch_model.reduce_tensor_elems(distance_st)
        d_hard = torch.quantile(distance_st, self.hard_quantile)
        loss_st = torch.mean(distance_st[distance_st >= d_hard])
        if penalty is not None:
            loss_st = loss_st + torch.mean(model.student(penalty)[:, :channels] ** 2)
        augmented = model.choose_random_aug_image(batch)
        ae_output = model.ae(augmented, batch.shape[-2:])
        with torch.no_grad():
            teacher_output = model._normalize_teacher(model.teacher(augmented))
        student_output = model.student(augmented)[:, channels:]
        loss_ae = torch.mean((teacher_output - ae_output) ** 2)
        loss_stae = torch.mean((ae_output - student_output) ** 2)
        return loss_st, loss_ae, loss_stae

    def _penalty_images(self) -> Iterator[torch.Tensor | None]:
        """One penalty image ``[1, 3, S, S]`` per step, or None forever when the penalty is off."""
        if self.penalty is None:
            yield from itertools.repeat(None)
            return
        pin = self.ctx.device.type == "cuda"
        stream = penalty_stream(
            self.penalty, self.size, self.penalty_grayscale, self.ctx.seed, self.penalty_workers, pin
        )
        for images in stream:
            yield images.to(self.ctx.device, non_blocking=True)

    def _train(self, train: ImageSet) -> dict[str, Any]:
        steps = self.steps if self.max_epochs is None else min(self.steps, self.max_epochs * len(train))
        parameters = [*self.model.student.parameters(), *self.model.ae.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = None
        if self.lr_decay_at is not None:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, max(1, int(self.lr_decay_at * steps)), gamma=0.1)
        images = train.images.to(self.ctx.device)
        stream = IndexStream(len(train), torch.Generator().manual_seed(self.ctx.seed))
        penalties = self._penalty_images()
        self.model.train()
        recent: list[tuple[float, float, float]] = []
        bar = tqdm(range(steps), desc="efficientad: train", leave=False, disable=not self.ctx.progress)
        for _ in bar:
            batch = resize_images(images[stream.take(1)].float().div_(255.0), self.size)
            loss_st, loss_ae, loss_stae = self.losses(batch, next(penalties))
            loss = loss_st + loss_ae + loss_stae
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            recent = [*recent[-99:], (loss_st.item(), loss_ae.item(), loss_stae.item())]
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        penalties.close()
        self.model.eval()
        means = np.mean(recent, axis=0) if recent else [math.nan] * 3
        return {
            "steps": steps,
            "epochs": round(steps / len(train), 2),
            "final_loss": {k: round(float(v), 6) for k, v in zip(("st", "ae", "stae"), means, strict=True)},
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
            map_st, map_ae = self.model.get_maps(batch, normalize=False)
            maps_st.append(map_st.flatten())
            maps_ae.append(map_ae.flatten())
        low, high = self.map_quantiles
        values = {}
        for name, maps in (("st", maps_st), ("ae", maps_ae)):
            flat = self.torch_model.reduce_tensor_elems(torch.cat(maps))
            values[f"qa_{name}"] = torch.quantile(flat, low)
            values[f"qb_{name}"] = torch.quantile(flat, high)
        self._set(self.model.quantiles, values)
        return {k: round(float(v), 8) for k, v in values.items()}

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        with no_downloads():
            if self.teacher_setting == "distilled":
                self._distil(train)
            self._teacher_mean_std(train)
            summary = self._train(train)
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
        output = self.model(resize_images(images, self.size))
        return Prediction(maps=output.anomaly_map[:, 0].float(), scores=output.pred_score.reshape(-1).float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model]

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "model_size": self.model_size,
            "teacher_out_channels": self.teacher_out_channels,
            "padding": self.padding,
            "pad_maps": self.pad_maps,
            "steps": self.steps,
            "max_epochs": self.max_epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "lr_decay_at": self.lr_decay_at,
            "batch_size": 1,  # anomalib requires it (EfficientAD paper)
            "hard_quantile": self.hard_quantile,
            "map_quantiles": list(self.map_quantiles),
            "input_size": getattr(self, "size", self.input_size),
            "teacher": self.teacher_record or {"source": "file" if self.teacher_weights else "distilled"},
            "penalty": self.penalty_record,
            "teacher_setting": self.teacher_setting,
            "penalty_setting": self.penalty_setting,
            "paper_setting": self.teacher_setting == "pretrained" and self.penalty_setting == "imagenette",
            "penalty_grayscale": self.penalty_grayscale,
        }
