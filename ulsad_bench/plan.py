"""The plan of a sweep, before anything is launched: ``make sweep ... PLAN=1``.

``python -m ulsad_bench.sweep ... plan=1`` (:func:`make_plan`, :func:`format_plan`) runs no job
and starts no launcher. It prints:

- **the jobs**: Hydra's own expansion of the sweep (:func:`expand_sweep`): the master config is
  composed from ``run.py -m``'s command line as Hydra composes it, then ``hydra.sweeper.params``
  and the command line's overrides are split by the basic sweeper's
  ``BasicSweeper.split_arguments``, so sweeps in the extra overrides (``-- model.alpha=0.5,0.9``)
  and in presets' ``hydra.sweeper.params`` count as they will run;
- **which are done**: each job's config is composed as the launcher composes it
  (``ConfigLoader.load_sweep_config``), its run folder is ``hydra.sweep.dir`` /
  ``hydra.sweep.subdir`` resolved with the job's own task overrides (as ``run_job`` names it),
  and the job's own resume decision is taken there (:func:`ulsad_bench.records.resume_check`
  with the record found, the config hash, the data fingerprint listed now and the code
  versions: the data are only listed and stat'ed, never read);
- **the time**: the median seconds per job (``timing.load_s + fit_s + predict_s + profile_s +
  metrics_s``) of the ok records of the same model on the same kind of device (``cuda`` +
  GPU name, ``cpu`` + machine) under the results folder, else under ``outputs/``, x the jobs
  still to run; "unknown" without such a record;
- **the cache disk** the jobs still to run will need, an estimate from the configs' shapes and
  the listed splits (:func:`job_cache_entries`); entries that jobs share (features across seeds)
  are counted once, and entries already in the cache are not subtracted.

Everything runs with the working directory at the repository, as ``make sweep`` runs ``run.py``,
so relative paths (results, ``cache_dir``, ``dataset.root``) mean what they will mean for the jobs.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .categories import expand_all_categories
from .code_version import model_code_version
from .config import REPO, compose_sweep_job, hydra_app, master_config
from .data import Sample, Splits
from .environment import describe_device, resolve_device, versions
from .features import cache_bytes
from .joblock import LOCK_NAME
from .launch import sweep_command
from .models.backbone import WEIGHT_POLICIES
from .models.base import CacheFacts
from .outcomes import format_duration
from .protocol import apply_to_splits
from .records import find_records, inspect_record, is_attempt
from .resume import Listing, decide, list_splits
from .spec import JobSpec

#: the parts of a record's ``timing`` that make up a job's time
TIMING_KEYS = ("load_s", "fit_s", "predict_s", "profile_s", "metrics_s")
#: the keys every plan names among the jobs' factors, swept or not
MAIN_FACTORS = ("model", "dataset.category", "seed")
#: jobs to run listed one by one in the plan (the rest are counted)
LISTED_JOBS = 20


class PlanError(ValueError):
    """The sweep cannot be planned: Hydra cannot compose one of its jobs (the sweep itself would
    stop before launching any), or its sweeper is not Hydra's basic sweeper."""


@dataclass(frozen=True)
class Expansion:
    """A multirun's jobs: each job's overrides as the launcher receives them, and the swept
    keys with their number of values (``[("model", 2), ("seed", 5)]``)."""

    jobs: list[list[str]]
    factors: list[tuple[str, int]]


