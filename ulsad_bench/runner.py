"""One job: data -> fit -> predict -> metrics -> record.

:func:`run` is a plain function of a composed config (``run.py`` is only its Hydra entry
point), so tests and scripts call it directly. Whatever happens inside, a record is written
atomically to the job's folder: status ``ok`` with metrics, or ``failed`` with the error.
"""

from __future__ import annotations

import csv
import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .data import ImageSet, Splits, build_splits, load_image_set
from .environment import describe_device, resolve_device, seed_everything, versions
from .features import FeatureCache
from .metrics import evaluate
from .models.backbone import BackboneSpec, WeightsInfo, resolve_weights
from .models.base import AnomalyModel, Prediction, RunContext
from .profiling import profile_inference
from .records import completed_record, config_hash, summary_line, write_record

log = logging.getLogger("ulsad_bench")


def build_model(model_cfg: DictConfig) -> AnomalyModel:
    """Instantiate ``model_cfg._target_`` with every other key except ``name`` as arguments."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(kwargs, dict)
    target = kwargs.pop("_target_")
    kwargs.pop("name", None)
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


def save_predictions(run_dir: Path, test: ImageSet, scores: np.ndarray) -> None:
    """Per-image scores (``predictions.csv``): the image AUROC can be recomputed from it."""
    with open(run_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "kind", "defect_type", "score"])
        for sample, score in zip(test.samples, scores, strict=True):
            writer.writerow([str(sample.path), sample.label, sample.kind, sample.defect_type, f"{score:.9g}"])


def save_map_preview(
    run_dir: Path, test: ImageSet, maps: np.ndarray, extras: dict[str, np.ndarray], per_defect: int
) -> None:
    """A few test images with their masks and maps (``maps.npz``) for the report's figures."""
    if per_defect <= 0:
        return
    chosen: list[int] = []
    seen: dict[str, int] = {}
    for i, sample in enumerate(test.samples):
        if seen.get(sample.defect_type, 0) < per_defect:
            seen[sample.defect_type] = seen.get(sample.defect_type, 0) + 1
            chosen.append(i)
    payload: dict[str, Any] = {
        "image": test.images[chosen].numpy(),
        "mask": test.masks[chosen].numpy() if test.masks is not None else np.zeros(0),
        "map": maps[chosen].astype(np.float16),
        "path": np.array([str(test.samples[i].path) for i in chosen]),
        "defect_type": np.array([test.samples[i].defect_type for i in chosen]),
    }
    for name, extra in extras.items():
        payload[f"map_{name}"] = extra[chosen].astype(np.float16)
    np.savez_compressed(run_dir / "maps.npz", **payload)


def load_data(cfg: DictConfig) -> tuple[Splits, ImageSet, ImageSet, ImageSet]:
    """The category's splits and their decoded images (test with masks)."""
    splits = build_splits(cfg.dataset, Path(cfg.cache_dir))
    size, progress = int(cfg.dataset.image_size), bool(cfg.progress)
    train = load_image_set(splits.train, size, with_masks=False, desc="read train", progress=progress)
    val = load_image_set(splits.val, size, with_masks=False, desc="read val", progress=progress)
    test = load_image_set(splits.test, size, with_masks=True, desc="read test", progress=progress)
    return splits, train, val, test


def make_context(cfg: DictConfig, device: torch.device, weights: WeightsInfo) -> RunContext:
    """What a model receives for this job (device, seed, backbone, caches, precision)."""
    seed = int(cfg.seed)
    return RunContext(
        device=device,
        seed=seed,
        image_size=int(cfg.dataset.image_size),
        backbone=BackboneSpec(str(cfg.backbone.name), weights),
        feature_cache=FeatureCache(Path(cfg.cache_dir) / "features", enabled=bool(cfg.feature_cache)),
        precision=str(cfg.precision),
        progress=bool(cfg.progress),
        log=log.info,
        dataset_key=f"{cfg.dataset.name}/{cfg.dataset.category}",
        generator=torch.Generator().manual_seed(seed),
    )


