"""Experiment tracking: send a finished job's record to Weights & Biases (``logger=wandb``).

Offline by default: nothing leaves the machine, no login is asked for, and the run is
written under the job's folder to be synced later (``wandb sync``). What is logged: the
resolved config, status, metrics (overall and per anomaly kind), timings, efficiency
figures, and a few panels (image | ground truth | anomaly map) from ``maps.npz``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """``metrics/<name>``, ``<kind>/<name>``, ``timing/<name>`` and ``efficiency/<name>`` values."""
    out: dict[str, float] = {}
    for name, value in (record.get("metrics") or {}).items():
        out[f"metrics/{name}"] = value
    for kind, metrics in (record.get("metrics_by_kind") or {}).items():
        for name, value in metrics.items():
            out[f"{kind}/{name}"] = value
    for group in ("timing", "efficiency"):
        for name, value in (record.get(group) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{group}/{name}"] = value
    return out


def _panels(run_dir: Path, count: int) -> list[tuple[np.ndarray, str]]:
    path = run_dir / "maps.npz"
    if count <= 0 or not path.is_file():
        return []
    data = np.load(path)
    panels = []
    for i in range(min(count, len(data["map"]))):
        image = data["image"][i].transpose(1, 2, 0)
        mask = np.repeat(data["mask"][i][..., None].astype(np.uint8) * 255, 3, axis=2)
        amap = data["map"][i].astype(np.float32)
        amap = (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)
        heat = np.repeat((amap[..., None] * 255).astype(np.uint8), 3, axis=2)
        panels.append((np.concatenate([image, mask, heat], axis=1), str(data["defect_type"][i])))
    return panels


def log_record(logger_cfg: DictConfig, record: dict[str, Any], run_dir: Path) -> None:
    """Log one job to W&B (see module docstring)."""
    import wandb

    mode = str(logger_cfg.get("mode", "offline"))
    os.environ.setdefault("WANDB_MODE", mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    name = (
        f"{record['model']}{'-' + record['variant'] if record.get('variant') else ''}/"
        f"{record['dataset']}/{record['category']}/seed={record['seed']}"
    )
    run = wandb.init(
        project=str(logger_cfg.project),
        entity=logger_cfg.get("entity"),
        name=name,
        group=f"{record['dataset']}/{record['category']}",
        job_type=str(record["model"]),
        config=record.get("config"),
        dir=str(run_dir),
        mode=mode,
        tags=[record["model"], record["dataset"], record.get("weights", {}).get("kind", "unknown")],
        reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=True),
    )
    try:
        metrics = flat_metrics(record)
        images = [wandb.Image(panel, caption=caption) for panel, caption in _panels(run_dir, int(logger_cfg.images))]
        if images:
            metrics["anomaly_maps"] = images
        run.log(metrics)
        run.summary["status"] = record.get("status")
        if record.get("error"):
            run.summary["error"] = record["error"]
    finally:
        run.finish()