def expand_sweep(master: DictConfig, config_loader: Any = None) -> Expansion:
    """The jobs Hydra's basic sweeper makes of a master config: ``hydra.sweeper.params`` then the
    command line's task overrides (the command line wins for a key in both), parsed by Hydra's
    override parser and split by ``BasicSweeper.split_arguments``. ``config_loader`` lets the
    parser expand ``glob()`` over config groups."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = master.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if target.rsplit(".", 1)[-1] != "BasicSweeper":
        raise PlanError(f"hydra.sweeper is {target}: the plan knows Hydra's basic sweeper only")
    params = sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += [str(line) for line in master.hydra.overrides.task]
    overrides = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    jobs = [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    counts: dict[str, int] = {}
    for override in overrides:  # as split_arguments: a later override of a key replaces it in place
        key = override.get_key_element()
        counts[key] = len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
    factors = [(key, n) for key, n in counts.items() if n > 1 or key.lstrip("+~") in MAIN_FACTORS]
    return Expansion(jobs, factors)


def jobs_at_once(master: DictConfig, total: int | None = None) -> int:
    """How many jobs the configured launcher runs at once: joblib's ``n_jobs`` (negative: the
    CPUs but ``-n - 1``), submitit's ``array_parallelism``, Ray's GPUs (``ray.init.num_gpus``, else
    those of this machine) over ``ray.remote.num_gpus`` per job, 1 for the basic launcher; at
    most ``total``."""
    launcher = master.hydra.launcher
    target = str(launcher.get("_target_", "")).lower()
    n = 1
    if "joblib" in target:
        n = int(launcher.get("n_jobs") or -1)
        if n < 0:
            n = (os.cpu_count() or 1) + 1 + n
    elif "submitit" in target:
        n = int(launcher.get("array_parallelism") or 256)
    elif "ray" in target:
        per_job = float(OmegaConf.select(launcher, "ray.remote.num_gpus", default=0) or 0)
        gpus = OmegaConf.select(launcher, "ray.init.num_gpus", default=None)
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        n = int(float(gpus) // per_job) if per_job > 0 else (os.cpu_count() or 1)
    n = max(1, n)
    return min(n, total) if total else n


# ----------------------------------------------------------------------------- one job


@dataclass
class PlannedJob:
    """One job of the plan.

    Attributes:
        overrides: the job's overrides as the launcher passes them.
        run_dir: its run folder, as Hydra names it (absolute).
        spec: its spec as the job reads it (None when its config cannot be resolved or a setting
            is refused).
        done: whether the job would skip itself (its ok record matches, ``resume``).
        reason: why it is done, or why it runs.
        device: the device it would use (``describe_device``), None when unavailable.
        splits: its splits as it reads them (protocol applied); None when the dataset cannot be listed.
        resume: its resume mode (None when its settings are refused).
    """

    index: int
    overrides: list[str]
    run_dir: Path
    spec: JobSpec | None
    model: str
    done: bool
    reason: str
    device: str | None = None
    splits: Splits | None = None
    resume: str | None = None


class Lister:
    """The splits and fingerprints of the plan's jobs, listed once per distinct listing
    (:attr:`ulsad_bench.spec.DataSpec.listing_key` with whether the model uses a validation split,
    the protocol's ``quantiles_from_test``, the resume mode and the job's other input files:
    everything a job's listing and fingerprint depend on)."""

    def __init__(self) -> None:
        self.listings: dict[str, Listing] = {}
        self.devices: dict[str, str | None] = {}

    def listing(self, spec: JobSpec) -> Listing:
        data = spec.data
        key = repr((data.listing_key, data.uses_validation, data.val_from_test, spec.resume, spec.input_files()))
        if key not in self.listings:
            self.listings[key] = list_splits(spec)
        return self.listings[key]

    def device(self, name: str) -> str | None:
        if name not in self.devices:
            try:
                self.devices[name] = describe_device(resolve_device(name))
            except (RuntimeError, ValueError):
                self.devices[name] = None
        return self.devices[name]


def plan_job(
    hydra: Any, master: DictConfig, index: int, overrides: Sequence[str], versions_now: dict[str, Any], lister: Lister
) -> PlannedJob:
    """One job and the decision it would take: the checks of :func:`ulsad_bench.runner.run`
    before it runs anything (its settings: :meth:`~ulsad_bench.spec.JobSpec.from_config`, then its
    resume decision: :func:`ulsad_bench.resume.decide` on the record in its folder)."""
    task, run_dir, problem = compose_sweep_job(hydra, master, index, overrides)
    model = str(OmegaConf.select(task, "model.name", default="?", throw_on_resolution_failure=False))
    job = PlannedJob(index, list(overrides), run_dir, None, model, done=False, reason="")
    if problem:
        job.reason = f"would fail: {problem}"
        return job
    try:
        spec = JobSpec.from_config(task)
    except Exception as err:
        job.reason = f"would fail its settings check: {type(err).__name__}: {err}"
        return job
    job.spec, job.device, job.resume = spec, lister.device(spec.device), spec.resume
    listing = lister.listing(spec)
    if listing.splits is not None:
        try:
            job.splits = apply_to_splits(spec.protocol, listing.splits)[0]
        except ValueError:
            job.splits = listing.splits
    code = model_code_version(spec.model_class)  # as the job's record: versions(model class)
    decision = decide(spec, run_dir, {**versions_now, "code": code}, listing)
    job.done, job.reason = decision.skip, decision.why
    if not job.done and (run_dir / LOCK_NAME).exists():  # looked at, never taken: a running job keeps its lock
        job.reason += " (a lock file is there: another process may be running it)"
    return job


# ----------------------------------------------------------------------------- time


def job_seconds(record: dict[str, Any]) -> float | None:
    """A record's job time: the sum of its :data:`TIMING_KEYS` (None without any)."""
    timing = record.get("timing") or {}
    values = [timing.get(key) for key in TIMING_KEYS]
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) if numbers else None


