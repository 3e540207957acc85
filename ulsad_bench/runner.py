"""One job: check settings -> resume decision -> lock -> prepare -> fit -> predict -> metrics -> record.

The job's settings are its spec (:class:`ulsad_bench.spec.JobSpec`, checked once). :func:`prepare`
builds what a job works on (a :class:`Job`: device, backbone and weights, data as the model sees
it, the model set up); :func:`run`, ``make bench`` and ``make demo`` (through ``run.py``) all build
their jobs with it. :func:`run` is a plain function of a composed config (``run.py`` is only its
Hydra entry point), so tests and scripts call it directly. Whatever happens inside, a record is
written atomically (assembled by :mod:`ulsad_bench.job_record`): status ``ok`` with metrics, or
``failed`` with the error. The job's files are made in a fresh ``attempts/`` folder and moved
into the run folder only with an ok record, so a failed attempt never replaces an ok record or
leaves its files beside another record.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .artifacts import JOB_FILES, MapPreview, choose_preview, write_maps, write_predictions
from .code_version import model_code_version
from .data import LOGICAL, DatasetError, ImageSet, Splits, load_image_set
from .data.channels import DEFECTS_CONFIG, load_channels
from .data.decoded import DecodedCache
from .environment import describe_device, resolve_device, seed_everything
from .features import FeatureCache
from .job_record import Progress, assemble, header, now, out_of_memory_hint
from .joblock import JobLock, describe_holder
from .metrics import SEG_F1, evaluate, seg_f1, segmentation_threshold
from .models.backbone import BackboneSpec, resolve_backbone
from .models.base import AnomalyModel, Prediction, RunContext
from .outcomes import write_outcome
from .profiling import profile_inference
from .protocol import EpochSelection, apply_to_splits
from .records import ATTEMPTS_DIR, RECORD_NAME, inspect_record, new_attempt_dir, summary_line, write_record
from .resume import Listing, decide, list_splits
from .spec import JobSpec
from .submission import SUBMISSION_DIR, export_private_sets

log = logging.getLogger("ulsad_bench")


def build_model(spec: JobSpec) -> AnomalyModel:
    """The job's model, built from ``model.*`` (:meth:`ulsad_bench.spec.JobSpec.build_model`)."""
    return spec.build_model()


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
        maps[idx.numpy()] = _at_size(out.maps.float(), size).cpu().numpy()
        scores[idx.numpy()] = out.scores.double().cpu().numpy()
        for name, extra in out.extras.items():
            target = extras.setdefault(name, np.empty((len(test), size, size), dtype=np.float32))
            target[idx.numpy()] = _at_size(extra.float(), size).cpu().numpy()
    return maps, scores, extras


