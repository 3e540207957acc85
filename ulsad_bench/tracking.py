"""Experiment tracking: send a finished job's record to Weights & Biases (``logger=wandb``).

Offline by default: nothing leaves the machine, no login is asked for, and the run is
written under the job's folder to be synced later (``wandb sync``). What is logged: the
resolved config, status, metrics (overall and per anomaly kind), timings, efficiency
figures, and a few panels (image | ground truth | anomaly map) from ``maps.npz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import read_maps
from .records import weights_policy


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
    preview = read_maps(run_dir) if count > 0 else None
    if preview is None:
        return []
    panels = []
    for i in range(min(count, len(preview))):
        image = preview.image[i].transpose(1, 2, 0)
        mask = preview.mask_of(i)
        mask = np.zeros(image.shape[:2], np.float32) if mask is None else mask
        mask = np.repeat((mask[..., None] * 255).astype(np.uint8), 3, axis=2)
        amap = preview.map[i].astype(np.float32)
        amap = (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)
        heat = np.repeat((amap[..., None] * 255).astype(np.uint8), 3, axis=2)
        panels.append((np.concatenate([image, mask, heat], axis=1), str(preview.defect_type[i])))
    return panels


class WandbLogger:
    """``logger=wandb``: one W&B run per finished job (see the module docstring).

    The mode (``offline`` by default, ``online``, ``disabled``) is passed to ``wandb.init``;
    nothing is written into the process environment, so one job's setting never leaks into the
    next job of the same process.
    """

    def __init__(
        self, project: str, entity: str | None = None, mode: str = "offline", images: int = 4, name: str = "wandb"
    ) -> None:
        self.project, self.entity, self.mode, self.images, self.name = project, entity, mode, int(images), name

    def log_record(self, record: dict[str, Any], run_dir: Path) -> None:
        """Log one job's record (and a few anomaly-map panels from ``maps.npz``)."""
        import wandb

        name = (
            f"{record['model']}{'-' + record['variant'] if record.get('variant') else ''}/"
            f"{record['dataset']}/{record['category']}/seed={record['seed']}"
        )
        run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=name,
            group=f"{record['dataset']}/{record['category']}",
            job_type=str(record["model"]),
            config=record.get("config"),
            dir=str(run_dir),
            mode=self.mode,
            tags=[record["model"], record["dataset"], weights_policy(record) or "unknown"],
            reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True),
        )
        try:
            metrics: dict[str, Any] = dict(flat_metrics(record))
            panels = _panels(Path(run_dir), self.images)
            if panels:
                metrics["anomaly_maps"] = [wandb.Image(panel, caption=caption) for panel, caption in panels]
            run.log(metrics)
            run.summary["status"] = record.get("status")
            if record.get("error"):
                run.summary["error"] = record["error"]
        finally:
            run.finish()
