"""One job: check settings -> resume check -> lock -> prepare -> fit -> predict -> metrics -> record.

:func:`prepare` builds what a job works on (a :class:`Job`: device, backbone and weights, data
as the model sees it, the model set up); :func:`run`, ``make bench`` and ``make demo`` (through
``run.py``) all build their jobs with it. :func:`run` is a plain function of a composed config
(``run.py`` is only its Hydra entry point), so tests and scripts call it directly. Whatever
happens inside, a record is written atomically: status ``ok`` with metrics, or ``failed`` with
the error. The job's files are made in a fresh ``attempts/`` folder and moved into the run
folder only with an ok record, so a failed attempt never replaces an ok record or leaves its
files beside another record.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .artifacts import JOB_FILES, MapPreview, choose_preview, write_maps, write_predictions
from .data import LOGICAL, DatasetError, ImageSet, Splits, build_splits, load_image_set
from .data.channels import DEFECTS_CONFIG, load_channels
from .data.decoded import DecodedCache
from .data.sample import check_resize
from .environment import describe_device, resolve_device, seed_everything, versions
from .features import FeatureCache
from .joblock import JobLock, describe_holder
from .metrics import evaluate
from .models.backbone import BackboneSpec, resolve_backbone
from .models.base import AnomalyModel, Prediction, RunContext
from .outcomes import write_outcome
from .profiling import profile_inference
from .protocol import EpochSelection, Protocol, apply_to_splits
from .records import (
    ATTEMPTS_DIR,
    RECORD_NAME,
    config_hash,
    inspect_record,
    new_attempt_dir,
    resume_check,
    resume_mode,
    summary_line,
    write_record,
)

log = logging.getLogger("ulsad_bench")


def build_model(model_cfg: DictConfig) -> AnomalyModel:
    """Instantiate ``model_cfg._target_`` with every other key except ``name`` as arguments."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(kwargs, dict)
    target = kwargs.pop("_target_")
    kwargs.pop("name", None)
    kwargs.pop("center_crop", None)  # a data setting of the model, applied by the runner
    model = get_class(target)(**kwargs)
    if not isinstance(model, AnomalyModel):
        raise TypeError(f"{target} is not an AnomalyModel")
    return model


@torch.inference_mode()
def predict_all(
    model: AnomalyModel, test: ImageSet, device: torch.device, batch_size: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Maps ``[N, S, S]`` (float32, brought to the image size bilinearly when a model returns
    another size, the same way for every model), scores ``[N]`` and extra maps."""
    model.eval()
    size = test.size
    maps = np.empty((len(test), size, size), dtype=np.float32)
    scores = np.empty(len(test), dtype=np.float64)
    extras: dict[str, np.ndarray] = {}
    n_batches = -(-len(test) // batch_size)
    for idx, images in tqdm(
        test.batches(batch_size), total=n_batches, desc="predict", leave=False, disable=not progress
    ):
        out: Prediction = model.predict(images.to(device, non_blocking=True))
        batch_maps = out.maps.float()
        if batch_maps.shape[-2:] != (size, size):
            batch_maps = F.interpolate(batch_maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[
                :, 0
            ]
        maps[idx.numpy()] = batch_maps.cpu().numpy()
        scores[idx.numpy()] = out.scores.double().cpu().numpy()
        for name, extra in out.extras.items():
            extra = extra.float()
            if extra.shape[-2:] != (size, size):
                extra = F.interpolate(extra[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            extras.setdefault(name, np.empty((len(test), size, size), dtype=np.float32))[idx.numpy()] = (
                extra.cpu().numpy()
            )
    return maps, scores, extras


def map_preview(test: ImageSet, maps: np.ndarray, extras: dict[str, np.ndarray], per_defect: int) -> MapPreview | None:
    """The first ``per_defect`` test images of every defect type with their maps, for figures."""
    if per_defect <= 0:
        return None
    chosen = choose_preview([s.defect_type for s in test.samples], per_defect)
    return MapPreview(
        image=test.images[chosen].numpy(),
        mask=test.masks[chosen].numpy() if test.masks is not None else np.zeros(0, bool),
        map=maps[chosen],
        path=np.array([str(test.samples[i].path) for i in chosen]),
        defect_type=np.array([test.samples[i].defect_type for i in chosen]),
        extras={name: extra[chosen] for name, extra in extras.items()},
    )


def resize_of(cfg: DictConfig) -> str:
    """``dataset.resize`` (checked), OpenCV's INTER_LINEAR when a config predates it."""
    return check_resize(str(cfg.dataset.get("resize", "cv2_linear")))


def model_class(cfg: DictConfig) -> type[AnomalyModel]:
    """The configured model's class (``model._target_``), without building it."""
    cls = get_class(str(cfg.model._target_))
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModel)):
        raise TypeError(f"model._target_={cfg.model._target_} is not an AnomalyModel")
    return cls