def device_kind(description: str | None) -> str:
    """The kind of a device a record names: ``cuda:1 NVIDIA H200`` -> ``cuda NVIDIA H200``,
    ``cpu x86_64 (16 threads)`` -> ``cpu x86_64``."""
    text = str(description or "").strip()
    head, _, rest = text.partition(" ")
    rest = re.sub(r"\s*\(\d+ threads?\)$", "", rest).strip()
    return f"{head.split(':', 1)[0]} {rest}".strip()


@dataclass(frozen=True)
class TimedRecord:
    """An ok record as the time estimate reads it."""

    model: str
    device: str
    dataset: str
    image_size: Any
    seconds: float


def timed_records(folder: Path) -> list[TimedRecord]:
    """The ok records under ``folder`` (failed attempts left out) with their job time."""
    found = []
    for path in find_records(folder):
        if is_attempt(path):
            continue
        record = inspect_record(path).record
        if record is None or record.get("status") != "ok":
            continue
        seconds = job_seconds(record)
        if seconds is None:
            continue
        size = ((record.get("config") or {}).get("dataset") or {}).get("image_size")
        kind = device_kind(record.get("device"))
        found.append(TimedRecord(str(record.get("model")), kind, str(record.get("dataset")), size, seconds))
    return found


@dataclass(frozen=True)
class ModelTime:
    """The time estimate of one model's jobs still to run."""

    model: str
    to_run: int
    seconds: float | None
    records: int
    basis: str

    @property
    def total(self) -> float | None:
        return None if self.seconds is None else self.seconds * self.to_run


def estimate_time(jobs: Sequence[PlannedJob], sources: Sequence[Path]) -> list[ModelTime]:
    """Per model: its jobs still to run x the median job time of the ok records of that model on
    the same device kind, from the first of ``sources`` that has any (records of the same
    dataset and image size preferred)."""
    timed: dict[Path, list[TimedRecord]] = {}
    estimates = []
    for model in dict.fromkeys(job.model for job in jobs):
        mine = [job for job in jobs if job.model == model]
        waiting = [job for job in mine if not job.done]
        basis_jobs = waiting or mine
        kinds = {device_kind(job.device) for job in basis_jobs if job.device}
        pairs = {(_dataset_of(job), _size_of(job)) for job in basis_jobs}
        chosen: list[TimedRecord] = []
        basis = f"no ok {model} record on {' or '.join(sorted(kinds)) or 'this device'} under " + " or ".join(
            str(s) for s in sources
        )
        for source in sources:
            if source not in timed:
                timed[source] = timed_records(source) if source.is_dir() else []
            candidates = [r for r in timed[source] if r.model == model and r.device in kinds]
            if not candidates:
                continue
            same = [r for r in candidates if (r.dataset, r.image_size) in pairs]
            chosen = same or candidates
            count = f"{len(chosen)} ok record{'s' if len(chosen) != 1 else ''}"
            where = "same dataset and image size" if same else "other datasets or image sizes: rough"
            basis = f"median of {count} under {source}, {where}"
            break
        seconds = statistics.median(r.seconds for r in chosen) if chosen else None
        estimates.append(ModelTime(model, len(waiting), seconds, len(chosen), basis))
    return estimates


def _dataset_of(job: PlannedJob) -> str:
    return "" if job.spec is None else job.spec.dataset


