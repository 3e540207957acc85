"""CFLOW through anomalib's ``CflowModel``: the backbone, the flows, the likelihood and the map are
anomalib 2.7's; the training of its Lightning module is re-created here (:class:`Cflow`).

Sources: anomalib 0.7's ``src/anomalib/models/cflow/config.yaml`` (the version the paper's
baselines ran; it decides every value) and anomalib 2.7's ``models/image/cflow/`` (the code).
anomalib is reached only through :mod:`ulsad_bench.models.anomalib_adapter.cflow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data import ImageSet
from ...environment import adam_implementation, seeded
from .. import anomalib_adapter
from ..anomalib_adapter import cflow as adapter
from ..backbone import SUPPORTED, Normalize, load_into
from ..base import AnomalyModel, Prediction, RunContext
from ..precision import autocast_forward
from ..settings import Count, LearningRate, Positive, Settings, adopt, as_record
from ..training import LossSums, train_epochs

MAP_NORMALISATIONS = ("training_max", "batch_max")


@dataclass(frozen=True)
class CflowSettings(Settings, model="cflow"):
    """CFLOW's settings (``conf/model/cflow.yaml``): anomalib 0.7's config, each value."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = ("layer2", "layer3", "layer4")
    decoder: str = "freia-cflow"
    condition_vector: Count = 128
    coupling_blocks: Count = 8
    clamp_alpha: Positive = 1.9
    fiber_batch_size: Count = 64
    permute_soft: bool = False
    lr: LearningRate = 1e-4
    batch_size: Count = 16
    epochs: Count = 50
    map_normalisation: str = "batch_max"
    map_batch_size: Count = 16

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.backbone not in SUPPORTED or self.backbone == "vgg19":
            raise ValueError(f"model.backbone={self.backbone!r}: CFLOW runs on a ResNet of {', '.join(SUPPORTED[:-1])}")
        if not self.layers or any(layer not in ("layer1", "layer2", "layer3", "layer4") for layer in self.layers):
            raise ValueError(f"model.layers={list(self.layers)}: expected ResNet stages layer1 ... layer4 (cflow)")
        if self.condition_vector % 4:
            raise ValueError(
                f"model.condition_vector={self.condition_vector}: must be a multiple of 4 (CFLOW's 2-D positional "
                "encoding: sine and cosine of each axis)"
            )
        if self.decoder != "freia-cflow":
            raise ValueError(f"model.decoder={self.decoder!r}: anomalib's CFLOW has one decoder, freia-cflow")
        if self.map_normalisation not in MAP_NORMALISATIONS:
            raise ValueError(
                f"model.map_normalisation={self.map_normalisation!r}: must be one of {', '.join(MAP_NORMALISATIONS)}"
            )


class LikelihoodReference(nn.Module):
    """Each layer's maximum per-dimension log-likelihood over the training images' fibres, ``maxima``
    ``[layers]`` (``map_normalisation=training_max``): a buffer, so that a snapshot of the model's
    state (``protocol.select_on_test`` keeps the best epoch's) holds the reference of that epoch."""

    maxima: torch.Tensor

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.register_buffer("maxima", torch.zeros(layers))