def job_splits(cfg: DictConfig) -> Splits:
    """The category's splits as listed for this job's model (no validation split for a model
    that uses none, see :func:`ulsad_bench.data.build_splits`); ``protocol.quantiles_from_test``
    keeps every training image (the validation split is then made of test images, see
    :func:`ulsad_bench.protocol.apply_to_splits`)."""
    dataset = cfg.dataset
    if Protocol.from_config(cfg).quantiles_from_test:
        dataset = OmegaConf.merge(dataset, {"val_split": "test_set"})
    return build_splits(dataset, Path(cfg.cache_dir), uses_validation=model_class(cfg).uses_validation)


def center_crop_of(cfg: DictConfig) -> int | None:
    """The crop in pixels that ``model.center_crop`` (a fraction of ``dataset.image_size``, or
    null) asks for: anomalib 0.7's PatchCore config resizes to 256 and centre-crops 224, i.e.
    0.875; null: no crop."""
    fraction = cfg.model.get("center_crop")
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"model.center_crop={fraction!r}: expected null or a fraction in (0, 1] of dataset.image_size")
    return round(float(fraction) * int(cfg.dataset.image_size))


def model_image_size(cfg: DictConfig) -> int:
    """The size a model sees: the centre crop when ``model.center_crop`` is set, else
    ``dataset.image_size``."""
    crop = center_crop_of(cfg)
    return crop if crop is not None else int(cfg.dataset.image_size)


def crop_for_model(cfg: DictConfig, *sets: ImageSet) -> tuple[ImageSet, ...]:
    """The image sets as the model sees them: centre-cropped after the resize when
    ``model.center_crop`` is set, identically for images, masks and channels (anomalib 0.7)."""
    crop = center_crop_of(cfg)
    return sets if crop is None else tuple(images.center_crop(crop) for images in sets)


def load_data(cfg: DictConfig, splits: Splits | None = None) -> tuple[Splits, ImageSet, ImageSet, ImageSet]:
    """The category's splits (built here unless given) and their decoded images at
    ``dataset.image_size`` (test with masks). The model's centre crop and MVTec LOCO's channels
    are applied on top (:func:`crop_for_model`, :func:`attach_channels`)."""
    splits = splits if splits is not None else job_splits(cfg)
    size, progress = int(cfg.dataset.image_size), bool(cfg.progress)
    decoded = None
    if bool(cfg.cache.get("decoded_images", False)):  # decoded once per split, shared by every job
        decoded = DecodedCache(Path(cfg.cache_dir) / "features", max_bytes=int(float(cfg.cache.max_gb) * 2**30))
    options = {"progress": progress, "resize": resize_of(cfg), "cache": decoded}
    train = load_image_set(splits.train, size, with_masks=False, desc="read train", **options)
    val = load_image_set(splits.val, size, with_masks=False, desc="read val", **options)
    test = load_image_set(splits.test, size, with_masks=True, desc="read test", **options)
    return splits, train, val, test


