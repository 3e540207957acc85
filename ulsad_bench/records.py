"""The run record: one JSON file per job, written atomically.

A record holds everything needed to trace a number in a table back to its run: the resolved
config and its hash, the model's hyperparameters, the dataset counts, the backbone weights,
metrics (fractions in [0, 1]), timings, efficiency figures, versions, device and status.

Fields (``SCHEMA_VERSION`` 1): ``status`` ("ok" | "failed"), ``error`` and ``traceback``
(failed only), ``config``, ``config_hash``, ``model``, ``variant``, ``dataset``,
``category``, ``seed``, ``backbone``, ``weights``, ``data``, ``val_source``, ``metrics``,
``metrics_by_kind``, ``timing``, ``fit``, ``hyperparameters``, ``efficiency``,
``versions``, ``device``, ``precision``, ``started``, ``finished``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"
# Config keys that do not change what a job computes (where it writes, how it logs).
NON_RESULT_KEYS = ("output_root", "logger", "progress", "hydra", "resume", "fail_fast", "cache_dir")


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the parts of a resolved config that determine a job's results."""
    relevant = {k: v for k, v in config.items() if k not in NON_RESULT_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(payload, out, indent=2, sort_keys=False, default=str)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD_NAME
    write_json_atomic(path, {"schema_version": SCHEMA_VERSION, **record})
    return path


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is missing or not valid JSON."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def completed_record(run_dir: Path, expected_hash: str) -> dict[str, Any] | None:
    """The run's record if it finished with status ok for the same config hash, else None."""
    record = read_record(Path(run_dir) / RECORD_NAME)
    if record and record.get("status") == "ok" and record.get("config_hash") == expected_hash:
        return record
    return None


def find_records(root: Path) -> list[Path]:
    """Every record file under ``root``, sorted."""
    return sorted(Path(root).rglob(RECORD_NAME))


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def summary_line(record: dict[str, Any]) -> str:
    """One line per job: what ran, its metrics (percent) and times."""
    head = (
        f"[{record.get('status')}] {record.get('model')}{'/' + record['variant'] if record.get('variant') else ''}"
        f" {record.get('dataset')}/{record.get('category')} seed={record.get('seed')}"
    )
    if record.get("status") != "ok":
        return f"{head} | {record.get('error', '')}"
    m = record["metrics"]
    line = f"{head} | I-AUROC {_pct(m['image_auroc'])} P-AUROC {_pct(m['pixel_auroc'])} AUPRO {_pct(m['aupro'])}"
    for kind, km in record.get("metrics_by_kind", {}).items():
        line += f" | {kind} I-AUROC {_pct(km['image_auroc'])}"
    timing = record.get("timing", {})
    line += f" | fit {timing.get('fit_s', 0):.1f}s predict {timing.get('predict_s', 0):.1f}s"
    if record.get("weights", {}).get("kind") == "random":
        line += " | RANDOM-INIT backbone"
    return line


def main(argv: list[str] | None = None) -> int:
    """``python -m ulsad_bench.records RESULTS_DIR``: one summary line per record."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    paths = find_records(args.results)
    for path in paths:
        record = read_record(path)
        print(summary_line(record) if record else f"[unreadable] {path}")
    print(f"{len(paths)} records under {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
