"""A job's record, assembled in one place from what the job knows at each stage.

:func:`assemble` puts the record together from the job's :class:`Progress`: the header (identity,
config and its hash, versions, start: known before anything can fail, so a job refused for a bad
setting is recorded too), the device, what preparing the job determined (backbone and weights,
data and fingerprint, protocol), what it measured (fit, selection, predictions' timing,
efficiency, metrics, SegF1's threshold), what it exported (MVTec AD 2's private test sets) and how
it ended. Its fields are those of
:class:`ulsad_bench.records.RunRecord`; :func:`ulsad_bench.records.write_record` writes it.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from .environment import versions
from .protocol import Protocol
from .records import config_hash, record_identity
from .spec import JobSpec


def now() -> str:
    """The time a record notes: UTC, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _protocol_of(cfg: DictConfig) -> dict[str, Any]:
    """The record's ``protocol`` (set before anything can fail, so a failed job is classified too)."""
    try:
        return Protocol.from_config(cfg).as_record()
    except (TypeError, ValueError) as err:  # a bad setting: the job fails on it, named
        return {"tag": "invalid", "error": str(err)}


def _model_class(cfg: DictConfig) -> type | None:
    """The class ``model._target_`` names, None when it names none (the settings check says so)."""
    try:
        return get_class(str(cfg.model._target_))
    except Exception:
        return None


def header(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The fields known before the job checks its settings, read from the config as composed
    (a setting the job will refuse still leaves a classified record)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    return {
        **record_identity(config),  # read back from the stored config by every reader of the record
        "precision": str(cfg.precision),
        "config_hash": config_hash(config),
        "protocol": _protocol_of(cfg),
        "config": config,
        "versions": versions(_model_class(cfg)),
        "run_dir": str(run_dir),
        # the GPUs a launcher gave this job (hydra/launcher=gpus: Ray sets it per job), None when unset
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": now(),
    }


@dataclass
class Progress:
    """What a job has determined and measured so far, filled in stage by stage; a failure keeps
    what came before it (a job that fails while predicting keeps its fit)."""

    header: dict[str, Any]
    device: str | None = None
    prepared: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    efficiency: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    metrics_by_kind: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    segmentation_threshold: dict[str, Any] | None = None  # SegF1's threshold and its rule (metrics.seg_f1)
    submission: dict[str, Any] | None = None  # the private test sets' export (ulsad_bench/submission.py)
    error: str | None = None
    traceback: str | None = None
    finished: str | None = None

    def fail(self, err: BaseException, hint: str = "") -> None:
        """The job failed on ``err`` (called in its ``except`` block: the traceback is the error's)."""
        self.error = f"{type(err).__name__}: {err}" + (f" | {hint}" if hint else "")
        self.traceback = traceback.format_exc(limit=20)
        self.finished = now()


def out_of_memory_hint(err: BaseException, spec: JobSpec) -> str:
    """What to lower when the GPU ran out of memory (empty for other errors)."""
    if not isinstance(err, torch.cuda.OutOfMemoryError):
        return ""
    return (
        f"out of GPU memory with model.batch_size={spec.model_settings.get('batch_size')}, "
        f"eval_batch_size={spec.eval_batch_size}, profile.batch_size={spec.profile.batch_size}: "
        "lower these (or dataset.image_size) and run again"
    )


def assemble(progress: Progress, kept_ok_record: Path | None = None) -> dict[str, Any]:
    """The record of a job as it stands: ``ok`` once it finished without an error, ``failed``
    with the error and its traceback, ``running`` before either."""
    status = "failed" if progress.error is not None else "ok" if progress.finished else "running"
    record: dict[str, Any] = {"status": status, **progress.header}
    if progress.device is not None:
        record["device"] = progress.device
    record.update(progress.prepared)
    for name in ("fit", "selection", "hyperparameters"):
        value = getattr(progress, name)
        if value is not None:
            record[name] = value
    if progress.timing:
        record["timing"] = progress.timing
    for name in ("efficiency", "metrics", "metrics_by_kind", "thresholds", "segmentation_threshold", "submission"):
        value = getattr(progress, name)
        if value is not None:
            record[name] = value
    if progress.error is not None:
        record["error"] = progress.error
        record["traceback"] = progress.traceback
    if kept_ok_record is not None:
        record["kept_ok_record"] = str(kept_ok_record)
    if progress.finished is not None:
        record["finished"] = progress.finished
    return record
