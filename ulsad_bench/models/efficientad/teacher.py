"""EfficientAD's teacher, offline: loaded from a file or distilled from the harness's backbone.

anomalib's EfficientAd downloads the teacher when its Lightning module starts training; the
harness takes it from a configured file instead, or distils one.

EfficientAD's teacher is a patch description network (PDN) distilled from a pretrained
WideResNet-101 on ImageNet (Batzner et al., WACV 2024, Sec. 3.1 and the distillation
algorithm of its appendix). Either a file (``model.teacher_weights``: anomalib's
``pretrained_teacher_small.pth``, a state dict of the PDN) is loaded, or a teacher is
distilled here from the harness's configured backbone on the training images at hand
(:func:`distil_teacher`). The distillation follows the EfficientAD pretraining (as
re-implemented in nelson1425/EfficientAD ``pretraining.py``, one of the two code bases
anomalib's EfficientAd is based on) in everything but the data and the backbone:

- target: PatchCore's locally aware patch features (Roth et al. 2022) of the backbone's
  ``layer2`` and ``layer3`` for the image at twice the PDN's input size (512 for 256): each
  layer's 3 x 3 neighbourhoods, average-pooled along the flattened neighbourhood vector to
  1024 values (``adaptive_avg_pool1d``), deeper layers bilinearly resized to ``layer2``'s
  grid, the layers' vectors concatenated and average-pooled to the teacher's 384 channels
  (:func:`embed_patch_features`), then standardised per channel over the training images;
- student of the distillation: the PDN with padding (its output grid is the target's:
  64 x 64 for 256 px), trained with the mean squared error, Adam (lr 1e-4, weight decay
  1e-5), batches of 16, the same random grayscale (p = 0.1) for both inputs;
- the trained weights are loaded into anomalib's teacher, which runs without padding
  (as anomalib's teacher files are used).

Differences, by necessity: the training images of the job instead of ImageNet, the
configured backbone (the harness's default: Wide-ResNet-50-2) instead of WideResNet-101,
images upsampled from the job's size instead of read at 512 px, and a configurable number
of steps (the pretraining code: 60,000). The teacher does not depend on the run seed (its
own seed is a config value), so all seeds of a sweep share one teacher, as they would
share a downloaded one; it is cached with the frozen features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import rgb_to_grayscale
from tqdm.auto import tqdm

from ...data import ImageSet
from ..anomalib_adapter import teacher_download_info
from ..backbone import BackboneSpec, FeatureExtractor, WeightsNotFoundError, sha256_of
from ..settings import Count, LearningRate, Probability, Seed, Settings, WeightDecay


class TeacherWeightsNotFoundError(WeightsNotFoundError):
    """The configured EfficientAD teacher file is missing; the message says where to get it."""


@dataclass(frozen=True)
class DistillationConfig(Settings, group="model.distillation", model="efficientad"):
    """How a teacher is distilled when no teacher file is configured (module docstring):
    ``model.distillation.*``, each type declaring its range (:mod:`..settings`)."""

    layers: tuple[str, ...] = ("layer2", "layer3")  # PatchCore / EfficientAD pretraining
    steps: Count = 10000  # ours (the authors: 60,000 on ImageNet)
    batch_size: Count = 16  # EfficientAD pretraining
    lr: LearningRate = 1e-4  # EfficientAD pretraining (Adam)
    weight_decay: WeightDecay = 1e-5  # EfficientAD pretraining
    grayscale: Probability = 0.1  # EfficientAD pretraining: RandomGrayscale(0.1)
    patch_size: Count = 3  # PatchCore's neighbourhood
    layer_dim: Count = 1024  # PatchCore's per-layer dimension in the EfficientAD pretraining
    seed: Seed = 0  # independent of the run seed: one teacher for every seed

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillationConfig:
        values = dict(values)
        if "layers" in values:
            values["layers"] = tuple(values["layers"])
        return cls(**values)

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["layers"] = list(self.layers)
        return record


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[B, 3, H, W]`` to ``[B, 3, size, size]`` (antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class IndexStream:
    """Indices ``0..n-1`` in successive random permutations (epochs), taken a few at a time
    (a batch may span two epochs)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        if n <= 0:
            raise ValueError("no images to train on")
        self.n = n
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long)
        self.epochs = 0

    def take(self, count: int) -> torch.Tensor:
        while len(self.order) < count:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.generator)])
            self.epochs += 1
        taken, self.order = self.order[:count], self.order[count:]
        return taken