class Cflow(AnomalyModel):
    """CFLOW-AD (Gudovskiy, Ishizaka, Kozuka, WACV 2022) via ``anomalib.models.image.cflow``.

    Training re-creates anomalib 2.7's ``Cflow`` Lightning module (``lightning_model.py``), with
    anomalib 0.7's config values (Wide-ResNet-50-2 layers 2-4, 128-d condition, 8 coupling blocks,
    clamp 1.9, fibre batches of 64, lr 1e-4, batches of 16 images, 50 epochs):

    - ``configure_optimizers`` (L120-136): one Adam over every decoder's parameters;
    - ``training_step`` (L138-215), for each image batch and each layer in turn: the frozen
      encoder's features ``[B, C, h, w]`` and the positional encoding ``[P, h, w]`` as rows
      ``[B * h * w, C]`` and ``[B * h * w, P]``, one random permutation of the rows, then for each
      fibre batch of ``fiber_batch_size`` rows (the last one takes the remainder) a step of the
      optimiser on ``mean(-logsigmoid(log p(fibre) / C))``;
    - the training loader: shuffled, ``batch_size`` images, the last partial batch kept (0.7, 2.7).
      A batch must give every layer at least ``fiber_batch_size`` fibres (anomalib raises
      otherwise): checked before training, naming the settings.

    0.7's config stops early on the *test* set's pixel AUROC (patience 2); the harness's clean
    protocol trains the fixed ``epochs`` (0.7's ``max_epochs``, 50), and ``protocol.select_on_test``
    re-creates a selection on the test set through :meth:`end_epoch`. The backbone stays in eval
    mode throughout (anomalib's ``TimmFeatureExtractor`` sets it so in its forward). Its features
    are not cached across epochs: one forward pass per batch is small next to the batch's
    ``B * h * w / fiber_batch_size`` flow steps per layer (336 steps for 16 images at 256 px).

    Maps (``map_normalisation``): anomalib's ``AnomalyMapGenerator`` turns each layer's
    per-dimension log-likelihoods into ``exp(l - max l)``, the maximum taken over the *batch* being
    predicted, upsamples them bilinearly (``align_corners=True``), sums them and returns
    ``max - sum`` (again the batch's maximum): an image's map and score then depend on the images it
    is batched with (``batch_max``, the default: anomalib's eval forward exactly, over groups of
    ``map_batch_size`` consecutive test images, 16 as 0.7's ``dataset.eval_batch_size``, whatever the
    harness's ``eval_batch_size``; the test images in the harness's order). ``training_max``
    subtracts instead each layer's maximum over the training images' fibres, computed once after
    training (and before every test scoring under ``protocol.select_on_test``), and returns
    ``len(layers) - sum``: the same map for an image in any batch (a named deviation from anomalib).
    The score is the map's maximum.

    Input: images in [0, 1], ImageNet-normalised for the backbone (0.7's ``normalization: imagenet``).
    Backbone weights: the harness's (``backbone.weights`` under this model's own network,
    ``model.backbone``), copied into anomalib's timm network (built with ``pre_trained=False``).

    Precision (``precision=bf16``, :mod:`..precision`): only the frozen backbone runs under
    autocast and hands fp32 features on; the flows, the likelihoods, the loss and the maps are fp32.
    """

    name = "cflow"
    uses_validation = False  # nothing is calibrated on validation images (anomalib)
    min_image_size = 32
    image_size_multiple = 32  # layer4 downsamples 32 times

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`CflowSettings`'s (``conf/model/cflow.yaml``), checked there."""
        adopt(self, CflowSettings(**settings))
        self.has_reference = False  # set once the training fibres' maxima are (training_max)

    def own_backbone(self) -> str | None:
        return self.backbone

    # ------------------------------------------------------------------ set-up

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        with anomalib_adapter.no_downloads(), seeded(ctx.seed):  # built on the CPU; draws the flows' weights
            self.model = adapter.build_cflow(
                ctx.backbone.name,
                self.layers,
                self.fiber_batch_size,
                self.decoder,
                self.condition_vector,
                self.coupling_blocks,
                self.clamp_alpha,
                self.permute_soft,
            )
        load_into(adapter.cflow_timm_network(self.model), ctx.backbone)
        self.encoder = autocast_forward(adapter.cflow_encoder(self.model), self.autocast_dtype)
        self.decoders = adapter.cflow_decoders(self.model)
        self.model.to(ctx.device)
        self.normalize = Normalize().to(ctx.device)
        self.reference = LikelihoodReference(len(self.layers)).to(ctx.device)
        self.positions: dict[tuple[int, int], torch.Tensor] = {}

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's features of images ``[B, 3, H, W]`` in [0, 1], one ``[B, C, h, w]`` per layer."""
        activation = self.encoder(self.normalize(images))
        return [activation[layer].detach() for layer in self.layers]

    def _conditions(self, batch: int, height: int, width: int) -> torch.Tensor:
        """The positional encoding as rows ``[batch * h * w, P]``, in the order of the feature rows."""
        key = (height, width)
        if key not in self.positions:
            encoding = adapter.positional_encoding(self.condition_vector, height, width)  # [P, h, w]
            self.positions[key] = encoding.permute(1, 2, 0).reshape(height * width, -1).to(self.ctx.device)
        return self.positions[key].repeat(batch, 1)

    def _log_likelihood(self, decoder: nn.Module, fibers: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-likelihood ``[N]`` of fibres ``[N, C]`` (``get_logp / C``, anomalib)."""
        z, log_jac_det = adapter.decode(decoder, fibers, conditions)
        return adapter.log_likelihood(fibers.shape[1], z, log_jac_det) / fibers.shape[1]

    # ------------------------------------------------------------------ training

    def check_fibers(self, n_images: int, size: int) -> None:
        """Raise naming the settings when a training batch (the last, partial one included) of ``size``
        px images gives a layer fewer fibres than ``fiber_batch_size`` (anomalib's "Make sure we have
        enough fibers")."""
        smallest = n_images % self.batch_size or self.batch_size
        with torch.no_grad():
            features = self._features(torch.zeros(1, 3, size, size, device=self.ctx.device))
        for layer, feature in zip(self.layers, features, strict=True):
            fibers = smallest * feature.shape[-2] * feature.shape[-1]
            if fibers < self.fiber_batch_size:
                raise ValueError(
                    f"cflow: a training batch of {smallest} image(s) gives {layer} only {fibers} fibres "
                    f"({feature.shape[-2]} x {feature.shape[-1]} per image at dataset.image_size={size}), fewer than "
                    f"model.fiber_batch_size={self.fiber_batch_size}: lower model.fiber_batch_size, or change "
                    f"model.batch_size={self.batch_size} ({n_images} training images) or the image size"
                )

    def train_step(self, images: torch.Tensor, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, int]:
        """anomalib 2.7's ``training_step`` on images ``[B, 3, H, W]`` in [0, 1]: ``(summed fibre
        losses, fibres)``, the sum on the device."""
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        count = 0
        for decoder, features in zip(self.decoders, self._features(images), strict=True):
            batch, channels, height, width = features.shape
            rows = batch * height * width
            fibers = features.permute(0, 2, 3, 1).reshape(rows, channels)  # (b h w) c
            conditions = self._conditions(batch, height, width)
            order = torch.randperm(rows, device=images.device)
            steps = rows // self.fiber_batch_size
            for step in range(steps):
                end = (step + 1) * self.fiber_batch_size if step < steps - 1 else rows  # the last takes the rest
                chosen = order[step * self.fiber_batch_size : end]
                optimizer.zero_grad()
                log_prob = self._log_likelihood(decoder, fibers[chosen], conditions[chosen])
                loss = -F.logsigmoid(log_prob)
                loss.mean().backward()
                optimizer.step()
                total += loss.detach().sum()
                count += len(chosen)
        return total, count

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        if len(train) == 0:
            raise ValueError("cflow: no training images")
        self.check_fibers(len(train), train.size)
        device = self.ctx.device
        parameters = adapter.decoder_parameters(self.model)
        optimizer = torch.optim.Adam(parameters, lr=self.lr, **adam_implementation(device))
        generator = torch.Generator().manual_seed(self.ctx.seed)
        fibers_seen = [0]

        def run_epoch(epoch: int, sums: LossSums) -> None:
            for _, images in train.batches(self.batch_size, shuffle=True, generator=generator):
                total, count = self.train_step(images.to(device, non_blocking=True), optimizer)
                sums.add({"nll": total / count}, weight=count)  # the epoch's mean over fibres
                fibers_seen[0] += count

        with anomalib_adapter.no_downloads():
            log = train_epochs(
                self,
                self.epochs,
                run_epoch,
                self.decoders,
                ["nll"],
                hint=f"lr {self.lr}, fiber_batch_size {self.fiber_batch_size}",
                before_hook=lambda: self._set_reference(train),
            )
            reference = self._set_reference(train)  # (batch_max: none needed)
        losses = [epoch["nll"] for epoch in log.losses]
        return {
            "train_images": len(train),
            "epochs": self.epochs,
            "fibers_per_epoch": fibers_seen[0] // self.epochs,
            "loss_per_epoch": [round(v, 6) for v in losses],
            "final_loss": round(losses[-1], 6),
            "reference": [round(v, 6) for v in reference],
            "timing": {"epoch_s": log.epoch_s},
        }

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def log_likelihoods(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[int], list[int]]:
        """anomalib's eval forward up to its map: each layer's per-dimension log-likelihoods
        ``[B * h * w]`` (decoded in fibre batches of ``fiber_batch_size``, in order), heights, widths."""
        distribution, heights, widths = [], [], []
        for decoder, features in zip(self.decoders, self._features(images), strict=True):
            batch, channels, height, width = features.shape
            fibers = features.permute(0, 2, 3, 1).reshape(-1, channels)
            conditions = self._conditions(batch, height, width)
            step = self.fiber_batch_size
            chunks = [
                self._log_likelihood(decoder, fibers[start : start + step], conditions[start : start + step])
                for start in range(0, len(fibers), step)
            ]
            distribution.append(torch.cat(chunks))
            heights.append(height)
            widths.append(width)
        return distribution, heights, widths

    @torch.no_grad()
    def _set_reference(self, train: ImageSet) -> list[float]:
        """Each layer's maximum per-dimension log-likelihood over the training images' fibres (the
        reference of ``map_normalisation=training_max``; nothing for ``batch_max``)."""
        if self.map_normalisation != "training_max":
            return []
        for module in self.inference_modules():
            module.eval()
        maxima = torch.full((len(self.layers),), -torch.inf, device=self.ctx.device)
        for _, images in train.batches(self.batch_size):
            distribution, _, _ = self.log_likelihoods(images.to(self.ctx.device))
            maxima = torch.maximum(maxima, torch.stack([d.max() for d in distribution]))
        self.reference.maxima.copy_(maxima)
        self.has_reference = True
        return maxima.tolist()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        distribution, heights, widths = self.log_likelihoods(images)
        size = images.shape[-2:]
        if self.map_normalisation == "batch_max":  # anomalib's map over groups of map_batch_size images (0.7's batches)
            groups = []
            for first in range(0, len(images), self.map_batch_size):
                last = min(first + self.map_batch_size, len(images))
                part = [v[first * h * w : last * h * w] for v, h, w in zip(distribution, heights, widths, strict=True)]
                groups.append(adapter.batch_normalised_map(self.model, part, heights, widths, size))
            maps = torch.cat(groups)
        else:
            assert self.has_reference, "fit() first: map_normalisation=training_max needs the training fibres' maxima"
            maps = torch.full((len(images), *size), float(len(self.layers)), device=images.device)
            for index, (values, height, width) in enumerate(zip(distribution, heights, widths, strict=True)):
                probabilities = torch.exp(values - self.reference.maxima[index]).reshape(-1, 1, height, width)
                maps -= F.interpolate(probabilities, size=size, mode="bilinear", align_corners=True)[:, 0]
        return Prediction(maps=maps.float(), scores=maps.amax(dim=(-2, -1)).float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.model, self.normalize, self.reference]

    def hyperparameters(self) -> dict[str, Any]:
        """Every setting (the backbone as resolved), and the fixed values of anomalib's training."""
        return {
            **as_record(self, CflowSettings, backbone=self.ctx.backbone.name),
            "optimizer": "Adam over all decoders (anomalib 2.7 configure_optimizers)",
            "loss": "mean(-logsigmoid(log p / C)) per fibre batch",
            "input": "ImageNet-normalised",
            "score": "max of the map",
        }