def make_context(
    cfg: DictConfig, device: torch.device, backbone: BackboneSpec, selection: EpochSelection | None = None
) -> RunContext:
    """What a model receives for this job (device, seed, backbone, caches, precision, and the
    test-set selection it reports its epochs to under ``protocol.select_on_test``)."""
    return RunContext(
        device=device,
        seed=int(cfg.seed),
        image_size=model_image_size(cfg),
        backbone=backbone,
        feature_cache=FeatureCache(
            Path(cfg.cache_dir) / "features",
            enabled=bool(cfg.feature_cache),
            max_bytes=int(float(cfg.cache.max_gb) * 2**30),
        ),
        precision=str(cfg.precision),
        progress=bool(cfg.progress),
        log=log.info,
        on_epoch_end=selection,
    )


def job_backbone(cfg: DictConfig, model: AnomalyModel) -> BackboneSpec:
    """The network ``model`` runs on in this job and its weights (``backbone=``, or the model's
    own network under ``backbone.weights``'s policy): :func:`~ulsad_bench.models.backbone.resolve_backbone`."""
    return resolve_backbone(
        str(cfg.backbone.name),
        str(cfg.backbone.weights),
        own=model.own_backbone(),
        random_init_seed=int(cfg.backbone.random_init_seed),
        verify=bool(cfg.backbone.get("verify", True)),
    )


@dataclass
class Job:
    """What one job works on, built by :func:`prepare`.

    Attributes:
        model: built and set up (networks on ``device``), not fitted.
        backbone: the network the model runs on, with its resolved weights.
        train, val, test: the splits' images as the model sees them (centre crop applied; the
            test set with masks and, for MVTec LOCO, ground-truth channels).
        record: the record's fields this preparation determines (``backbone``, ``weights``,
            ``data``, ``data_fingerprint``, ``val_source``, ``protocol``, ``test_subset``,
            ``metric_notes``).
        selection: the test-set selection of ``protocol.select_on_test`` (None otherwise).
        load_s: seconds spent reading the images.
    """

    cfg: DictConfig
    device: torch.device
    model: AnomalyModel
    backbone: BackboneSpec
    splits: Splits
    train: ImageSet
    val: ImageSet
    test: ImageSet
    record: dict[str, Any] = field(default_factory=dict)
    selection: EpochSelection | None = None
    load_s: float = 0.0


def prepare(cfg: DictConfig, splits: Splits | None = None, fingerprint: dict[str, Any] | None = None) -> Job:
    """Seed, pick the device, build the model, resolve its backbone's weights, read the data and
    set the model up: everything before ``fit``. ``splits`` / ``fingerprint``: the category's
    splits and their fingerprint when the caller listed them already (the resume check)."""
    validate_job(cfg)
    protocol = Protocol.from_config(cfg)
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    device = resolve_device(str(cfg.device))
    model = build_model(cfg.model)
    backbone = job_backbone(cfg, model)
    listed = splits if splits is not None else job_splits(cfg)
    fingerprint = fingerprint if fingerprint is not None else listed.fingerprint()
    splits, test_subset = apply_to_splits(protocol, listed)
    start = time.perf_counter()
    splits, train, val, test = load_data(cfg, splits)
    load_s = time.perf_counter() - start
    notes = attach_channels(splits, test, resize_of(cfg))
    channels = len(test.channels or [])
    train, val, test = crop_for_model(cfg, train, val, test)
    if channels > len(test.channels or []):
        lost = channels - len(test.channels or [])
        notes["spro_crop"] = f"{lost} ground-truth channels lie outside the model's centre crop and are left out"
    record: dict[str, Any] = {
        "backbone": backbone.name,
        "weights": backbone.weights.as_record(),
        "data": {**splits.counts(), "center_crop": center_crop_of(cfg), "resize": resize_of(cfg)},
        "data_fingerprint": fingerprint,
        "val_source": splits.val_source,
        "protocol": protocol.as_record(),
    }
    if test_subset is not None:
        record["test_subset"] = test_subset
    if notes:
        record["metric_notes"] = notes
    selection = None
    if protocol.select_on_test:
        batch_size = int(cfg.eval_batch_size)
        selection = EpochSelection(
            labels=test.labels,
            score=lambda fitted: predict_all(fitted, test, device, batch_size, progress=False)[1],
            every=protocol.eval_every,
        )
    model.setup(make_context(cfg, device, backbone, selection))
    return Job(cfg, device, model, backbone, splits, train, val, test, record, selection, load_s)


