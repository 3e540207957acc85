"""Whether a job runs or skips itself: one decision, taken by the job (:mod:`ulsad_bench.runner`)
and foreseen by the plan of a sweep (:mod:`ulsad_bench.plan`), over the job's spec.

``resume=strict`` (default) lists the category's files for the data fingerprint (names, sizes,
modification times; nothing is read) and compares it, the config hash and the code versions with
the ok record in the run folder (:func:`ulsad_bench.records.resume_check`); ``resume=content``
reads every file and compares the digests of their bytes too (a file rewritten at the same size
with its modification time restored is found); ``resume=config`` compares the config hash only;
``resume=false`` always runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DatasetError, Splits
from .records import RECORD_NAME, RecordRead, inspect_record, resume_check
from .spec import JobSpec


@dataclass(frozen=True)
class Listing:
    """A category's splits as a job lists them, their fingerprint, or why they cannot be listed."""

    splits: Splits | None
    fingerprint: dict[str, Any] | None
    problem: str | None = None


def list_splits(spec: JobSpec) -> Listing:
    """The job's splits and their fingerprint; a dataset that cannot be listed gives the reason
    (the job then fails on the same error and records it)."""
    try:
        splits = spec.data.splits()
    except (DatasetError, OSError, ValueError) as err:
        return Listing(None, None, f"{type(err).__name__}: {err}")
    return Listing(splits, splits.fingerprint(content=spec.resume == "content", extra=spec.input_files()))


@dataclass(frozen=True)
class ResumeDecision:
    """``skip``: the ok record in the run folder makes the job unnecessary; ``why``: the reason
    (or why it runs); ``existing``: the record found."""

    skip: bool
    why: str
    existing: RecordRead


def decide(
    spec: JobSpec, run_dir: Path, versions_now: Mapping[str, Any], listing: Listing | None = None
) -> ResumeDecision:
    """The job's resume decision in ``run_dir`` (module docstring). ``listing``: the splits when
    the caller listed them already (strict resume only needs them; listed here otherwise)."""
    existing = inspect_record(Path(run_dir) / RECORD_NAME)
    fingerprint = None
    if spec.resume in ("strict", "content"):
        fingerprint = (listing if listing is not None else list_splits(spec)).fingerprint
    skip, why = resume_check(existing.record, spec.resume, spec.config_hash, fingerprint, versions_now)
    return ResumeDecision(skip, why, existing)