def configured_weights(cfg: DictConfig, resolve_file: bool = True) -> WeightsInfo:
    """The configured backbone's weights; with ``resolve_file=False`` only the policy
    (``imagenet`` / ``random``), for models that load their own network through it."""
    name, weights, seed = str(cfg.backbone.name), str(cfg.backbone.weights), int(cfg.backbone.random_init_seed)
    if resolve_file or weights not in ("imagenet", "random"):
        return resolve_weights(name, weights, seed)
    return WeightsInfo(kind=weights, random_init_seed=seed if weights == "random" else None)


def _execute(cfg: DictConfig, record: dict[str, Any], run_dir: Path) -> None:
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    device = resolve_device(str(cfg.device))
    record["device"] = describe_device(device)
    model = build_model(cfg.model)
    weights = configured_weights(cfg, resolve_file=model.uses_configured_backbone)
    record["weights"] = weights.as_record()

    start = time.perf_counter()
    splits, train, val, test = load_data(cfg)
    load_s = time.perf_counter() - start
    record["data"] = splits.counts()
    record["val_source"] = splits.val_source
    progress = bool(cfg.progress)

    model.setup(make_context(cfg, device, weights))
    start = time.perf_counter()
    record["fit"] = model.fit(train, val)
    fit_s = time.perf_counter() - start
    record["hyperparameters"] = model.hyperparameters()
    used = model.backbone_used()
    record["backbone"] = used.name
    record["weights"] = used.weights.as_record()

    start = time.perf_counter()
    maps, scores, extras = predict_all(model, test, device, int(cfg.eval_batch_size), progress)
    predict_s = time.perf_counter() - start
    record["timing"] = {"load_s": round(load_s, 3), "fit_s": round(fit_s, 3), "predict_s": round(predict_s, 3)}

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
        )
        record["timing"]["profile_s"] = round(time.perf_counter() - start, 3)

    assert test.masks is not None
    start = time.perf_counter()
    metrics, by_kind = evaluate(test.labels, scores, test.masks.numpy(), maps, test.kinds, float(cfg.fpr_limit))
    record["metrics"] = metrics
    record["metrics_by_kind"] = by_kind
    save_predictions(run_dir, test, scores)
    save_map_preview(run_dir, test, maps, extras, int(cfg.save_maps_per_defect))
    record["timing"]["metrics_s"] = round(time.perf_counter() - start, 3)


def run(cfg: DictConfig, run_dir: Path | str | None = None) -> dict[str, Any]:
    """Run one job and write its record to ``run_dir`` (default: Hydra's output folder)."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    chash = config_hash(config)
    if cfg.get("resume", True):
        done = completed_record(run_dir, chash)
        if done is not None:
            log.info("skip (already done, same config hash %s): %s", chash, run_dir)
            return done
    record: dict[str, Any] = {
        "status": "running",
        "model": str(cfg.model.name),
        "variant": cfg.get("variant"),
        "dataset": str(cfg.dataset.name),
        "category": str(cfg.dataset.category),
        "seed": int(cfg.seed),
        "backbone": str(cfg.backbone.name),
        "precision": str(cfg.precision),
        "config_hash": chash,
        "config": config,
        "versions": versions(),
        "run_dir": str(run_dir),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        _execute(cfg, record, run_dir)
        record["status"] = "ok"
    except Exception as err:  # one job's failure is recorded, never lost, never fatal to a sweep
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
        if cfg.get("fail_fast", False):
            record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_record(run_dir, record)
            raise
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_record(run_dir, record)
    log.info(summary_line(record))
    if cfg.logger.name == "wandb":
        try:
            from .tracking import log_record

            log_record(cfg.logger, record, run_dir)
        except Exception as err:  # tracking must never lose or fail a finished job
            log.error("wandb logging failed (the record is written): %s: %s", type(err).__name__, err)
    return record