def _size_of(job: PlannedJob) -> Any:
    return None if job.spec is None else job.spec.data.image_size


# ----------------------------------------------------------------------------- cache disk

DECODED = "decoded images (cache.decoded_images)"


def _images_id(samples: Sequence[Sample], size: int, resize: str, crop: int | None = None) -> str:
    """Identity of an image set as the caches key it: its files, size, resize and crop."""
    digest = hashlib.sha256(f"size={size}|resize={resize}|crop={crop}".encode())
    for sample in samples:
        digest.update(f"\n{sample.path}".encode())
    return digest.hexdigest()[:16]


def _weights_policy(weights: str) -> str:
    return weights if weights in WEIGHT_POLICIES else "file"


def job_cache_entries(
    spec: JobSpec, splits: Splits, device: str | None = None, notes: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """The cache entries one job writes, ``{what: {identity: bytes}}``; jobs that share an
    entry (the same images, backbone and settings) give it the same identity. From shapes only:
    decoded images, when ``cache.decoded_images`` is on (N x 3 x S x S bytes per split, S =
    ``dataset.image_size``, and the test split's masks), and what the model says it caches
    (:meth:`~ulsad_bench.models.base.AnomalyModel.cache_entries`: ULSAD's features and trained
    models, DFR's features, EfficientAD's distilled teacher). ``feature_cache=false`` writes no
    model entries. What is left out and why goes to ``notes``.
    """
    entries: dict[str, dict[str, int]] = {}
    size, resize = spec.data.image_size, spec.data.resize
    notes = [] if notes is None else notes
    if spec.data.decoded_images:
        for samples, masks in ((splits.train, False), (splits.val, False), (splits.test, True)):
            if samples:  # images N x 3 x S x S bytes, and a test split's masks N x S x S
                per_image = (4 if masks else 3) * size * size
                entries.setdefault(DECODED, {})[_images_id(samples, size, resize)] = len(samples) * per_image
    else:
        notes.append("decoded images: not cached (cache.decoded_images=false)")
    if not spec.feature_cache:
        notes.append("feature_cache=false: no features or trained models are cached")
        return entries
    crop = spec.data.center_crop
    facts = CacheFacts(
        train_id=_images_id(splits.train, size, resize, crop),
        val_id=_images_id(splits.val, size, resize, crop),
        n_train=len(splits.train),
        n_val=len(splits.val),
        image_size=spec.data.model_image_size,
        backbone=spec.backbone.name,
        weights_policy=_weights_policy(spec.backbone.weights),
        precision=spec.precision,
        seed=spec.seed,
        device_type=spec.device_type,
        reuses_trained=not spec.protocol.select_on_test,
    )
    found, model_notes = spec.model_class.cache_entries(spec.model_settings, facts)
    notes.extend(model_notes)
    for entry in found:
        entries.setdefault(entry.kind, {})[entry.identity] = entry.nbytes
    return entries


@dataclass
class DiskEstimate:
    """The cache entries of the jobs still to run, shared entries once: ``{what: {identity: bytes}}``."""

    entries: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_jobs: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(kind.values()) for kind in self.entries.values())


def estimate_disk(jobs: Sequence[PlannedJob]) -> DiskEstimate:
    """The cache entries of the jobs still to run (:func:`job_cache_entries`), shared ones once."""
    estimate = DiskEstimate()
    for job in jobs:
        if job.done or job.spec is None:
            continue
        if job.splits is None:
            estimate.unknown_jobs += 1
            continue
        notes: list[str] = []
        try:
            found = job_cache_entries(job.spec, job.splits, job.device, notes)
        except Exception as err:  # a setting the job will refuse: it writes nothing
            notes.append(f"{job.model}: not estimated ({type(err).__name__}: {err})")
            found = {}
        estimate.notes += [note for note in notes if note not in estimate.notes]
        for what, entries in found.items():
            estimate.entries.setdefault(what, {}).update(entries)
    return estimate


# ----------------------------------------------------------------------------- the plan


