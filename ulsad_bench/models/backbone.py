"""The one source of backbone networks and their weights, shared by every model.

Weights (``backbone.weights``) are resolved offline, never downloaded:

``imagenet``
    torchvision's ImageNet weights (``IMAGENET1K_V1``) read from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/<file>``, by default ``~/.cache/torch/hub/checkpoints``).
    When the file is missing the run stops with a message naming the file, its URL and the
    folder to put it in.
``random``
    Random initialisation, drawn from ``backbone.random_init_seed`` (not the run seed, so
    that every seed of a sweep sees the same frozen backbone and frozen features can be
    reused). Must be asked for explicitly; records and tables mark it.
a file path
    A state dict (``.pth``) with torchvision's parameter names (timm's ResNets share them).

The resolved weights are described by :class:`WeightsInfo` (kind, file, sha256), which every
record stores so that all models of a comparison can be checked to share one weights file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED = ("wide_resnet50_2", "wide_resnet101_2", "resnet18", "resnet50", "resnet152", "vgg19")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on disk; the message says where to put them."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from."""

    kind: str  # "imagenet" | "random" | "file"
    file: str | None = None
    sha256: str | None = None
    random_init_seed: int | None = None

    @property
    def identity(self) -> str:
        """A short string that changes whenever the weights do (keys feature caches)."""
        if self.kind == "random":
            return f"random-seed{self.random_init_seed}"
        return f"{self.kind}-{self.sha256}"

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone architecture together with its resolved weights."""

    name: str
    weights: WeightsInfo

    def build(self) -> nn.Module:
        """A fresh torchvision network with these weights, frozen and in eval mode."""
        return build_network(self.name, self.weights)


@lru_cache(maxsize=16)
def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_url(name: str) -> str:
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1.url


def imagenet_cache_path(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / imagenet_url(name).rsplit("/", 1)[-1]


def resolve_weights(name: str, weights: str, random_init_seed: int = 0) -> WeightsInfo:
    """Find the weights a config asks for, without touching the network."""
    if name not in SUPPORTED:
        raise ValueError(f"unknown backbone {name!r}; supported: {', '.join(SUPPORTED)}")
    if weights == "random":
        return WeightsInfo(kind="random", random_init_seed=int(random_init_seed))
    if weights == "imagenet":
        path = imagenet_cache_path(name)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {name} not found at {path}. Nothing is downloaded at run time: "
                f"download {imagenet_url(name)} and put it at {path} (the folder follows $TORCH_HOME), "
                f"or pass backbone.weights=/path/to/{path.name}. To run without pretrained weights, "
                "pass backbone.weights=random explicitly (records and tables will say so)."
            )
        return WeightsInfo(kind="imagenet", file=str(path), sha256=sha256_of(str(path)))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"backbone.weights={weights!r} is neither 'imagenet', 'random' nor an existing file; "
            f"expected a torchvision state dict (.pth) for {name} at {path}"
        )
    return WeightsInfo(kind="file", file=str(path.resolve()), sha256=sha256_of(str(path.resolve())))


def load_state_dict(info: WeightsInfo) -> dict[str, torch.Tensor] | None:
    """The state dict of file-based weights (None for random initialisation)."""
    if info.kind == "random":
        return None
    assert info.file is not None
    state = torch.load(info.file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {info.file}: expected a state dict, got {type(state).__name__}")
    return state


def build_network(name: str, info: WeightsInfo) -> nn.Module:
    """A torchvision network with the given weights, frozen, in eval mode."""
    if info.kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(info.random_init_seed or 0))
            network = torchvision.models.get_model(name, weights=None)
    else:
        network = torchvision.models.get_model(name, weights=None)
        state = load_state_dict(info)
        try:
            missing, unexpected = network.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"weights file {info.file} does not fit {name}: {err}") from err
        if missing or unexpected:
            raise ValueError(
                f"weights file {info.file} does not fit {name}: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}; expected torchvision parameter names"
            )
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def load_into(module: nn.Module, spec: BackboneSpec, ignore_prefixes: tuple[str, ...] = ("fc.",)) -> None:
    """Copy the shared backbone weights into another implementation of the same network.

    Used for anomalib's timm feature extractors, whose ResNet parameter names match
    torchvision's. Every parameter of ``module`` must be covered.
    """
    if spec.weights.kind == "random":
        source = build_network(spec.name, spec.weights).state_dict()
    else:
        source = load_state_dict(spec.weights)
    assert source is not None
    state = {k: v for k, v in source.items() if not k.startswith(ignore_prefixes)}
    missing, _unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"backbone weights for {spec.name} do not cover {list(missing)[:5]}")


class Normalize(nn.Module):
    """ImageNet normalisation of images in [0, 1]: ``[B, 3, H, W] -> [B, 3, H, W]``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class FeatureExtractor(nn.Module):
    """Frozen backbone returning named intermediate layers of ImageNet-normalised input.

    ``forward(images [B, 3, H, W] in [0, 1]) -> {layer: [B, C_layer, H_layer, W_layer]}``.
    Layers are torchvision node names (``layer2``, ``features.3``, ...); computation stops at
    the deepest requested layer.
    """

    def __init__(self, spec: BackboneSpec, layers: list[str]) -> None:
        super().__init__()
        self.spec = spec
        self.layers = list(layers)
        self.normalize = Normalize()
        self.body = create_feature_extractor(spec.build(), return_nodes={layer: layer for layer in self.layers})
        self.body.eval()
        for parameter in self.body.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:  # frozen: always in eval mode
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(self.normalize(images))
