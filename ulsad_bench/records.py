"""The run record: one JSON file per job, written atomically, validated when read.

A record holds everything needed to trace a number in a table back to its run: the resolved
config and its hash, the model's hyperparameters, the dataset counts and fingerprint, the
backbone weights, metrics (fractions in [0, 1]), timings, efficiency figures, versions, device
and status. Its fields are :class:`RunRecord` (pydantic): a file that does not satisfy it, or
is not JSON, is *malformed* and never counts as a result (:func:`inspect_record` says why).

Where a job's files go (``<run_dir>`` is ``outputs/<dataset>/<category>/<model>/.../seed=<n>``):

- ``<run_dir>/record.json`` (+ ``predictions.csv``, ``maps.npz``): the job's result. An ok record
  is only ever replaced by a newer ok record (with its own files); a failed record is written
  here only while there is no ok record.
- ``<run_dir>/attempts/<UTC time>-<pid>/record.json``: a failed attempt made while an ok record
  was already there (a re-run with another config, an out-of-memory, a CUDA device missing): the
  ok record and its files are kept, the failure stays visible to the sweep summary and the report.

Resume (``resume=strict``, the default) skips a job only when its ok record has the same config
hash, the same data fingerprint (the files the job read: names, sizes, mtimes) and the same
versions of the code that makes the numbers (:data:`RESULT_VERSIONS`: the git commit with a digest
of any uncommitted changes, and the digest of the job's code); ``resume=content`` also compares
the digest of every file's bytes; ``resume=config`` compares the config hash only;
``resume=false`` always runs. :func:`resume_check` says why a job runs again.

A record is sealed when written: ``record_digest`` is a SHA-256 of the rest of its content
(:func:`record_digest`). A record whose digest does not match (edited by hand after it was
written) or is missing from a record of this schema, whose identity fields (model, variant,
dataset, category, seed) disagree with its own stored config, or whose stored config does not
hash to its ``config_hash`` is malformed: it is listed as such and never counts as a result
(:func:`integrity_problem`). A record of an earlier schema (before records were sealed) has no
digest: it stays a result, its identity and config hash are checked, and the report lists it as
unsealed (its numbers cannot be checked; :func:`is_sealed`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .artifacts import RECORD_NAME, write_json_atomic
from .config import result_config

SCHEMA_VERSION = 3
ATTEMPTS_DIR = "attempts"
RESUME_MODES = ("strict", "content", "config", "off")
#: versions whose change can change a job's numbers (the record's ``versions`` holds more)
RESULT_VERSIONS = ("package", "git", "code", "torch", "torchvision", "anomalib")
#: the fields that name a record's job, each also read from its stored config (:func:`record_identity`)
IDENTITY_FIELDS = ("model", "variant", "dataset", "category", "seed")
DIGEST_FIELD = "record_digest"
#: the order in which data changes are described (``inputs``: files read besides the images)
FINGERPRINT_GROUPS = ("train", "val", "test", "inputs")


# ----------------------------------------------------------------------------- schema


class Metrics(BaseModel):
    """Metrics of one test set (fractions in [0, 1]); further metrics may follow."""

    model_config = ConfigDict(extra="allow")

    image_auroc: float = Field(ge=0.0, le=1.0)
    pixel_auroc: float = Field(ge=0.0, le=1.0)
    aupro: float = Field(ge=0.0, le=1.0)


class SplitFingerprint(BaseModel):
    files: int = Field(ge=0)
    names_sha256: str
    sha256: str
    content_sha256: str | None = None


class DataFingerprint(BaseModel):
    """What a job read: per split (and ``inputs``, the other files it read: MVTec LOCO's
    ``defects_config.json``, VisA's split CSV) the number of files (images and masks), a hash of
    their names (relative to the category folder), a hash of names, sizes and mtimes and, when the
    files were read, a hash of their bytes (``content_sha256``)."""

    sha256: str
    splits: dict[str, SplitFingerprint]
    content_sha256: str | None = None


class RunRecord(BaseModel):
    """Every field of ``record.json`` (assembled by :mod:`ulsad_bench.job_record`); a field not
    named here makes a record malformed. Nested values are checked where the report relies on
    them (metrics, fingerprint) and kept as written otherwise."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    status: Literal["ok", "failed"]
    # identity and settings, known before the job runs
    model: str
    variant: str | None = None
    dataset: str
    category: str
    seed: int
    precision: str | None = None
    config_hash: str
    protocol: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any]
    versions: dict[str, str | None] = Field(default_factory=dict)
    run_dir: str | None = None
    cuda_visible_devices: str | None = None
    started: str | None = None
    # what preparing the job determined
    device: str | None = None
    backbone: str = ""
    weights: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: DataFingerprint | None = None
    val_source: str | None = None
    test_subset: dict[str, Any] | None = None
    metric_notes: dict[str, str] | None = None
    # what the job measured
    fit: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    timing: dict[str, Any] = Field(default_factory=dict)
    efficiency: dict[str, Any] | None = None
    metrics: Metrics | None = None
    metrics_by_kind: dict[str, Metrics] = Field(default_factory=dict)
    thresholds: dict[str, Any] | None = None
    # SegF1's segmentation threshold, its rule and images (metrics.seg_f1); the export of test sets
    # without ground truth for an evaluation server (MVTec AD 2: folder, counts, format)
    segmentation_threshold: dict[str, Any] | None = None
    submission: dict[str, Any] | None = None
    # how it ended
    error: str | None = None
    traceback: str | None = None
    kept_ok_record: str | None = None
    finished: str | None = None
    record_digest: str | None = None

    @model_validator(mode="after")
    def _status_fields(self) -> RunRecord:
        if self.status == "ok" and self.metrics is None:
            raise ValueError("status ok without metrics")
        if self.status == "failed" and not self.error:
            raise ValueError("status failed without an error message")
        return self