@dataclass
class SweepPlan:
    """What ``make sweep`` would do (:func:`make_plan`)."""

    results: Path
    launcher: str
    jobs_at_once: int
    factors: list[tuple[str, int]]
    jobs: list[PlannedJob]
    times: list[ModelTime]
    disk: DiskEstimate
    dataset_problems: list[str]
    cache_max_gb: float | None
    cache_dir: Path | None
    cache_bytes_now: int
    resume_modes: list[str]

    @property
    def done(self) -> list[PlannedJob]:
        return [job for job in self.jobs if job.done]

    @property
    def to_run(self) -> list[PlannedJob]:
        return [job for job in self.jobs if not job.done]


def sweep_overrides(args: dict[str, str], extra: list[str], categories: list[str] | None = None) -> list[str]:
    """The overrides ``run.py -m`` receives from ``make sweep`` (after its ``dataset.category=all`` expansion)."""

    command = sweep_command(args, extra, categories)
    return expand_all_categories(["-m", *command[3:]])[1:]


def make_plan(
    args: dict[str, str], extra: list[str], categories: list[str] | None = None, sources: Sequence[Path] | None = None
) -> SweepPlan:
    """The plan of ``make sweep`` with these arguments; runs nothing, starts no launcher.
    ``sources``: where to look for records to time the jobs by (default: the results folder,
    then ``outputs/``)."""

    overrides = sweep_overrides(args, extra, categories)
    with hydra_app() as hydra:
        master = master_config(hydra, overrides)
        expansion = expand_sweep(master, hydra.config_loader)
        results = Path(os.path.abspath(str(master.hydra.sweep.dir)))
        launcher = str(OmegaConf.select(master, "hydra.runtime.choices", default={}).get("hydra/launcher", "?"))
        at_once = jobs_at_once(master, len(expansion.jobs))
        versions_now, lister = versions(), Lister()
        jobs = [plan_job(hydra, master, i, job, versions_now, lister) for i, job in enumerate(expansion.jobs)]
        first = next((job.spec for job in jobs if job.spec is not None), None)
        cache_dir = Path(os.path.abspath(str(first.data.cache_dir))) if first is not None else None
        max_gb = first.data.cache_max_bytes / 2**30 if first is not None else None
    problems = list(dict.fromkeys(x.problem for x in lister.listings.values() if x.problem))
    if sources is None:
        sources = list(dict.fromkeys([results, REPO / "outputs"]))
    features = cache_dir / "features" if cache_dir is not None else None
    cache_now = cache_bytes(features) if features is not None else 0
    modes = sorted({job.resume for job in jobs if job.resume is not None})
    return SweepPlan(
        results=results,
        launcher=launcher,
        jobs_at_once=at_once,
        factors=expansion.factors,
        jobs=jobs,
        times=estimate_time(jobs, [Path(s) for s in sources]),
        disk=estimate_disk(jobs),
        dataset_problems=problems,
        cache_max_gb=max_gb,
        cache_dir=cache_dir,
        cache_bytes_now=cache_now,
        resume_modes=modes,
    )


# ----------------------------------------------------------------------------- printing


