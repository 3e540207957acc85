"""Run records -> one pandas DataFrame (one row per record), with failed and conflicting records set apart.

A *cell* of a table is ``(dataset, category, model, variant, backbone, protocol)`` aggregated over
seeds: numbers of the authors' evaluation protocol (or any of its parts, ``protocol.tag``) never
share a cell with clean ones.
Before anything is averaged, :func:`load_results` checks every cell:

- two ok records of one cell and seed with the same config hash are the same job twice (a copied
  folder): the one finished last is kept, the other is listed as a duplicate;
- two ok records of one cell and seed with *different* config hashes are an error: neither is
  used, and the conflict is listed with the config keys that differ;
- ok records of one cell whose configs differ beyond the seed in any result key (the keys that
  :data:`ulsad_bench.config.NON_RESULT_KEYS` does not exempt, the same that the config hash and
  the run folder use) are an error too: the cell is left empty and the conflict listed. Runs that
  differ on purpose belong in different variants.

Failed, unreadable and malformed records (schema: :class:`ulsad_bench.records.RunRecord`), and
failed attempts kept beside an ok record (``attempts/``), are kept in :attr:`Results.failed` and
never averaged in. Records made from a git tree with uncommitted changes are listed in
:attr:`Results.dirty`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from ..config import CONF_DIR, flatten, is_result_key, result_config
from ..protocol import Protocol
from ..records import find_records, inspect_record, is_attempt, is_dirty, is_sealed, weights_policy
from .naming import ALL_METRICS, KINDS, PRO_PREFIX, SEG_F1, SPRO_METRICS

CELL = ["dataset", "category", "model", "variant", "backbone", "protocol"]
ULSAD_KEYS = ("lambda_l", "lambda_g", "loss_pg", "loss_lg", "branch", "alpha", "beta")
#: the metric columns every row has; AU-PRO at further limits (``aupro_<limit>``) become columns where
#: records have them (:func:`_metric_columns`)
RECORD_METRICS = (*ALL_METRICS, *SPRO_METRICS, SEG_F1)
KIND_COLUMNS = tuple(f"{kind}_{metric}" for kind in KINDS for metric in RECORD_METRICS)
# MVTec LOCO's official "mean" AUC-sPRO: (logical + structural) / 2, per record
MEAN_SPRO_COLUMNS = tuple(f"mean_{metric}" for metric in SPRO_METRICS)
EFFICIENCY_COLUMNS = ("throughput", "peak_memory_gb", "throughput_batch1", "latency_ms")


@dataclass
class Results:
    """Every record under a results folder.

    Attributes:
        records: one row per readable record (ok and failed), metrics in percent; column
            ``excluded`` says why an ok record is not used ("" when it is).
        failed: failed or unreadable records (path, cell, seed, error).
        conflicts: one dict per conflict (cell, seeds, detail, paths).
        duplicates: one line per record dropped as a duplicate.
        root: the results folder.
    """

    records: pd.DataFrame
    failed: pd.DataFrame
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    root: Path = Path(".")
    dirty: list[str] = field(default_factory=list)
    unsealed: list[str] = field(default_factory=list)

    _scopes: dict[tuple[tuple[str, Any], ...], pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> pd.DataFrame:
        """The records tables are built from: status ok, not excluded."""
        frame = self.records
        return frame[(frame["status"] == "ok") & (frame["excluded"] == "")]

    def scope(self, **where: Any) -> pd.DataFrame:
        """Records of every status matching ``column=value`` pairs (cached: tables ask often)."""
        key = tuple(sorted(where.items()))
        if key not in self._scopes:
            frame = self.records[[*CELL, "seed", "status", "excluded", "error", "path"]]
            mask = pd.Series(True, index=frame.index)
            for column, value in where.items():
                mask &= frame[column] == value
            self._scopes[key] = frame[mask]
        return self._scopes[key]


def experiment_config(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config keys that make two runs of one cell the same experiment: every
    result key but the seed."""
    return result_config(config, ignore=("seed",))


