"""The interface every model of the harness implements.

A model is built from its config (``conf/model/<name>.yaml``, ``_target_``), receives a
:class:`RunContext` in :meth:`AnomalyModel.setup`, learns from normal images in
:meth:`AnomalyModel.fit` (the validation split is for calibration only), then returns raw
anomaly maps and image scores in :meth:`AnomalyModel.predict`. Models never compute metrics
and never normalise scores for the metrics' sake: the harness scores every model the same
way (:mod:`ulsad_bench.metrics`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ImageSet
from ..features import FeatureCache
from .backbone import BackboneSpec
from .precision import autocast_dtype, check_precision
from .settings import Settings, settings_class_of


@dataclass
class Prediction:
    """What a model returns for a batch.

    Attributes:
        maps: float ``[B, H, W]`` anomaly maps at the input resolution (higher = more anomalous).
        scores: float ``[B]`` image anomaly scores.
        extras: optional named maps ``[B, H, W]`` for figures (e.g. ULSAD's ``local`` and
            ``global`` maps).
    """

    maps: torch.Tensor
    scores: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RunContext:
    """What the harness hands a model for one job (``backbone``: the network the model runs on,
    with its resolved weights)."""

    device: torch.device
    seed: int
    image_size: int
    backbone: BackboneSpec
    feature_cache: FeatureCache
    precision: str = "fp32"
    progress: bool = True
    log: Callable[[str], None] = print
    #: ``protocol.select_on_test``: called as ``on_epoch_end(model, epoch, epochs)`` after every
    #: training epoch (:meth:`AnomalyModel.end_epoch`); None otherwise
    on_epoch_end: Callable[[Any, int, int], None] | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 when ``precision=bf16`` (the model's policy, :mod:`.precision`; CUDA, or the CPU
        for checks); None is full precision."""
        return autocast_dtype(self.precision)


@dataclass(frozen=True)
class CacheFacts:
    """What the plan of a sweep knows of a job when it estimates the cache disk a model's jobs
    need (:meth:`AnomalyModel.cache_entries`): shapes and identities only, nothing is read.

    Attributes:
        train_id, val_id: identities of the training and validation images as the model sees them
            (jobs on the same images share them).
        n_train, n_val: their numbers of images.
        image_size: the side the model sees (after its centre crop).
        weights_policy: ``random``, ``imagenet`` or ``file``.
        reuses_trained: whether a trained model may be cached (not under ``protocol.select_on_test``).
    """

    train_id: str
    val_id: str
    n_train: int
    n_val: int
    image_size: int
    backbone: str
    weights_policy: str
    precision: str
    seed: int
    device_type: str
    reuses_trained: bool


@dataclass(frozen=True)
class CacheEntry:
    """One entry a job writes to the cache: its kind (as the plan prints it), an identity that
    jobs sharing the entry give alike, and its size in bytes."""

    kind: str
    identity: str
    nbytes: int


