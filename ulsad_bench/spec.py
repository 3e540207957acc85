"""A job's specification: every setting its stages read, typed and validated once.

:meth:`JobSpec.from_config` reads a composed config (``conf/config.yaml`` with its groups and
overrides) and checks every setting a job can check before it reads data, each error naming the
setting and what is allowed: the names that become the run folder's parts (plain names,
:func:`ulsad_bench.config.plain_name`), the model's settings through its settings class (each
numeric one within its declared range, :mod:`ulsad_bench.models.settings`), ``profile.*`` and the
other numeric settings (:data:`TOP_LEVEL_SETTINGS`). The stages receive the spec, never the raw
config: the resume decision (:mod:`ulsad_bench.resume`), the job's preparation and run
(:mod:`ulsad_bench.runner`), its record, the plan of a sweep (:mod:`ulsad_bench.plan`) and
``make bench``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from .config import check_folder_names
from .data import Splits, build_splits
from .data.content import check_source_keys
from .data.sample import check_resize
from .metrics import check_pro_limits
from .models.backbone import WEIGHT_POLICIES
from .models.base import AnomalyModel
from .models.precision import check_precision
from .models.settings import Count, CountOrNone, Fraction, Positive, Seed, Settings, check_value
from .protocol import Protocol
from .records import config_hash, resume_mode

SEED_RANGE = 2**32
#: keys of ``model.*`` that are not the model's constructor arguments
MODEL_KEYS_NOT_SETTINGS = ("_target_", "name", "center_crop")
#: numeric settings the spec reads besides the model's, ``profile.*`` and ``seed`` /
#: ``dataset.image_size`` (checked below), each with its declared range
TOP_LEVEL_SETTINGS: dict[str, Any] = {
    "eval_batch_size": Count,
    "fpr_limit": Fraction,
    "save_maps_per_defect": CountOrNone,
    "cache.max_gb": Positive,
    "backbone.random_init_seed": Seed,
}


def model_class_of(target: str) -> type[AnomalyModel]:
    """The class ``model._target_`` names, checked to be an :class:`AnomalyModel`."""
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModel)):
        raise TypeError(f"model._target_={target} is not an AnomalyModel")
    return cls


def model_from_config(model_cfg: Mapping[str, Any]) -> AnomalyModel:
    """A model built from its config (``conf/model/<name>.yaml``): ``_target_`` is the class, every
    key but ``_target_``, ``name`` and ``center_crop`` (a data setting applied by the job) an
    argument of its constructor."""
    settings = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else model_cfg
    assert isinstance(settings, Mapping)
    cls = model_class_of(str(settings["_target_"]))
    return cls(**{k: v for k, v in settings.items() if k not in MODEL_KEYS_NOT_SETTINGS})


def center_crop_pixels(fraction: Any, image_size: int) -> int | None:
    """The crop in pixels that ``model.center_crop`` (a fraction of ``dataset.image_size``, or
    null) asks for: anomalib 0.7's PatchCore config resizes to 256 and centre-crops 224, i.e.
    0.875; null: no crop."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"model.center_crop={fraction!r}: expected null or a fraction in (0, 1] of dataset.image_size")
    return round(float(fraction) * image_size)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_RANGE:
        raise ValueError(f"seed={value!r}: expected an integer in [0, 2^32) = [0, {SEED_RANGE - 1}]")
    return value


def _image_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"dataset.image_size={value!r}: expected a positive integer (pixels)")
    return value


@dataclass(frozen=True)
class DataSpec:
    """The data a job reads and how its model sees it.

    Attributes:
        dataset: the ``dataset`` group as composed (read-only).
        image_size: ``dataset.image_size``; ``model_image_size``: after the model's centre crop.
        center_crop: the crop in pixels (``model.center_crop``), None for none.
        uses_validation: whether the model calibrates on a validation split.
        val_from_test: ``protocol.quantiles_from_test``: the validation split is made of test images.
        source_keys: ``cache.source_keys``, how the caches identify source files (:mod:`ulsad_bench.data.content`).
        threshold_images: whether the job also reads the images of SegF1's segmentation threshold
            (``metrics.seg_f1``, :func:`ulsad_bench.data.splits.threshold_split`).
    """

    dataset: DictConfig
    image_size: int
    resize: str
    center_crop: int | None
    model_image_size: int
    uses_validation: bool
    val_from_test: bool
    cache_dir: Path
    decoded_images: bool
    cache_max_bytes: int
    source_keys: str = "content"
    threshold_images: bool = False

    def splits(self) -> Splits:
        """The category's splits as this job lists them (no validation split for a model that uses
        none, :func:`ulsad_bench.data.build_splits`); ``protocol.quantiles_from_test`` keeps every
        training image (its validation split is then made of test images,
        :func:`ulsad_bench.protocol.apply_to_splits`)."""
        dataset = self.dataset
        if self.val_from_test:
            dataset = OmegaConf.merge(dataset, {"val_split": "test_set"})
        return build_splits(
            dataset, self.cache_dir, uses_validation=self.uses_validation, threshold=self.threshold_images
        )

    @property
    def listing_key(self) -> str:
        """What :meth:`splits` depends on: jobs with the same key list the same splits."""
        content = OmegaConf.to_container(self.dataset, resolve=True)
        dataset = sorted(content.items()) if isinstance(content, dict) else content
        return repr((dataset, str(self.cache_dir), self.threshold_images))