SEED_RANGE = 2**32


def attach_channels(splits: Splits, test: ImageSet, resize: str = "cv2_linear") -> dict[str, str]:
    """Give ``test`` MVTec LOCO's ground-truth channels when the category has a
    ``defects_config.json`` (or is LOCO-like: logical anomalies); returns notes on what could not
    be done (the other metrics are computed all the same)."""
    config = splits.category_dir / DEFECTS_CONFIG
    if not config.is_file() and not any(s.kind == LOGICAL for s in splits.test):
        return {}
    try:
        test.channels, dropped = load_channels(test.samples, splits.category_dir, test.size, resize)
    except DatasetError as err:
        log.warning("sPRO not computed: %s", err)
        return {"spro": f"not computed: {err}"}
    if dropped:
        return {"spro": f"{dropped} ground-truth channels vanish at {test.size} px and are left out"}
    return {}


def check_inputs(cfg: DictConfig) -> None:
    """The files a job needs besides its dataset: backbone weights (the configured backbone's, or
    a model's own network's under the weights policy) and a model's own files (EfficientAD's
    teacher, penalty images). Raises the error a job would raise, naming the file; reads nothing
    big. Used by the sweep's pre-flight."""
    validate_job(cfg)
    model = build_model(cfg.model)
    model.check_files(job_backbone(cfg, model).weights.policy)


def validate_job(cfg: DictConfig) -> None:
    """Settings a job can check before it reads any data; each error names the setting and
    what is allowed."""
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_RANGE:
        raise ValueError(f"seed={seed!r}: expected an integer in [0, 2^32) = [0, {SEED_RANGE - 1}]")
    size = cfg.dataset.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"dataset.image_size={size!r}: expected a positive integer (pixels)")
    model_class(cfg).check_image_size(model_image_size(cfg))
    resize_of(cfg)
    resume_mode(cfg.get("resume", "strict"))
    Protocol.from_config(cfg)


def _execute(
    cfg: DictConfig, record: dict[str, Any], files_dir: Path, splits: Splits | None, fingerprint: dict[str, Any] | None
) -> None:
    """The job itself; its files (predictions, maps) go to ``files_dir``. ``splits`` and
    ``fingerprint``: the category's splits and their fingerprint when the resume check listed
    them already."""
    record["device"] = describe_device(resolve_device(str(cfg.device)))
    job = prepare(cfg, splits, fingerprint)
    record.update(job.record)
    model, test, device = job.model, job.test, job.device

    start = time.perf_counter()
    record["fit"] = model.fit(job.train, job.val)
    fit_s = time.perf_counter() - start
    if job.selection is not None:  # protocol.select_on_test: the best epoch's state, scored on the test set
        record["selection"] = job.selection.finish(model)
        if record["selection"]["applies"]:  # the test scoring between epochs is not training time
            fit_s -= job.selection.seconds
            record["selection_s"] = round(job.selection.seconds, 3)
    record["hyperparameters"] = model.hyperparameters()

    start = time.perf_counter()
    maps, scores, extras = predict_all(model, test, device, int(cfg.eval_batch_size), bool(cfg.progress))
    predict_s = time.perf_counter() - start
    record["timing"] = {"load_s": round(job.load_s, 3), "fit_s": round(fit_s, 3), "predict_s": round(predict_s, 3)}
    if "selection_s" in record:
        record["timing"]["selection_s"] = record.pop("selection_s")

    if cfg.profile.enabled:
        start = time.perf_counter()
        record["efficiency"] = profile_inference(
            model,
            test.images,
            device,
            batch_size=int(cfg.profile.batch_size),
            warmup_batches=int(cfg.profile.warmup_batches),
            timed_batches=int(cfg.profile.timed_batches),
            precision=str(cfg.precision),
            latency_calls=int(cfg.profile.get("latency_calls", 0)),
        )
        record["timing"]["profile_s"] = round(time.perf_counter() - start, 3)

    assert test.masks is not None
    start = time.perf_counter()
    metrics, by_kind, thresholds = evaluate(
        test.labels, scores, test.masks.numpy(), maps, test.kinds, float(cfg.fpr_limit), test.channels or None
    )
    record["metrics"] = metrics
    record["metrics_by_kind"] = by_kind
    record["thresholds"] = thresholds
    write_predictions(files_dir, test.samples, scores)
    preview = map_preview(test, maps, extras, int(cfg.save_maps_per_defect))
    if preview is not None:
        write_maps(files_dir, preview)
    record["timing"]["metrics_s"] = round(time.perf_counter() - start, 3)