class AnomalyModel(ABC):
    """Base class of the harness's models (see module docstring)."""

    #: config name of the model (``model=<name>``)
    name: str = ""
    #: whether the model calibrates on a validation split (ULSAD's quantiles, EfficientAD's map
    #: normalisation); models that do not get no validation split and train on every training image
    #: (unless ``dataset.validation_for_all``)
    uses_validation: bool = True
    #: the smallest ``dataset.image_size`` the model's networks take, and the number it must be a
    #: multiple of; checked before a job reads any data (:meth:`check_image_size`)
    min_image_size: int = 1
    image_size_multiple: int = 1
    #: whether fitting the model changes process-wide state that slows later work in the same
    #: process (PatchCore: glibc's mmap threshold); ``make bench`` measures such a model last
    alters_process: bool = False

    @classmethod
    def settings_class(cls) -> type[Settings] | None:
        """The frozen dataclass declaring the model's settings (``model.*``: names, defaults, types
        and ranges), the one its module declares for the model's name (``class UlsadSettings(Settings,
        model="ulsad")``, :mod:`.settings`); None for a model that declares none."""
        return settings_class_of(cls.name)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise naming the setting, its value and what is allowed (``model.epochs=0: must be >= 1
        (ulsad)``) when ``settings`` (``model.*`` as the constructor takes them) cannot work:
        checked through :meth:`settings_class` before a job does any work, nothing built."""
        settings_class = cls.settings_class()
        if settings_class is not None:
            settings_class.check(settings)

    @classmethod
    def cache_entries(cls, settings: Mapping[str, Any], facts: CacheFacts) -> tuple[list[CacheEntry], list[str]]:
        """``(entries, notes)``: what a job of this model with ``settings`` (``model.*``) writes to
        the feature cache, from shapes only, and notes on what it leaves out and why; for
        ``make sweep ... PLAN=1``. Nothing by default."""
        return [], []

    def own_backbone(self) -> str | None:
        """The network a model uses instead of ``backbone=`` when its paper fixes one (DFR:
        vgg19; FastFlow: resnet18), or None. The job then resolves that network under
        ``backbone.weights``'s policy and needs no weights file for ``backbone=``; ``ctx.backbone``
        is the network used. :data:`~.backbone.NO_BACKBONE` (``"none"``) for a model that runs on
        no pretrained network (DRAEM): nothing is read, the record names ``none``."""
        return None

    def check_files(self, weights_policy: str = "imagenet") -> None:
        """Raise, naming the file and the setting, when a file the model reads besides the
        backbone weights (a teacher, penalty images) is missing; for a sweep's pre-flight. None
        by default."""
        return None

    def input_files(self, weights_policy: str = "imagenet") -> list[Path]:
        """The files the model reads besides the dataset and the backbone weights (a teacher,
        penalty images), those that exist: the data fingerprint's ``inputs`` group, so resume sees
        them change. None by default."""
        return []

    @classmethod
    def check_image_size(cls, size: int) -> None:
        """Raise ``ValueError`` naming ``dataset.image_size`` when the model cannot take ``size``."""
        step, low = cls.image_size_multiple, max(cls.min_image_size, cls.image_size_multiple)
        if size < low or size % step:
            allowed = f"a multiple of {step}, at least {low}" if step > 1 else f"at least {low}"
            raise ValueError(f"dataset.image_size={size} does not fit model={cls.name}: expected {allowed}")

    def setup(self, ctx: RunContext) -> None:
        """Build networks on ``ctx.device``; called once before :meth:`fit`."""
        self.ctx = ctx

    @abstractmethod
    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        """Learn from the normal images of ``train``; calibrate on ``val`` (normal images).

        Returns:
            a JSON-able summary for the record (epochs, final loss, ...).
        """

    @abstractmethod
    def predict(self, images: torch.Tensor) -> Prediction:
        """Anomaly maps and scores for images ``[B, 3, H, W]`` in [0, 1] on ``ctx.device``."""

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """Every value that determines the model's behaviour, for the record."""

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the job's precision, read at every call (:meth:`set_precision`)."""
        return self.ctx.autocast_dtype

    def set_precision(self, precision: str) -> None:
        """Switch a set-up model's precision policy (:mod:`.precision`): ``make bench`` measures
        one fitted model at fp32 and bf16."""
        self.ctx.precision = check_precision(precision)

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Models with training epochs call this after each (``epoch`` 1-based of ``epochs``): under
        ``protocol.select_on_test`` the harness scores the test set here (the model is put in eval
        mode; it must set its training mode again afterwards). Does nothing otherwise."""
        if self.ctx.on_epoch_end is not None:
            self.ctx.on_epoch_end(self, epoch, epochs)

    def inference_modules(self) -> list[nn.Module]:
        """The torch modules used by :meth:`predict` (put in eval mode before inference)."""
        return []

    def eval(self) -> None:
        for module in self.inference_modules():
            module.eval()