@dataclass(frozen=True)
class BackboneSettings:
    """``backbone.*``: the network's name and its weights policy (resolved per job by
    :func:`ulsad_bench.models.backbone.resolve_backbone`)."""

    name: str
    weights: str
    random_init_seed: int
    verify: bool


@dataclass(frozen=True)
class ProfileSpec(Settings, group="profile"):
    """``profile.*``: the efficiency protocol (:mod:`ulsad_bench.profiling`), each number's type
    declaring its range (:mod:`ulsad_bench.models.settings`); ``latency_calls=0``: no batch-1
    latency measured."""

    enabled: bool
    batch_size: Count
    warmup_batches: CountOrNone
    timed_batches: CountOrNone
    latency_calls: CountOrNone

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.enabled and self.timed_batches < 1:
            raise ValueError(f"profile.timed_batches={self.timed_batches}: must be >= 1 when profile.enabled=true")

    @classmethod
    def from_config(cls, profile: Any) -> ProfileSpec:
        """``profile.*`` of a composed config, checked."""
        return cls(
            enabled=profile.enabled,
            batch_size=profile.batch_size,
            warmup_batches=profile.warmup_batches,
            timed_batches=profile.timed_batches,
            latency_calls=profile.get("latency_calls", 0),
        )


@dataclass(frozen=True)
class MetricSettings:
    """``metrics.*``: AU-PRO's further FPR limits and whether SegF1 is scored (:mod:`ulsad_bench.metrics`).

    Attributes:
        pro_limits: ``metrics.pro_limits``, each in (0, 1] (:func:`~ulsad_bench.metrics.check_pro_limits`);
            the one equal to ``fpr_limit`` is the record's ``aupro``, the others ``aupro_<limit>``.
        seg_f1: ``metrics.seg_f1``: SegF1 at the validation threshold (:func:`~ulsad_bench.metrics.seg_f1`).
    """

    pro_limits: tuple[float, ...]
    seg_f1: bool

    @classmethod
    def from_config(cls, cfg: DictConfig, fpr_limit: float) -> MetricSettings:
        """``metrics.*`` of a composed config, checked (a config without the group: AU-PRO at
        ``fpr_limit`` only, no SegF1)."""
        limits = OmegaConf.select(cfg, "metrics.pro_limits", default=[fpr_limit])
        if OmegaConf.is_config(limits):
            limits = OmegaConf.to_container(limits, resolve=True)
        seg_f1 = OmegaConf.select(cfg, "metrics.seg_f1", default=False)
        if not isinstance(seg_f1, bool):
            raise ValueError(f"metrics.seg_f1={seg_f1!r}: expected true or false")
        return cls(check_pro_limits(limits), seg_f1)


def top_level_settings(cfg: DictConfig) -> dict[str, Any]:
    """:data:`TOP_LEVEL_SETTINGS`' values in ``cfg``, each checked against its range."""
    return {name: check_value(name, OmegaConf.select(cfg, name), kind) for name, kind in TOP_LEVEL_SETTINGS.items()}


