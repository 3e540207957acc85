"""The one source of backbone networks and their weights, shared by every model.

Weights (``backbone.weights``) are resolved offline, never downloaded, from one folder,
:func:`weights_dir`: ``$TORCH_HOME/hub/checkpoints`` when ``TORCH_HOME`` is set, else
``~/.cache/torch/hub/checkpoints`` (whatever ``XDG_CACHE_HOME`` says, so that ``make`` and a
plain ``python`` look in the same place):

``imagenet``
    The ImageNet weights the paper's code used: timm's default pretrained tag, which the ULSAD
    authors' code and anomalib (0.x and 2.x) load through ``timm.create_model(name,
    pretrained=True)`` (:data:`TIMM_DEFAULT`; e.g. ``wide_resnet50_2.racm_in1k``, file
    ``wide_resnet50_racm-8234f177.pth``). For VGG19, torchvision's file, as DFR's authors.
``torchvision``
    torchvision's ``IMAGENET1K_V1`` files (e.g. ``wide_resnet50_2-95faca4d.pth``).
    When the file is missing the run stops with a message naming the file, its URL and the
    folder to put it in. A known file is verified: its sha256 must start with the hash in its
    published name (as ``torch.hub`` checks); a mismatch is refused unless ``backbone.verify=false``,
    which records the weights as unverified (marked in tables).
``random``
    Random initialisation, drawn from ``backbone.random_init_seed`` (not the run seed, so
    that every seed of a sweep sees the same frozen backbone and frozen features can be
    reused). Must be asked for explicitly; records and tables mark it.
a file path
    A state dict (``.pth``) with torchvision's parameter names (timm's ResNets share them).

The resolved weights are described by :class:`WeightsInfo` (policy, file, sha256), which every
record stores so that all models of a comparison can be checked to share one weights file.
"""

from __future__ import annotations

import hashlib
import os
import re
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

    policy: str  # what backbone.weights asked for: "imagenet" | "torchvision" | "random" | "file"
    file: str | None = None
    sha256: str | None = None
    random_init_seed: int | None = None
    source: str | None = None  # e.g. "timm wide_resnet50_2.racm_in1k", "torchvision IMAGENET1K_V1"
    verified: bool | None = None  # the sha256 matches the published file's (None: nothing to check)

    @property
    def identity(self) -> str:
        """A short string that changes whenever the weights do (keys feature caches)."""
        if self.policy == "random":
            return f"random-seed{self.random_init_seed}"
        return f"{self.policy}-{self.sha256}"

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


#: The weights ``timm.create_model(name, pretrained=True)`` loads in the timm the paper ran: the
#: ULSAD authors' ``requirements.txt`` (L13) and anomalib 0.7's (``requirements/base.txt`` L13) both
#: allow ``timm>=0.5.4,<=0.6.12``, whose ``timm/models/resnet.py`` default configs name these files
#: (0.5.4 and 0.6.12 agree). timm 1.0 keeps them as the default tags (``wide_resnet50_2.racm_in1k``
#: ...), except for resnet18, whose 1.0 default is ``a1_in1k`` (``tests/test_backbone.py`` checks
#: this against the installed timm). Their parameter names are torchvision's.
TIMM_DEFAULT = {
    "wide_resnet50_2": (
        "wide_resnet50_2.racm_in1k",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/wide_resnet50_racm-8234f177.pth",
    ),
    "wide_resnet101_2": (
        "wide_resnet101_2.tv_in1k",
        "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth",
    ),
    "resnet18": ("resnet18.tv_in1k", "https://download.pytorch.org/models/resnet18-5c106cde.pth"),
    "resnet50": (
        "resnet50.a1_in1k",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth",
    ),
    "resnet152": (
        "resnet152.a1h_in1k",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/resnet152_a1h-dc400468.pth",
    ),
}
PUBLISHED_HASH = re.compile(r"-([0-9a-f]{8,64})\.pth$")


class WeightsVerificationError(ValueError):
    """A weights file at a published name does not have the published content."""