def channel_mean_var(feature_maps: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population variance over batches of ``[B, C, h, w]`` maps, streamed
    (sums and sums of squares in the maps' dtype): for the teacher's output statistics and the
    distillation targets."""
    total = total_sq = None
    count = 0
    for maps in feature_maps:
        sums, squares = maps.sum(dim=(0, 2, 3)), (maps**2).sum(dim=(0, 2, 3))
        total = sums if total is None else total + sums
        total_sq = squares if total_sq is None else total_sq + squares
        count += maps.shape[0] * maps.shape[2] * maps.shape[3]
    if total is None or total_sq is None:
        raise ValueError("channel statistics need at least one batch")
    mean = total / count
    return mean, total_sq / count - mean**2


def pool_channels(features: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool1d`` along the channels: ``[B, C, H, W] -> [B, size, H, W]``."""
    b, c, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    return F.adaptive_avg_pool1d(flat, size).view(b, h, w, size).permute(0, 3, 1, 2)


def embed_patch_features(
    features: list[torch.Tensor], out_channels: int, patch_size: int = 3, layer_dim: int = 1024
) -> torch.Tensor:
    """PatchCore's aggregation as the EfficientAD pretraining applies it: ``-> [B, out_channels, H0, W0]``.

    ``features``: backbone layers ``[B, C_l, H_l, W_l]``, the first one's grid ``H0 x W0`` being
    the output's. Each layer's ``patch_size x patch_size`` neighbourhoods (zero padded) are
    flattened channel-major and pooled to ``layer_dim`` values; deeper layers are resized
    bilinearly to the first grid; the layers' vectors are concatenated and pooled to
    ``out_channels``. The reference resizes the unfolded patches before pooling; pooling
    first is the same (both are linear, one along channels, one along space) and cheaper.
    """
    pooled: list[torch.Tensor] = []
    for layer in features:
        b, c, h, w = layer.shape
        patches = F.unfold(layer, patch_size, padding=patch_size // 2).view(b, c * patch_size**2, h, w)
        out = pool_channels(patches, layer_dim)
        if pooled and out.shape[-2:] != pooled[0].shape[-2:]:
            out = F.interpolate(out, size=pooled[0].shape[-2:], mode="bilinear", align_corners=False)
        pooled.append(out)
    return pool_channels(torch.cat(pooled, dim=1), out_channels)


class PatchEmbedding(nn.Module):
    """EfficientAD's distillation target from the harness's backbone (:func:`embed_patch_features`).

    ``forward(images [B, 3, S, S] in [0, 1]) -> [B, out_channels, S/4, S/4]``: the backbone sees
    the images at ``2 S``, as the pretraining's extractor sees 512 px for the PDN's 256 px.
    """

    def __init__(
        self, spec: BackboneSpec, layers: tuple[str, ...], out_channels: int, patch_size: int = 3, layer_dim: int = 1024
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(spec, list(layers))
        self.layers = list(layers)
        self.out_channels = int(out_channels)
        self.patch_size = int(patch_size)
        self.layer_dim = int(layer_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(resize_images(images, 2 * images.shape[-1]))
        return embed_patch_features(
            [features[layer] for layer in self.layers], self.out_channels, self.patch_size, self.layer_dim
        )


def _grayscale(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """RandomGrayscale per image of a batch ``[B, 3, H, W]``."""
    chosen = torch.rand(images.shape[0], generator=generator) < probability
    if not chosen.any():
        return images
    chosen = chosen.to(images.device).view(-1, 1, 1, 1)
    return torch.where(chosen, rgb_to_grayscale(images, num_output_channels=3), images)


def distil_teacher(
    pdn: nn.Module,
    train: ImageSet,
    spec: BackboneSpec,
    input_size: int,
    out_channels: int,
    config: DistillationConfig,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``pdn`` (a PDN built with padding) to reproduce the backbone's patch features.

    Returns:
        ``{"state_dict": the PDN's weights, "loss": mean loss of the last 100 steps}``.
    """
    embed = PatchEmbedding(spec, config.layers, out_channels, config.patch_size, config.layer_dim).to(device)

    # per-channel standardisation of the targets over the training images (the paper's distillation algorithm)
    mean, var = channel_mean_var(
        embed(resize_images(images.to(device), input_size)).double() for _, images in train.batches(config.batch_size)
    )
    std = var.clamp_min(1e-12).sqrt()
    mean, std = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)

    generator = torch.Generator().manual_seed(config.seed)
    stream = IndexStream(len(train), generator)
    pdn.to(device).train()
    optimizer = torch.optim.Adam(pdn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="efficientad: distil teacher", leave=False, disable=not progress)
    for _ in bar:
        batch = resize_images(train.float_images(stream.take(config.batch_size)).to(device), input_size)
        images = _grayscale(batch, config.grayscale, generator)
        target = (embed(images) - mean) / std
        prediction = pdn(images)
        if prediction.shape[-2:] != target.shape[-2:]:
            target = F.interpolate(target, size=prediction.shape[-2:], mode="bilinear", align_corners=False)
        loss = torch.mean((target - prediction) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    pdn.eval()
    final = sum(losses[-100:]) / max(len(losses[-100:]), 1)
    return {"state_dict": {k: v.detach().cpu() for k, v in pdn.state_dict().items()}, "loss": torch.tensor(final)}


def teacher_file(path: str, model_size: str) -> Path:
    """The configured teacher file, or an error that says where anomalib's teacher comes from."""
    file = Path(path).expanduser()
    if file.is_file():
        return file.resolve()
    name, url = teacher_download_info()
    raise TeacherWeightsNotFoundError(
        f"model.teacher_weights={path!r}: no such file ({file.resolve()}). EfficientAD's pretrained teacher is "
        f"pretrained_teacher_{model_size}.pth inside {name} ({url}). Nothing is downloaded at run time: "
        "download and extract it yourself and pass "
        f"model.teacher_weights=/path/to/pretrained_teacher_{model_size}.pth, or pass model.teacher_weights=null "
        "to distil a teacher from the configured backbone on the training images."
    )


def load_teacher(teacher: nn.Module, file: Path) -> dict[str, Any]:
    """Load a PDN state dict into ``teacher``; returns the record of where it came from."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        teacher.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"teacher file {file} does not fit EfficientAD's teacher: {err}") from err
    return {"source": "file", "file": str(file), "sha256": sha256_of(str(file))}