@dataclass(frozen=True)
class JobSpec:
    """One job (model x dataset category x seed) as every stage reads it (module docstring).

    ``config`` is the resolved config, as the record stores it; ``config_hash`` its hash over the
    result keys (:func:`ulsad_bench.records.config_hash`).
    """

    config: Mapping[str, Any]
    config_hash: str
    model: str
    variant: str | None
    dataset: str
    category: str
    seed: int
    model_class: type[AnomalyModel]
    model_settings: Mapping[str, Any]
    backbone: BackboneSettings
    data: DataSpec
    protocol: Protocol
    device: str
    device_type: str
    precision: str
    deterministic: bool
    eval_batch_size: int
    fpr_limit: float
    metrics: MetricSettings
    feature_cache: bool
    profile: ProfileSpec
    resume: str
    progress: bool
    fail_fast: bool
    save_maps_per_defect: int
    logger: Mapping[str, Any]
    output_root: Path

    @classmethod
    def from_config(cls, cfg: DictConfig) -> JobSpec:
        """The spec of the job ``cfg`` composes; raises ``ValueError`` / ``TypeError`` naming the
        setting when one cannot work (before any data is read, module docstring)."""
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        seed = _seed(cfg.seed)
        check_folder_names(cfg)
        image_size = _image_size(cfg.dataset.image_size)
        model_class = model_class_of(str(cfg.model._target_))
        model_settings = {k: v for k, v in config["model"].items() if k not in MODEL_KEYS_NOT_SETTINGS}
        model_class.check_settings(model_settings)
        numbers = top_level_settings(cfg)
        profile = ProfileSpec.from_config(cfg.profile)
        crop = center_crop_pixels(cfg.model.get("center_crop"), image_size)
        model_image_size = crop if crop is not None else image_size
        model_class.check_image_size(model_image_size)
        protocol = Protocol.from_config(cfg)
        metrics = MetricSettings.from_config(cfg, numbers["fpr_limit"])
        cache = cfg.cache
        data = DataSpec(
            dataset=cfg.dataset,
            image_size=image_size,
            resize=check_resize(str(cfg.dataset.get("resize", "cv2_linear"))),
            center_crop=crop,
            model_image_size=model_image_size,
            uses_validation=model_class.uses_validation,
            val_from_test=protocol.quantiles_from_test,
            cache_dir=Path(str(cfg.cache_dir)),
            decoded_images=bool(cache.get("decoded_images", False)),
            cache_max_bytes=int(numbers["cache.max_gb"] * 2**30),
            source_keys=check_source_keys(str(cache.get("source_keys", "content"))),
            threshold_images=metrics.seg_f1,
        )
        return cls(
            config=config,
            config_hash=config_hash(config),
            model=str(cfg.model.name),
            variant=None if cfg.get("variant") is None else str(cfg.get("variant")),
            dataset=str(cfg.dataset.name),
            category=str(cfg.dataset.category),
            seed=seed,
            model_class=model_class,
            model_settings=model_settings,
            backbone=BackboneSettings(
                str(cfg.backbone.name),
                str(cfg.backbone.weights),
                numbers["backbone.random_init_seed"],
                bool(cfg.backbone.get("verify", True)),
            ),
            data=data,
            protocol=protocol,
            device=str(cfg.device),
            device_type=str(config.get("device_type", cfg.device)),
            precision=check_precision(str(cfg.precision)),
            deterministic=bool(cfg.deterministic),
            eval_batch_size=numbers["eval_batch_size"],
            fpr_limit=numbers["fpr_limit"],
            metrics=metrics,
            feature_cache=bool(cfg.get("feature_cache", True)),
            profile=profile,
            resume=resume_mode(cfg.get("resume", "strict")),
            progress=bool(cfg.progress),
            fail_fast=bool(cfg.get("fail_fast", False)),
            save_maps_per_defect=numbers["save_maps_per_defect"],
            logger=config.get("logger") or {},
            output_root=Path(str(cfg.output_root)),
        )

    def input_files(self) -> tuple[Path, ...]:
        """The files the job reads besides the dataset, for the data fingerprint: the model's own
        (:meth:`~ulsad_bench.models.base.AnomalyModel.input_files`: EfficientAD's teacher and
        penalty images) and a backbone weights file named by ``backbone.weights`` (the published
        weights are verified against their known SHA-256 instead). Those that exist, nothing read."""
        weights = self.backbone.weights
        policy = weights if weights in WEIGHT_POLICIES else "file"
        files = list(self.build_model().input_files(policy))
        if policy == "file" and Path(weights).expanduser().is_file():
            files.append(Path(weights).expanduser().resolve())
        return tuple(files)

    def build_model(self) -> AnomalyModel:
        """The model, built from ``model.*`` (every key but ``_target_``, ``name`` and
        ``center_crop``, a data setting applied by the job)."""
        return self.model_class(**self.model_settings)