def weights_dir() -> Path:
    """The one folder pretrained weights are read from (see the module docstring)."""
    home = os.environ.get("TORCH_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "torch") / "hub" / "checkpoints"


def torchvision_url(name: str) -> str:
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1.url


def published_weights(name: str, policy: str) -> tuple[str, str]:
    """``(url, source)`` of the published file that ``backbone.weights=<policy>`` means for ``name``."""
    if policy == "imagenet" and name in TIMM_DEFAULT:
        tag, url = TIMM_DEFAULT[name]
        return url, f"timm {tag} (timm <= 0.6.12's default weights, as the authors' code and anomalib 0.7)"
    return torchvision_url(name), "torchvision IMAGENET1K_V1"


def _published(name: str, policy: str, verify: bool) -> WeightsInfo:
    url, source = published_weights(name, policy)
    path = weights_dir() / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{'ImageNet' if policy == 'imagenet' else 'torchvision'} weights for {name} ({source}) not found: "
            f"{path.name} is not in {path.parent}. Nothing is downloaded at run time: download {url} and put it "
            f"at {path} (the folder is $TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints without "
            f"TORCH_HOME), or pass backbone.weights=/path/to/{path.name}. To run without pretrained weights, "
            "pass backbone.weights=random explicitly (records and tables will say so)."
        )
    sha256 = sha256_of(str(path))
    expected = PUBLISHED_HASH.search(path.name)
    verified = None if expected is None else sha256.startswith(expected.group(1))
    if verified is False and verify:
        raise WeightsVerificationError(
            f"weights file {path} is not the published {path.name}: its sha256 {sha256} does not start with "
            f"{expected.group(1) if expected else ''}. Replace it with {url}, or pass backbone.verify=false to use "
            "it anyway (records and tables will mark the weights as unverified)."
        )
    return WeightsInfo(policy=policy, file=str(path), sha256=sha256, source=source, verified=verified)


def resolve_weights(name: str, weights: str, random_init_seed: int = 0, verify: bool = True) -> WeightsInfo:
    """Find the weights a config asks for, without touching the network."""
    if name not in SUPPORTED:
        raise ValueError(f"unknown backbone {name!r}; supported: {', '.join(SUPPORTED)}")
    if weights == "random":
        return WeightsInfo(policy="random", random_init_seed=int(random_init_seed))
    if weights in ("imagenet", "torchvision"):
        return _published(name, weights, verify)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"backbone.weights={weights!r} is neither 'imagenet', 'torchvision', 'random' nor an existing file; "
            f"expected a torchvision state dict (.pth) for {name} at {path}"
        )
    return WeightsInfo(policy="file", file=str(path.resolve()), sha256=sha256_of(str(path.resolve())))


#: ``backbone.weights`` values that name a policy rather than a file
WEIGHT_POLICIES = ("imagenet", "torchvision", "random")
#: what :meth:`~ulsad_bench.models.base.AnomalyModel.own_backbone` returns for a model that runs on no
#: pretrained network (DRAEM: both its networks are trained from scratch); records name it as the backbone
NO_BACKBONE = "none"


def no_backbone(weights: str, random_init_seed: int = 0) -> BackboneSpec:
    """The "backbone" of a model without a pretrained network: nothing is read. Its weights policy is
    ``none``, or ``random`` when ``backbone.weights=random`` asked for random initialisation (the
    synthetic set's setting, under which a model's substitutes count as consistent, as EfficientAD's)."""
    if weights == "random":
        return BackboneSpec(NO_BACKBONE, WeightsInfo(policy="random", random_init_seed=int(random_init_seed)))
    return BackboneSpec(NO_BACKBONE, WeightsInfo(policy=NO_BACKBONE, source="no pretrained network"))


def resolve_backbone(
    configured: str, weights: str, own: str | None = None, random_init_seed: int = 0, verify: bool = True
) -> BackboneSpec:
    """The network a job runs on, with its weights: resolved here once per job, for every model.

    ``configured``: ``backbone.name``; ``weights``: ``backbone.weights`` (a policy of
    :data:`WEIGHT_POLICIES` or a file). ``own``: the network a model uses instead of the
    configured one (DFR: vgg19, :meth:`~ulsad_bench.models.base.AnomalyModel.own_backbone`),
    which gets the same policy; a weights *file* belongs to the configured backbone only.
    """
    if own == NO_BACKBONE:
        return no_backbone(weights, random_init_seed)
    name = own or configured
    if name != configured and weights not in WEIGHT_POLICIES:
        raise ValueError(
            f"backbone.weights is a file for {configured}; this model runs on {name}, which needs its own: "
            "use backbone.weights=imagenet (torch cache) or random"
        )
    return BackboneSpec(name, resolve_weights(name, weights, random_init_seed, verify))


def load_state_dict(info: WeightsInfo) -> dict[str, torch.Tensor] | None:
    """The state dict of file-based weights (None for random initialisation)."""
    if info.policy == "random":
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
    if info.policy == "random":
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
    if spec.weights.policy == "random":
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