def format_bytes(n: float) -> str:
    """Binary units, as ``cache.max_gb`` (GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _seconds(value: float) -> str:

    return f"{value:.1f}s" if value < 60 else format_duration(value)


_COMPARED = {
    "strict": "the config hash, the data fingerprint (the files listed now: names, sizes, mtimes), the code versions",
    "content": "as strict, with a digest of every file's bytes (all files are read now)",
    "config": "the config hash only (resume=config)",
    "off": "nothing: resume=false runs every job",
}


def _reason_group(reason: str) -> str:
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def format_plan(plan: SweepPlan) -> str:
    """The plan as ``make sweep ... PLAN=1`` prints it."""
    n = len(plan.jobs)
    factors = " x ".join(f"{key} ({count})" for key, count in plan.factors)
    lines = [f"sweep plan (nothing launched): {n} job{'s' if n != 1 else ''}" + (f" = {factors}" if factors else "")]
    lines.append(f"  results:  {plan.results} (run folders as Hydra names them)")
    devices = sorted({job.device for job in plan.jobs if job.device})
    lines.append(f"  device:   {', '.join(devices) or 'unknown (the configured device is not available)'}")
    lines += [f"  dataset:  cannot be listed: {problem}" for problem in plan.dataset_problems]
    if plan.dataset_problems:
        lines.append(
            "            (strict resume, file counts and cache sizes unknown; the sweep's pre-flight would stop)"
        )
    compared = "; ".join(f"{_COMPARED.get(mode, mode)}" for mode in plan.resume_modes) or "-"
    lines.append(f"  done:     {len(plan.done)} (an ok record in the run folder that the job's resume check accepts;")
    lines.append(f"            compared: {compared})")
    to_run = plan.to_run
    lines.append(f"  to run:   {len(to_run)}, {plan.jobs_at_once} at once (hydra/launcher={plan.launcher})")
    groups: dict[str, list[str]] = {}
    for job in to_run:
        groups.setdefault(_reason_group(job.reason), []).append(job.reason)
    for group, reasons in groups.items():
        example = f" (e.g. {reasons[0]})" if reasons[0] != group else ""
        lines.append(f"    {group}: {len(reasons)}{example}")
    for job in to_run[:LISTED_JOBS]:
        lines.append(f"    - {_relative(job.run_dir, plan.results)}")
    if len(to_run) > LISTED_JOBS:
        lines.append(f"    ... and {len(to_run) - LISTED_JOBS} more")

    lines.append("  time (median seconds per job of ok records of the same model on the same device kind):")
    known = [t.total for t in plan.times if t.total is not None]
    unknown = [t.model for t in plan.times if t.total is None and t.to_run]
    for t in plan.times:
        per_job = "unknown" if t.seconds is None else _seconds(t.seconds)
        total = "" if t.total is None else f" = {_seconds(t.total)}"
        lines.append(f"    {t.model}: {t.to_run} to run x {per_job}{total} ({t.basis})")
    if unknown and not known:
        lines.append("    total: unknown")
    else:
        total_s = sum(known)
        head = ">= " if unknown else ""
        line = f"    total: {head}{_seconds(total_s)} of job time"
        if unknown:
            line += f" (unknown for {', '.join(unknown)})"
        if plan.jobs_at_once > 1 and total_s:
            line += f", about {head}{_seconds(total_s / plan.jobs_at_once)} with {plan.jobs_at_once} jobs at once"
        lines.append(line)

    disk = plan.disk
    lines.append(
        "  cache disk of the jobs to run (an estimate from the configs' shapes and the listed splits; "
        "entries that jobs share, e.g. features across seeds, counted once; entries already cached not subtracted):"
    )
    for what, entries in disk.entries.items():
        count = len(entries)
        lines.append(f"    {what}: {count} entr{'ies' if count != 1 else 'y'}, {format_bytes(sum(entries.values()))}")
    if not plan.to_run:
        lines.append("    nothing: no job to run")
    elif not disk.entries:
        lines.append("    nothing (PaDiM and PatchCore keep nothing on disk)" if not disk.unknown_jobs else "    -")
    if disk.unknown_jobs:
        jobs, whose = ("job", "its") if disk.unknown_jobs == 1 else ("jobs", "their")
        lines.append(f"    unknown for {disk.unknown_jobs} {jobs} ({whose} dataset cannot be listed)")
    lines += [f"    {note}" for note in disk.notes]
    lines.append(_disk_total(plan))
    lines.append(FOOTER)
    return "\n".join(lines)


FOOTER = "nothing was launched; without plan=1 (PLAN=1) the sweep checks the dataset and weights, then runs."


def _disk_total(plan: SweepPlan) -> str:
    """The cache disk's total line, against ``cache.max_gb``."""
    disk = plan.disk
    where = f"; {plan.cache_dir / 'features'} holds {format_bytes(plan.cache_bytes_now)} now" if plan.cache_dir else ""
    limit = f"cache.max_gb={plan.cache_max_gb:g} GiB" if plan.cache_max_gb is not None else "no cache.max_gb"
    if disk.unknown_jobs and not disk.entries:
        return f"    total: unknown; {limit}{where}"
    text = f"    total: {'>= ' if disk.unknown_jobs else ''}{format_bytes(disk.total)} of {limit}: "
    if plan.cache_max_gb is None or disk.total <= plan.cache_max_gb * 2**30:
        return text + "fits" + where
    return (
        text + "does NOT fit: the least recently used entries are evicted and recomputed when needed (slower, same "
        "results); raise cache.max_gb or free disk" + where
    )