def config_key(config: dict[str, Any]) -> str:
    """Hash of :func:`experiment_config`: equal for the seeds of one experiment."""
    return hashlib.sha256(json.dumps(experiment_config(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def paper_model_settings(model: str) -> dict[str, Any] | None:
    """The model's settings as ``conf/model/<model>.yaml`` gives them (the paper's setting: the
    defaults are the paper's, README "The paper's setting"), flattened; None for a model without one."""
    path = CONF_DIR / "model" / f"{model}.yaml"
    if not path.is_file():  # a model whose config is not in conf/model (a researcher's own)
        return None
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # plain YAML, no interpolation
    return flatten(content) if isinstance(content, dict) else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool | str):
        return float(a) == float(b)
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


#: model settings that are no part of the paper's setting to compare: where a file lies (its content is
#: checked through the data fingerprint and the weights' sha256; EfficientAD's and DRÆM's paper setting is
#: judged by their record, ``hyperparameters.paper_setting``), and how much work runs at once (same results)
NOT_COMPARED = ("teacher_weights", "penalty_dir", "penalty_workers", "feature_batch_size", "anomaly_source_dir")


def off_paper_settings(model: str, model_cfg: dict[str, Any]) -> str:
    """``"epochs=100 (paper: 200), feature_dim=128 (paper: 384)"``: the model's result settings that
    differ from the paper's (:func:`paper_model_settings`); "" when none does or none is known."""
    paper = paper_model_settings(model)
    if paper is None:
        return ""
    used = flatten(model_cfg)
    parts = [
        f"{key}={json.dumps(used.get(key), default=str)} (paper: {json.dumps(default, default=str)})"
        for key, default in paper.items()
        if is_result_key(f"model.{key}")
        and key not in NOT_COMPARED
        and key in used
        and not _same(used.get(key), default)
    ]
    return ", ".join(parts)


def substitute_text(hyper: Mapping[str, Any]) -> str:
    """What a record's model ran instead of the paper's setting (``hyperparameters.paper_setting``
    false): its ``substitute`` (DRAEM: ``anomaly source generated``), or EfficientAD's teacher and
    penalty (records written before the field); "" for the paper's setting."""
    if hyper.get("paper_setting") is not False:
        return ""
    if hyper.get("substitute"):
        return str(hyper["substitute"])
    return f"teacher {hyper.get('teacher_setting')}, penalty {hyper.get('penalty_setting')}"


def _pct(value: Any) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def _metric_columns(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A record's metrics in percent: every one of :data:`RECORD_METRICS` (NaN where absent) and AU-PRO
    at each further limit it has (``metrics.pro_limits``: ``aupro_0.05``, ...)."""
    columns = {metric: _pct(metrics.get(metric)) for metric in RECORD_METRICS}
    columns.update({key: _pct(value) for key, value in metrics.items() if key.startswith(PRO_PREFIX)})
    return columns


def _row(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    config = record.get("config") or {}
    model_cfg = config.get("model") or {}
    weights = record.get("weights") or {}
    metrics = record.get("metrics") or {}
    efficiency = record.get("efficiency") or {}
    seed = record.get("seed")
    row: dict[str, Any] = {
        "path": str(path),
        "run_dir": str(path.parent),
        "status": str(record.get("status", "unknown")),
        "error": str(record.get("error", "")),
        "model": str(record.get("model", "")),
        "variant": record.get("variant") or "",
        "dataset": str(record.get("dataset", "")),
        "category": str(record.get("category", "")),
        "seed": int(seed) if seed is not None else -1,
        "backbone": str(record.get("backbone", "")),
        "weights_policy": weights_policy(record),
        "weights_sha256": str(weights.get("sha256") or ""),
        "val_source": str(record.get("val_source", "")),
        "config_hash": str(record.get("config_hash", "")),
        "config_key": config_key(config),
        "experiment": json.dumps(experiment_config(config), sort_keys=True, default=str),
        "finished": str(record.get("finished", "")),
        "device": str(record.get("device", "")),
        "precision": str(record.get("precision", "")),
        "categories": tuple(str(c) for c in (config.get("dataset") or {}).get("categories") or ()),
    }
    protocol = record.get("protocol") or {}
    if "tag" not in protocol:  # records written before the protocol option: their config says (clean)
        protocol = Protocol.from_config(config).as_record() if config.get("protocol") else {"tag": "clean"}
    row["protocol"] = str(protocol["tag"])
    selection = record.get("selection") or {}
    row["selected_epoch"] = selection.get("epoch")
    row["selection_curve"] = tuple((int(p["epoch"]), float(p["image_auroc"])) for p in selection.get("curve", ()))
    row["test_dropped"] = (record.get("test_subset") or {}).get("dropped", 0)
    row["val_on_test"] = "TEST" in row["val_source"]
    row["dirty"] = is_dirty(record)
    data = record.get("data") or {}
    row["center_crop"] = data.get("center_crop")
    row["image_size"] = (config.get("dataset") or {}).get("image_size")
    row["weights_unverified"] = weights.get("verified") is False
    hyper = record.get("hyperparameters") or {}
    row["substitute"] = substitute_text(hyper)
    row["off_paper"] = off_paper_settings(row["model"], model_cfg) if not row["variant"] else ""
    row.update(_metric_columns(metrics))
    by_kind = record.get("metrics_by_kind") or {}
    for kind in KINDS:
        row.update({f"{kind}_{k}": v for k, v in _metric_columns(by_kind.get(kind) or {}).items()})
    for metric in SPRO_METRICS:
        row[f"mean_{metric}"] = (row[f"logical_{metric}"] + row[f"structural_{metric}"]) / 2
    row["throughput"] = float(efficiency.get("throughput_img_s", float("nan")))
    row["peak_memory_gb"] = float(efficiency.get("peak_memory_mb", float("nan"))) / 1024.0
    row["memory_measure"] = str(efficiency.get("memory_measure", efficiency.get("memory_kind", "")))
    row["throughput_batch1"] = float(efficiency.get("throughput_batch1_img_s", float("nan")))
    row["latency_ms"] = float(efficiency.get("latency_ms", float("nan")))
    row["efficiency_device"] = str(efficiency.get("device", ""))
    row["efficiency_batch_size"] = efficiency.get("batch_size")
    for key in ULSAD_KEYS:
        row[key] = model_cfg.get(key) if row["model"] == "ulsad" else None
    return row


def _differing_keys(configs: list[dict[str, Any]], limit: int = 4) -> str:
    flat = [experiment_config(c) for c in configs]
    keys = sorted(set().union(*flat))
    parts = []
    for key in keys:
        values = [json.dumps(f.get(key), default=str) for f in flat]
        if len(set(values)) > 1:
            parts.append(f"{key}: {' vs '.join(dict.fromkeys(values))}")
    more = f" (+{len(parts) - limit} more keys)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more if parts else "config hashes differ"


def _check_cells(frame: pd.DataFrame, configs: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Set ``excluded`` on duplicate and conflicting ok records; return (conflicts, duplicates)."""
    conflicts: list[dict[str, Any]] = []
    duplicates: list[str] = []
    ok = frame[frame["status"] == "ok"]
    for cell, group in ok.groupby(CELL, sort=True):
        for seed, same_seed in group.groupby("seed"):
            if len(same_seed) < 2:
                continue
            if same_seed["config_hash"].nunique() == 1:
                keep = same_seed.sort_values(["finished", "path"]).index[-1]
                for index in same_seed.index.drop(keep):
                    frame.loc[index, "excluded"] = "duplicate"
                    duplicates.append(f"{frame.loc[index, 'path']} (same job as {frame.loc[keep, 'path']})")
            else:
                frame.loc[same_seed.index, "excluded"] = "conflict"
                conflicts.append(
                    {
                        **dict(zip(CELL, cell, strict=True)),
                        "seeds": [int(seed)],
                        "detail": "records of one seed with different config hashes: "
                        + _differing_keys([configs[p] for p in same_seed["path"]]),
                        "paths": list(same_seed["path"]),
                    }
                )
        kept = frame.loc[group.index]
        kept = kept[kept["excluded"] == ""]
        if kept["config_key"].nunique() > 1:
            frame.loc[kept.index, "excluded"] = "conflict"
            conflicts.append(
                {
                    **dict(zip(CELL, cell, strict=True)),
                    "seeds": sorted(int(s) for s in kept["seed"].unique()),
                    "detail": "seeds of one cell run with different configs (give each its own variant): "
                    + _differing_keys([configs[p] for p in kept["path"]]),
                    "paths": list(kept["path"]),
                }
            )
    return conflicts, duplicates


def load_results(root: Path | str) -> Results:
    """Read every ``record.json`` under ``root`` (see the module docstring for the checks)."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    dirty: list[str] = []
    unsealed: list[str] = []
    for path in find_records(root):
        read = inspect_record(path)
        record = read.record
        if record is None:
            status = "unreadable" if str(read.problem).startswith("unreadable") else "malformed"
            failed.append({"path": str(path), "status": status, "error": str(read.problem)})
            continue
        if is_attempt(path):
            if record.get("status") != "ok":  # an ok record is never left in attempts/ (see the runner)
                row = _row(path, record)
                failed.append(
                    {
                        **{k: row[k] for k in ("path", "status", "error", *CELL, "seed")},
                        "status": "failed attempt",
                        "error": f"{row['error']} (a failed re-run; the ok record beside it is kept and used)",
                    }
                )
            continue
        if is_dirty(record) and record.get("status") == "ok":
            dirty.append(f"{path} (git {record['versions']['git']})")
        if not is_sealed(record) and record.get("status") == "ok":
            unsealed.append(f"{path} (schema {record.get('schema_version', 1)})")
        row = _row(path, record)
        configs[row["path"]] = record.get("config") or {}
        rows.append(row)
        if row["status"] != "ok":
            failed.append({k: row[k] for k in ("path", "status", "error", *CELL, "seed")})
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=[*CELL, "path", "status", "seed", "config_key", "config_hash"])
    frame["excluded"] = ""
    conflicts, duplicates = _check_cells(frame, configs)
    failed_frame = pd.DataFrame(failed, columns=["path", "status", "error", *CELL, "seed"])
    return Results(
        records=frame,
        failed=failed_frame,
        conflicts=conflicts,
        duplicates=duplicates,
        root=root,
        dirty=dirty,
        unsealed=unsealed,
    )