def _validation_message(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:4]:
        where = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    more = f" (+{err.error_count() - 4} more)" if err.error_count() > 4 else ""
    return "; ".join(parts) + more


# ----------------------------------------------------------------------------- writing and reading


def config_hash(config: Mapping[str, Any]) -> str:
    """Hash of the result keys of a resolved config (:func:`ulsad_bench.config.result_config`)."""
    relevant = result_config(config)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a record's JSON content without its ``record_digest``: keys sorted, no
    whitespace, values as JSON writes them (what a reader of the file sees)."""
    content = {k: v for k, v in payload.items() if k != DIGEST_FIELD}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def record_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields (:data:`IDENTITY_FIELDS`) of the job a resolved config composes, as its
    record states them (a seed that is not an integer: -1, the job then fails its settings check)."""
    model, dataset = config.get("model") or {}, config.get("dataset") or {}
    seed, variant = config.get("seed"), config.get("variant")
    return {
        "model": str(model.get("name")),
        "variant": None if variant is None else str(variant),
        "dataset": str(dataset.get("name")),
        "category": str(dataset.get("category")),
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else -1,
    }


def write_record(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """``<run_dir>/record.json``, atomically, with this schema's version first and sealed with its
    :func:`record_digest` last: the one writer of records (assembled by :mod:`ulsad_bench.job_record`)."""
    path = Path(run_dir) / RECORD_NAME
    fields = {k: v for k, v in record.items() if k not in ("schema_version", DIGEST_FIELD)}
    payload = json.loads(json.dumps({"schema_version": SCHEMA_VERSION, **fields}, default=str))
    payload[DIGEST_FIELD] = record_digest(payload)
    write_json_atomic(path, payload)
    return path


def _schema(payload: Mapping[str, Any]) -> int:
    value = payload.get("schema_version", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def is_sealed(record: Mapping[str, Any]) -> bool:
    """Whether a record carries its digest (records of schema < 3, written before, do not)."""
    return bool(record.get(DIGEST_FIELD))


def integrity_problem(payload: Mapping[str, Any]) -> str | None:
    """None for a record as its job wrote it, else what shows it was not (module docstring)."""
    stored = payload.get(DIGEST_FIELD)
    if not stored and _schema(payload) >= SCHEMA_VERSION:
        return f"no {DIGEST_FIELD}, though its schema ({_schema(payload)}) seals records: edited or truncated by hand"
    if stored and stored != record_digest(payload):
        return f"edited after it was written: its {DIGEST_FIELD} does not match its content"
    expected = record_identity(payload.get("config") or {})
    differing = [
        f"{k}={payload.get(k)!r} but its config says {expected[k]!r}"
        for k in IDENTITY_FIELDS
        if payload.get(k) != expected[k]
    ]
    if differing:
        return "identity disagrees with its stored config: " + "; ".join(differing)
    if payload.get("config_hash") != config_hash(payload.get("config") or {}):
        return f"config_hash {payload.get('config_hash')} is not the hash of its stored config"
    return None


@dataclass(frozen=True)
class RecordRead:
    """A record file as read: the record when it is valid, else why it is not."""

    path: Path
    record: dict[str, Any] | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.record is not None and self.record.get("status") == "ok"


def inspect_record(path: Path) -> RecordRead:
    """Read and validate one record file; never raises for a bad file."""
    path = Path(path)
    try:
        with open(path) as handle:
            payload = json.load(handle)
    except FileNotFoundError:
        return RecordRead(path, None, "missing")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return RecordRead(path, None, f"unreadable: not a JSON record ({type(err).__name__}: {err})")
    if not isinstance(payload, dict):
        return RecordRead(path, None, f"malformed: expected a JSON object, got {type(payload).__name__}")
    try:
        RunRecord.model_validate(payload)
    except ValidationError as err:
        return RecordRead(path, None, f"malformed: {_validation_message(err)}")
    problem = integrity_problem(payload)
    if problem:
        return RecordRead(path, None, f"malformed: {problem}")
    return RecordRead(path, payload)


def read_record(path: Path) -> dict[str, Any] | None:
    """The valid record at ``path``, or None when it is missing, unreadable or malformed."""
    return inspect_record(path).record


def find_records(root: Path) -> list[Path]:
    """Every record file under ``root`` (failed attempts under ``attempts/`` included), sorted."""
    return sorted(Path(root).rglob(RECORD_NAME))


def is_attempt(path: Path) -> bool:
    """Whether a record file is a failed attempt kept beside an ok record."""
    return Path(path).parent.parent.name == ATTEMPTS_DIR


def new_attempt_dir(run_dir: Path) -> Path:
    """A fresh folder ``<run_dir>/attempts/<UTC time>-<pid>`` for one attempt's files."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = Path(run_dir) / ATTEMPTS_DIR / f"{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


# ----------------------------------------------------------------------------- resume


def resume_mode(value: Any) -> str:
    """``resume`` as one of :data:`RESUME_MODES` (``true`` = strict, ``false`` = off)."""
    if value is True or value is None:
        return "strict"
    if value is False:
        return "off"
    text = str(value).lower()
    if text in ("true", "strict"):
        return "strict"
    if text in ("false", "off", "no", "never"):
        return "off"
    if text in ("config", "content"):
        return text
    raise ValueError(f"resume={value!r}: expected strict (default), content, config or false")


def _split_change(name: str, old: Mapping[str, Any], new: Mapping[str, Any], content: bool = False) -> str:
    n_old, n_new = int(old["files"]), int(new["files"])
    if n_old != n_new:
        delta = n_new - n_old
        what = f"{abs(delta)} file{'s' if abs(delta) != 1 else ''} {'added' if delta > 0 else 'removed'}"
        return f"{name}: {what} ({n_old} -> {n_new} files)"
    if old["names_sha256"] != new["names_sha256"]:
        return f"{name}: other files under the same count ({n_new})"
    if content:
        return f"{name}: {n_new} files with other bytes"
    return f"{name}: {n_new} files with other sizes or modification times"


def _group_order(name: str) -> int:
    return FINGERPRINT_GROUPS.index(name) if name in FINGERPRINT_GROUPS else len(FINGERPRINT_GROUPS)


def describe_data_change(old: Mapping[str, Any] | None, new: Mapping[str, Any], content: bool = False) -> str | None:
    """None when two data fingerprints agree, else what changed (``"test: 1 file removed ..."``).
    ``content``: compare the digests of the files' bytes (``resume=content``), not their stat."""
    if old is None:
        return "the record has no data fingerprint (made before fingerprints were recorded)"
    key = "content_sha256" if content else "sha256"
    if content and not old.get(key):
        return "the record has no content digests of its files"
    if old.get(key) == new.get(key):
        return None
    old_splits, new_splits = old.get("splits", {}), new.get("splits", {})
    changes = []
    for name in sorted(set(old_splits) | set(new_splits), key=_group_order):
        if name not in old_splits or name not in new_splits:
            what = "split" if name != "inputs" else "other files read"
            changes.append(f"{name}: {what} {'added' if name in new_splits else 'removed'}")
        elif old_splits[name].get(key) != new_splits[name].get(key):
            changes.append(_split_change(name, old_splits[name], new_splits[name], content))
    return "; ".join(changes) or "fingerprints differ"


def describe_version_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    changes = [f"{k} {old.get(k)} -> {new.get(k)}" for k in RESULT_VERSIONS if old.get(k) != new.get(k)]
    return ", ".join(changes) or None


def resume_check(
    record: Mapping[str, Any] | None,
    mode: str,
    config_hash_now: str,
    fingerprint: Mapping[str, Any] | None,
    versions_now: Mapping[str, Any],
) -> tuple[bool, str]:
    """``(skip, reason)``: whether an existing ok ``record`` makes the job unnecessary, and why
    (or why not). ``fingerprint`` None (the data could not be listed) means re-run: the job then
    meets the same error and records it."""
    if mode == "off":
        return False, "resume=false"
    if record is None or record.get("status") != "ok":
        return False, "no ok record"
    if record.get("config_hash") != config_hash_now:
        return False, f"config changed (hash {record.get('config_hash')} -> {config_hash_now})"
    if mode == "config":
        return True, f"same config hash {config_hash_now} (resume=config)"
    if fingerprint is None:
        return False, "the data could not be listed"
    data = describe_data_change(record.get("data_fingerprint"), fingerprint, content=mode == "content")
    if data:
        return False, f"data changed: {data}"
    code = describe_version_change(record.get("versions") or {}, versions_now)
    if code:
        return False, f"versions changed: {code}"
    data_kind = "data (file contents)" if mode == "content" else "data"
    return True, f"same config hash {config_hash_now}, {data_kind} and versions"


def is_dirty(record: Mapping[str, Any]) -> bool:
    """Whether a record was made from a git tree with uncommitted changes (``<commit>-dirty-<digest>``)."""
    return "-dirty" in str((record.get("versions") or {}).get("git") or "")


# ----------------------------------------------------------------------------- the summary CLI


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def weights_policy(record: Mapping[str, Any]) -> str:
    """A record's ``weights.policy`` (imagenet / torchvision / file / random; ``kind`` in records
    written before the field was renamed)."""
    weights = record.get("weights") or {}
    return str(weights.get("policy", weights.get("kind", "")))


def summary_line(record: Mapping[str, Any]) -> str:
    """One line per job: what ran, its metrics (percent) and times."""
    head = (
        f"[{record.get('status')}] {record.get('model')}{'/' + record['variant'] if record.get('variant') else ''}"
        f" {record.get('dataset')}/{record.get('category')} seed={record.get('seed')}"
    )
    if record.get("status") != "ok":
        return f"{head} | {record.get('error', '')}"
    m = record["metrics"]
    line = f"{head} | I-AUROC {_pct(m['image_auroc'])} P-AUROC {_pct(m['pixel_auroc'])} AUPRO {_pct(m['aupro'])}"
    others = [key for key in m if key.startswith("aupro_")] + [key for key in ("seg_f1",) if key in m]
    line += "".join(f" {key.replace('aupro_', 'AUPRO@').replace('seg_f1', 'SegF1')} {_pct(m[key])}" for key in others)
    for kind, km in (record.get("metrics_by_kind") or {}).items():
        line += f" | {kind} I-AUROC {_pct(km['image_auroc'])}"
    timing = record.get("timing") or {}
    line += f" | fit {timing.get('fit_s', 0):.1f}s predict {timing.get('predict_s', 0):.1f}s"
    if weights_policy(record) == "random":
        line += " | RANDOM-INIT backbone"
    if is_dirty(record):
        line += " | DIRTY git tree"
    return line


def main(argv: list[str] | None = None) -> int:
    """``python -m ulsad_bench.records RESULTS_DIR``: one summary line per record."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    paths = find_records(args.results)
    bad = 0
    for path in paths:
        read = inspect_record(path)
        if read.record is None:
            bad += 1
            print(f"[malformed] {path}: {read.problem}")
            continue
        prefix = "[attempt] " if is_attempt(path) else ""
        print(prefix + summary_line(read.record))
    print(f"{len(paths)} records under {args.results} ({bad} malformed or unreadable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