def _at_size(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Maps ``[B, H, W]`` at ``size x size`` (bilinear when they have another size)."""
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


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


def crop_for_model(spec: JobSpec, *sets: ImageSet) -> tuple[ImageSet, ...]:
    """The image sets as the model sees them: centre-cropped after the resize when
    ``model.center_crop`` is set, identically for images, masks and channels (anomalib 0.7)."""
    crop = spec.data.center_crop
    return sets if crop is None else tuple(images.center_crop(crop) for images in sets)


def job_source_keys(spec: JobSpec) -> str:
    """How the job's caches identify source files: ``cache.source_keys`` (content digests by
    default, :mod:`ulsad_bench.data.content`), and always their content under ``resume=false``,
    which promises a run from what the files hold now."""
    return "content" if spec.resume == "off" else spec.data.source_keys


def _load_options(spec: JobSpec) -> dict[str, Any]:
    """How the job decodes a split (:func:`~ulsad_bench.data.load_image_set`'s options)."""
    data = spec.data
    source_keys = job_source_keys(spec)
    decoded = None
    if data.decoded_images:  # decoded once per split, shared by every job
        decoded = DecodedCache(data.cache_dir / "features", max_bytes=data.cache_max_bytes, source_keys=source_keys)
    return {"progress": spec.progress, "resize": data.resize, "cache": decoded, "source_keys": source_keys}


def load_data(spec: JobSpec, splits: Splits) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The splits' decoded images at ``dataset.image_size`` (test with masks). The model's centre
    crop and MVTec LOCO's channels are applied on top (:func:`crop_for_model`, :func:`attach_channels`)."""
    size, options = spec.data.image_size, _load_options(spec)
    train = load_image_set(splits.train, size, with_masks=False, desc="read train", **options)
    val = load_image_set(splits.val, size, with_masks=False, desc="read val", **options)
    test = load_image_set(splits.test, size, with_masks=True, desc="read test", **options)
    return train, val, test


def load_unscored(spec: JobSpec, splits: Splits, val: ImageSet) -> tuple[ImageSet | None, dict[str, ImageSet]]:
    """The images a job predicts but does not score, at ``dataset.image_size``: those of SegF1's
    threshold (``metrics.seg_f1``; the validation split's own images when they are the same, else the
    dataset's validation folder read in addition, :func:`~ulsad_bench.data.splits.threshold_split`),
    None without any; and the test sets without ground truth (MVTec AD 2's private ones), by name."""
    size, options = spec.data.image_size, _load_options(spec)
    threshold = val if splits.threshold and splits.threshold_is_val else None
    if splits.threshold and not splits.threshold_is_val:
        threshold = load_image_set(splits.threshold, size, with_masks=False, desc="read threshold", **options)
    private = {
        name: load_image_set(samples, size, with_masks=False, desc=f"read {name}", **options)
        for name, samples in splits.private.items()
    }
    return threshold, private


def make_context(
    spec: JobSpec, device: torch.device, backbone: BackboneSpec, selection: EpochSelection | None = None
) -> RunContext:
    """What a model receives for this job (device, seed, backbone, caches, precision, and the
    test-set selection it reports its epochs to under ``protocol.select_on_test``)."""
    return RunContext(
        device=device,
        seed=spec.seed,
        image_size=spec.data.model_image_size,
        backbone=backbone,
        feature_cache=FeatureCache(
            spec.data.cache_dir / "features",
            enabled=spec.feature_cache,
            max_bytes=spec.data.cache_max_bytes,
            code_version=model_code_version(spec.model_class),
        ),
        precision=spec.precision,
        progress=spec.progress,
        log=log.info,
        on_epoch_end=selection,
    )


def job_backbone(spec: JobSpec, model: AnomalyModel) -> BackboneSpec:
    """The network ``model`` runs on in this job and its weights (``backbone=``, or the model's
    own network under ``backbone.weights``'s policy): :func:`~ulsad_bench.models.backbone.resolve_backbone`."""
    settings = spec.backbone
    return resolve_backbone(
        settings.name,
        settings.weights,
        own=model.own_backbone(),
        random_init_seed=settings.random_init_seed,
        verify=settings.verify,
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
        threshold: the images of SegF1's threshold as the model sees them (``metrics.seg_f1``), or None.
        private: the test sets without ground truth as the model sees them, by name (predicted and
            exported for MVTec AD 2's evaluation server: :mod:`ulsad_bench.submission`).
    """

    spec: JobSpec
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
    threshold: ImageSet | None = None
    private: dict[str, ImageSet] = field(default_factory=dict)


def prepare(spec: JobSpec, listing: Listing | None = None) -> Job:
    """Seed, pick the device, build the model, resolve its backbone's weights, read the data and
    set the model up: everything before ``fit``. ``listing``: the category's splits and their
    fingerprint when the caller listed them already (the resume decision)."""
    seed_everything(spec.seed, spec.deterministic)
    device = resolve_device(spec.device)
    model = build_model(spec)
    backbone = job_backbone(spec, model)
    listed = spec.data.splits() if listing is None or listing.splits is None else listing.splits
    # the record holds the files' content digests whenever the caches key on them (read once per
    # process), so that a later resume=content can compare them
    content = job_source_keys(spec) == "content" or spec.resume == "content"
    fingerprint = listed.fingerprint(content=content, extra=spec.input_files())
    splits, test_subset = apply_to_splits(spec.protocol, listed)
    start = time.perf_counter()
    train, val, test = load_data(spec, splits)
    threshold, private = load_unscored(spec, splits, val)
    load_s = time.perf_counter() - start
    notes = attach_channels(splits, test, spec.data.resize)
    if spec.metrics.seg_f1 and threshold is None:
        notes[SEG_F1] = f"not computed: no threshold images ({splits.threshold_source})"
    channels = len(test.channels or [])
    train, val, test = crop_for_model(spec, train, val, test)
    threshold, private = crop_unscored(spec, splits, val, threshold, private)
    if channels > len(test.channels or []):
        lost = channels - len(test.channels or [])
        notes["spro_crop"] = f"{lost} ground-truth channels lie outside the model's centre crop and are left out"
    record: dict[str, Any] = {
        "backbone": backbone.name,
        "weights": backbone.weights.as_record(),
        "data": {**splits.counts(), "center_crop": spec.data.center_crop, "resize": spec.data.resize},
        "data_fingerprint": fingerprint,
        "val_source": splits.val_source,
        "protocol": spec.protocol.as_record(),
    }
    if test_subset is not None:
        record["test_subset"] = test_subset
    if notes:
        record["metric_notes"] = notes
    selection = None
    if spec.protocol.select_on_test:
        selection = EpochSelection(
            labels=test.labels,
            score=lambda fitted: predict_all(fitted, test, device, spec.eval_batch_size, progress=False)[1],
            every=spec.protocol.eval_every,
        )
    model.setup(make_context(spec, device, backbone, selection))
    return Job(spec, device, model, backbone, splits, train, val, test, record, selection, load_s, threshold, private)


def crop_unscored(
    spec: JobSpec, splits: Splits, val: ImageSet, threshold: ImageSet | None, private: dict[str, ImageSet]
) -> tuple[ImageSet | None, dict[str, ImageSet]]:
    """:func:`load_unscored`'s image sets as the model sees them (``val``: the validation split as
    the model sees it, the threshold's images when they are the same)."""
    if threshold is not None:
        threshold = val if splits.threshold_is_val else crop_for_model(spec, threshold)[0]
    return threshold, {name: crop_for_model(spec, images)[0] for name, images in private.items()}


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


def check_inputs(spec: JobSpec) -> None:
    """The files a job needs besides its dataset: backbone weights (the configured backbone's, or
    a model's own network's under the weights policy) and a model's own files (EfficientAD's
    teacher, penalty images). Raises the error a job would raise, naming the file; reads nothing
    big. Used by the sweep's pre-flight."""
    model = build_model(spec)
    model.check_files(job_backbone(spec, model).weights.policy)


def execute(job: Job, progress: Progress, files_dir: Path) -> None:
    """Fit, predict, profile and score the prepared ``job``, noting each stage in ``progress``;
    the job's files (predictions, maps) go to ``files_dir``."""
    spec, model, test, device = job.spec, job.model, job.test, job.device
    start = time.perf_counter()
    progress.fit = model.fit(job.train, job.val)
    fit_s = time.perf_counter() - start
    selection_s = None
    if job.selection is not None:  # protocol.select_on_test: the best epoch's state, scored on the test set
        progress.selection = job.selection.finish(model)
        if progress.selection["applies"]:  # the test scoring between epochs is not training time
            fit_s -= job.selection.seconds
            selection_s = round(job.selection.seconds, 3)
    progress.hyperparameters = model.hyperparameters()
    start = time.perf_counter()
    maps, scores, extras = predict_all(model, test, device, spec.eval_batch_size, spec.progress)
    predict_s = time.perf_counter() - start
    progress.timing = {"load_s": round(job.load_s, 3), "fit_s": round(fit_s, 3), "predict_s": round(predict_s, 3)}
    if selection_s is not None:
        progress.timing["selection_s"] = selection_s
    if spec.profile.enabled:
        start = time.perf_counter()
        profile = spec.profile
        progress.efficiency = profile_inference(
            model,
            test.images,
            device,
            batch_size=profile.batch_size,
            warmup_batches=profile.warmup_batches,
            timed_batches=profile.timed_batches,
            precision=spec.precision,
            latency_calls=profile.latency_calls,
        )
        progress.timing["profile_s"] = round(time.perf_counter() - start, 3)
    assert test.masks is not None
    start = time.perf_counter()
    masks, channels = test.masks.numpy(), test.channels or None
    progress.metrics, progress.metrics_by_kind, progress.thresholds = evaluate(
        test.labels, scores, masks, maps, test.kinds, spec.fpr_limit, channels, pro_limits=spec.metrics.pro_limits
    )
    write_predictions(files_dir, test.samples, scores)
    preview = map_preview(test, maps, extras, spec.save_maps_per_defect)
    if preview is not None:
        write_maps(files_dir, preview)
    progress.timing["metrics_s"] = round(time.perf_counter() - start, 3)
    threshold = score_seg_f1(job, progress, maps)
    if job.private:
        start = time.perf_counter()
        progress.submission = export_submission(job, threshold, files_dir / SUBMISSION_DIR, progress)
        progress.timing["private_s"] = round(time.perf_counter() - start, 3)


def score_seg_f1(job: Job, progress: Progress, maps: np.ndarray) -> float | None:
    """SegF1 of the test maps at the threshold of the validation images (``metrics.seg_f1``,
    :func:`~ulsad_bench.metrics.segmentation_threshold`): the threshold images are predicted, the
    threshold and its rule go to the record (``segmentation_threshold``, ``thresholds.seg_f1``), the
    score to ``metrics.seg_f1``. Returns the threshold, None when SegF1 is not computed (the record's
    ``metric_notes`` says why)."""
    if not job.spec.metrics.seg_f1 or job.threshold is None:
        return None
    assert job.test.masks is not None and progress.metrics is not None and progress.thresholds is not None
    start = time.perf_counter()
    val_maps = predict_all(job.model, job.threshold, job.device, job.spec.eval_batch_size, progress=False)[0]
    threshold = segmentation_threshold(val_maps)
    progress.metrics[SEG_F1] = seg_f1(job.test.masks.numpy(), maps, threshold.value)
    progress.thresholds[SEG_F1] = threshold.value
    progress.segmentation_threshold = threshold.as_record(job.splits.threshold_source)
    progress.timing["seg_threshold_s"] = round(time.perf_counter() - start, 3)
    return threshold.value


def export_submission(job: Job, threshold: float | None, out: Path, progress: Progress) -> dict[str, Any]:
    """Predict every test set without ground truth and write its maps (and, with SegF1's threshold,
    its binary masks) for the evaluation server (:func:`ulsad_bench.submission.export_private_sets`);
    returns the record's ``submission``, with the folder it will lie in (the run folder's)."""
    sets = {
        name: (images.samples, predict_all(job.model, images, job.device, job.spec.eval_batch_size, False)[0])
        for name, images in job.private.items()
    }
    written = export_private_sets(out, job.spec.category, sets, job.spec.data.image_size, threshold)
    if threshold is None:
        written["thresholded"] = "none: no segmentation threshold (metrics.seg_f1 off, or no threshold images)"
    return {"folder": str(Path(progress.header["run_dir"]) / SUBMISSION_DIR), **written}


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
    shutil.rmtree(run_dir / SUBMISSION_DIR, ignore_errors=True)
    if (attempt_dir / SUBMISSION_DIR).is_dir():
        os.replace(attempt_dir / SUBMISSION_DIR, run_dir / SUBMISSION_DIR)
    write_record(run_dir, record)
    shutil.rmtree(run_dir / ATTEMPTS_DIR, ignore_errors=True)


def _keep_failure(attempt_dir: Path, run_dir: Path, progress: Progress) -> tuple[Path, dict[str, Any]]:
    """Write a failed attempt's record without touching an ok record: beside it, in the
    attempt's folder, when there is one; else as the run's record (its stale files removed).
    Returns where it went and the record."""
    if inspect_record(run_dir / RECORD_NAME).ok:
        for name in JOB_FILES:
            (attempt_dir / name).unlink(missing_ok=True)
        shutil.rmtree(attempt_dir / SUBMISSION_DIR, ignore_errors=True)
        record = assemble(progress, kept_ok_record=run_dir / RECORD_NAME)
        return write_record(attempt_dir, record), record
    shutil.rmtree(attempt_dir, ignore_errors=True)
    if not any((run_dir / ATTEMPTS_DIR).glob("*")):
        shutil.rmtree(run_dir / ATTEMPTS_DIR, ignore_errors=True)
    for name in JOB_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / SUBMISSION_DIR, ignore_errors=True)
    record = assemble(progress)
    return write_record(run_dir, record), record


def _refuse_settings(cfg: DictConfig, run_dir: Path, progress: Progress, err: Exception) -> dict[str, Any]:
    """A setting that cannot work fails the job, named, before any data is read; the record is
    written under the job's lock (never over a record another process is writing)."""
    progress.fail(err)
    log.error("job failed: %s", progress.error)
    with JobLock(run_dir) as lock:
        attempt = new_attempt_dir(run_dir)
        if lock.acquired:
            _, record = _keep_failure(attempt, run_dir, progress)
        else:
            record = assemble(progress)
            write_record(attempt, record)
    write_outcome(run_dir, "failed", record["error"])
    if cfg.get("fail_fast", False):
        raise err
    return record


def _attempt(spec: JobSpec, run_dir: Path, progress: Progress, listing: Listing | None) -> tuple[dict[str, Any], bool]:
    """Under the job's lock: the resume decision, then the job in a fresh attempt folder.
    Returns its record (the ok one it skipped on, the new one, or the failed attempt's) and
    whether this run wrote it."""
    decision = decide(spec, run_dir, progress.header["versions"], listing)
    if decision.skip:
        log.info("skip (already done: %s): %s", decision.why, run_dir)
        write_outcome(run_dir, "skipped", decision.why)
        assert decision.existing.record is not None
        return decision.existing.record, False
    if decision.existing.ok:
        log.info("re-running (%s): %s", decision.why, run_dir)
    attempt_dir = new_attempt_dir(run_dir)
    try:
        progress.device = describe_device(resolve_device(spec.device))
        job = prepare(spec, listing)
        progress.prepared = job.record
        execute(job, progress, attempt_dir)
    except Exception as err:  # one job's failure is recorded, never lost, never fatal to a sweep
        progress.fail(err, out_of_memory_hint(err, spec))
        log.error("job failed: %s", progress.error)
        kept, record = _keep_failure(attempt_dir, run_dir, progress)
        kept_note = f" (the ok record is kept; this: {kept})" if decision.existing.ok else ""
        write_outcome(run_dir, "failed", str(progress.error) + kept_note)
        if spec.fail_fast:
            raise
        if decision.existing.ok:
            log.info("the earlier ok record is kept: %s", run_dir / RECORD_NAME)
        return record, True
    progress.finished = now()
    record = assemble(progress)
    _promote(attempt_dir, run_dir, record)
    write_outcome(run_dir, "ran")
    return record, True


def run(cfg: DictConfig, run_dir: Path | str | None = None) -> dict[str, Any]:
    """Run one job and write its record to ``run_dir`` (default: Hydra's output folder).

    Returns the job's record: the new one, the ok record it skipped on (resume), or, when
    another process holds the job's lock, ``{"status": "locked", ...}`` (nothing written).
    A failed attempt never replaces an ok record (:mod:`ulsad_bench.records`).
    """
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig  # only inside a Hydra app

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(header(cfg, run_dir))
    write_outcome(run_dir, "started")
    try:
        spec = JobSpec.from_config(cfg)
    except Exception as err:  # a bad setting fails this job, named, before any data is read
        return _refuse_settings(cfg, run_dir, progress, err)
    listing = list_splits(spec) if spec.resume == "strict" else None
    with JobLock(run_dir) as lock:
        if not lock.acquired:
            log.warning("skip (running in another process: %s): %s", describe_holder(lock.holder), run_dir)
            write_outcome(run_dir, "locked", describe_holder(lock.holder))
            return {**assemble(progress), "status": "locked", "holder": lock.holder}
        if lock.took_over:
            log.info("took over the lock left by %s (no longer running): %s", describe_holder(lock.holder), run_dir)
        record, wrote = _attempt(spec, run_dir, progress, listing)
    if wrote:
        log.info(summary_line(record))
        _log_to_tracker(spec, record, run_dir)
    return record


def _log_to_tracker(spec: JobSpec, record: dict[str, Any], run_dir: Path) -> None:
    """Send the record to the configured tracker (``logger=wandb``); a tracking failure never
    loses or fails a finished job."""
    if not spec.logger.get("_target_"):
        return
    try:
        instantiate(dict(spec.logger)).log_record(record, run_dir)
    except Exception as err:
        name = spec.logger.get("name")
        log.error("logging to %s failed (the record is written): %s: %s", name, type(err).__name__, err)