def _protocol_of(cfg: DictConfig) -> dict[str, Any]:
    """The record's ``protocol`` (set before anything can fail, so a failed job is classified too)."""
    try:
        return Protocol.from_config(cfg).as_record()
    except (TypeError, ValueError) as err:  # a bad setting: the job fails on it, named
        return {"tag": "invalid", "error": str(err)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _listed_splits(cfg: DictConfig) -> Splits | None:
    """The category's splits for the resume check, or None when they cannot be listed (the job
    then fails on the same error and records it)."""
    try:
        return job_splits(cfg)
    except (DatasetError, OSError, ValueError):
        return None


def _promote(attempt_dir: Path, run_dir: Path, record: dict[str, Any]) -> None:
    """Make an ok attempt the run's result: its files replace the old ones (a file the new run
    did not write is removed, so nothing stale stays beside the record), the record comes last,
    and earlier failed attempts, now superseded, go."""
    for name in JOB_FILES:
        made = attempt_dir / name
        if made.is_file():
            os.replace(made, run_dir / name)
        else:
            (run_dir / name).unlink(missing_ok=True)
    write_record(run_dir, record)
    shutil.rmtree(run_dir / ATTEMPTS_DIR, ignore_errors=True)


def _keep_failure(attempt_dir: Path, run_dir: Path, record: dict[str, Any]) -> Path:
    """Write a failed attempt's record without touching an ok record: beside it, in the
    attempt's folder, when there is one; else as the run's record (its stale files removed)."""
    if inspect_record(run_dir / RECORD_NAME).ok:
        for name in JOB_FILES:
            (attempt_dir / name).unlink(missing_ok=True)
        record["kept_ok_record"] = str(run_dir / RECORD_NAME)
        return write_record(attempt_dir, record)
    shutil.rmtree(attempt_dir, ignore_errors=True)
    if not any((run_dir / ATTEMPTS_DIR).glob("*")):
        shutil.rmtree(run_dir / ATTEMPTS_DIR, ignore_errors=True)
    for name in JOB_FILES:
        (run_dir / name).unlink(missing_ok=True)
    return write_record(run_dir, record)


def _fail(record: dict[str, Any], err: BaseException, cfg: DictConfig) -> None:
    record["status"] = "failed"
    record["error"] = f"{type(err).__name__}: {err}"
    if isinstance(err, torch.cuda.OutOfMemoryError):
        record["error"] += (
            f" | out of GPU memory with model.batch_size={cfg.model.get('batch_size')}, "
            f"eval_batch_size={cfg.eval_batch_size}, profile.batch_size={cfg.profile.batch_size}: "
            "lower these (or dataset.image_size) and run again"
        )
    record["traceback"] = traceback.format_exc(limit=20)
    log.error("job failed: %s", record["error"])


def run(cfg: DictConfig, run_dir: Path | str | None = None) -> dict[str, Any]:
    """Run one job and write its record to ``run_dir`` (default: Hydra's output folder).

    Returns the job's record: the new one, the ok record it skipped on (resume), or, when
    another process holds the job's lock, ``{"status": "locked", ...}`` (nothing written).
    A failed attempt never replaces an ok record (:mod:`ulsad_bench.records`).
    """
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    chash = config_hash(config)
    record: dict[str, Any] = {
        "status": "running",
        "model": str(cfg.model.name),
        "variant": None if cfg.get("variant") is None else str(cfg.get("variant")),
        "dataset": str(cfg.dataset.name),
        "category": str(cfg.dataset.category),
        "seed": cfg.seed if isinstance(cfg.seed, int) else -1,
        "precision": str(cfg.precision),
        "config_hash": chash,
        "protocol": _protocol_of(cfg),
        "config": config,
        "versions": versions(),
        "run_dir": str(run_dir),
        # the GPUs a launcher gave this job (hydra/launcher=gpus: Ray sets it per job), None when unset
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": _now(),
    }
    write_outcome(run_dir, "started")
    try:
        validate_job(cfg)
    except Exception as err:  # a bad setting fails this job, named, before any data is read
        _fail(record, err, cfg)
        record["finished"] = _now()
        with JobLock(run_dir) as lock:  # never touch a record another process is writing
            attempt = new_attempt_dir(run_dir)
            if lock.acquired:
                _keep_failure(attempt, run_dir, record)
            else:
                write_record(attempt, record)
        write_outcome(run_dir, "failed", record["error"])
        if cfg.get("fail_fast", False):
            raise
        return record
    mode = resume_mode(cfg.get("resume", "strict"))
    splits = _listed_splits(cfg) if mode == "strict" else None
    fingerprint = splits.fingerprint() if splits is not None else None
    with JobLock(run_dir) as lock:
        if not lock.acquired:
            log.warning("skip (running in another process: %s): %s", describe_holder(lock.holder), run_dir)
            write_outcome(run_dir, "locked", describe_holder(lock.holder))
            return {**record, "status": "locked", "holder": lock.holder}
        if lock.took_over:
            log.info("took over the lock left by %s (no longer running): %s", describe_holder(lock.holder), run_dir)
        existing = inspect_record(run_dir / RECORD_NAME)
        skip, why = resume_check(existing.record, mode, chash, fingerprint, record["versions"])
        if skip:
            log.info("skip (already done: %s): %s", why, run_dir)
            write_outcome(run_dir, "skipped", why)
            assert existing.record is not None
            return existing.record
        if existing.ok:
            log.info("re-running (%s): %s", why, run_dir)
        attempt_dir = new_attempt_dir(run_dir)
        try:
            _execute(cfg, record, attempt_dir, splits, fingerprint)
            record["status"] = "ok"
        except Exception as err:  # one job's failure is recorded, never lost, never fatal to a sweep
            _fail(record, err, cfg)
            record["finished"] = _now()
            kept = _keep_failure(attempt_dir, run_dir, record)
            write_outcome(
                run_dir, "failed", record["error"] + (f" (the ok record is kept; this: {kept})" if existing.ok else "")
            )
            if cfg.get("fail_fast", False):
                raise
        else:
            record["finished"] = _now()
            _promote(attempt_dir, run_dir, record)
            write_outcome(run_dir, "ran")
    log.info(summary_line(record))
    if record["status"] == "failed" and existing.ok:
        log.info("the earlier ok record is kept: %s", run_dir / RECORD_NAME)
    logger = instantiate(cfg.logger) if cfg.logger.get("_target_") else None
    if logger is not None:
        try:
            logger.log_record(record, run_dir)
        except Exception as err:  # tracking must never lose or fail a finished job
            log.error("logging to %s failed (the record is written): %s: %s", cfg.logger.name, type(err).__name__, err)
    return record
