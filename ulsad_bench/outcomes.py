"""What each job of a multirun did, in its own file: the bottom layer of the orchestration.

Every job of a multirun writes ``<run_dir>/.outcomes/<sweep id>.json`` when it starts
(``started``) and when it ends (``ran``, ``skipped``, ``failed``, ``locked``): :func:`write_outcome`,
called by the job (:mod:`ulsad_bench.runner`). The sweep (:mod:`ulsad_bench.sweep`) counts them
for its progress lines (:func:`sweep_progress`, :func:`format_progress`) and its summary
(:func:`summarize_sweep`), so two sweeps over one folder each count only their own jobs, in
whichever process runs the callback. The sweep's total, jobs at once and start are in
``<sweep dir>/.sweeps/<sweep id>.json`` (:func:`sweep_info_path`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import write_json_atomic

SWEEP_ID_ENV = "ULSAD_BENCH_SWEEP_ID"
OUTCOMES_DIR = ".outcomes"
#: ``<sweep dir>/.sweeps/<sweep id>.json``: the sweep's total, jobs at once and start (progress lines)
SWEEPS_DIR = ".sweeps"
OUTCOMES = ("ran", "skipped", "failed", "missing", "locked")


# ----------------------------------------------------------------------------- outcomes of one sweep


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def write_outcome(run_dir: Path, outcome: str, detail: str = "") -> None:
    """Called by the runner when every job of a multirun starts (``started``) and ends (no-op
    outside one). The end keeps the start's time (``started``): the job's duration."""
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    if not sweep_id:
        return
    path = Path(run_dir) / OUTCOMES_DIR / f"{sweep_id}.json"
    now = time.time()
    payload: dict[str, Any] = {"outcome": outcome, "detail": detail, "pid": os.getpid(), "time": now}
    if outcome == "started":
        payload["started"] = now
    else:
        previous = read_json(path) or {}
        if previous.get("outcome") == "started":
            payload["started"] = previous.get("started", previous.get("time"))
    write_json_atomic(path, payload)


def outcome_files(sweep_dir: Path, sweep_id: str) -> list[tuple[Path, dict[str, Any]]]:
    """``(run folder, payload)`` of every outcome file of sweep ``sweep_id`` under ``sweep_dir``;
    an unreadable file reads as ``missing``."""
    found = []
    for path in sorted(Path(sweep_dir).rglob(f"{OUTCOMES_DIR}/{sweep_id}.json")):
        payload = read_json(path)
        if payload is None:
            payload = {"outcome": "missing", "detail": f"unreadable outcome file {path}"}
        found.append((path.parent.parent, payload))
    return found


def summarize_sweep(sweep_dir: Path, sweep_id: str) -> dict[str, list[str]]:
    """What happened to the jobs of sweep ``sweep_id``: one outcome file per job of this sweep
    (written ``started`` when the job begins, then its end); a job still ``started`` when the
    sweep ends was killed (``missing``). Other sweeps' jobs in the same folder are not counted."""
    outcome: dict[str, list[str]] = {name: [] for name in OUTCOMES}
    sweep_dir = Path(sweep_dir)
    for run_dir, payload in outcome_files(sweep_dir, sweep_id):
        label = str(run_dir.relative_to(sweep_dir))
        name = payload.get("outcome") if payload.get("outcome") in OUTCOMES else "missing"
        detail = payload.get("detail") or ""
        outcome[name].append(f"{label}: {detail}" if detail and name in ("failed", "locked") else label)
    return outcome


def format_summary(outcome: dict[str, list[str]]) -> str:
    lines = [
        f"sweep summary: {len(outcome['ran'])} ran, {len(outcome['skipped'])} skipped (already done), "
        f"{len(outcome['failed'])} failed, {len(outcome['missing'])} missing (killed before the end), "
        f"{len(outcome['locked'])} left to another process (running there)"
    ]
    lines += [f"  FAILED  {item}" for item in outcome["failed"]]
    lines += [f"  MISSING {item}" for item in outcome["missing"]]
    lines += [f"  BUSY    {item}" for item in outcome["locked"]]
    return "\n".join(lines)


def sweep_failed(outcome: dict[str, list[str]]) -> bool:
    return bool(outcome["failed"] or outcome["missing"])


# ----------------------------------------------------------------------------- progress of one sweep


def sweep_info_path(sweep_dir: Path, sweep_id: str) -> Path:
    return Path(sweep_dir) / SWEEPS_DIR / f"{sweep_id}.json"


@dataclass(frozen=True)
class Progress:
    """Where sweep ``sweep_id`` stands: finished jobs by outcome, the total (None: unknown),
    seconds since its start and the estimated seconds left (None: unknown)."""

    total: int | None
    finished: dict[str, int]
    running: int
    elapsed_s: float
    left_s: float | None

    @property
    def done(self) -> int:
        return sum(self.finished.values())


FINISHED = ("ran", "skipped", "failed", "locked")
_PROGRESS_LABELS = (("skipped", "skipped"), ("failed", "failed"), ("locked", "left to another process"))


def sweep_progress(sweep_dir: Path, sweep_id: str, now: float | None = None) -> Progress:
    """Count this sweep's finished jobs (their outcome files) and estimate what is left: the
    mean duration of the finished jobs x the jobs left / the jobs run at once."""
    now = time.time() if now is None else now
    info = read_json(sweep_info_path(sweep_dir, sweep_id)) or {}
    finished = dict.fromkeys(FINISHED, 0)
    durations: list[float] = []
    starts: list[float] = []
    running = 0
    for _, payload in outcome_files(sweep_dir, sweep_id):
        name = payload.get("outcome")
        started = payload.get("started")
        if isinstance(started, (int, float)):
            starts.append(float(started))
        if name not in finished:
            if name == "started":
                running += 1
            continue
        finished[name] += 1
        end = payload.get("time")
        if isinstance(started, (int, float)) and isinstance(end, (int, float)):
            durations.append(max(0.0, float(end) - float(started)))
    start = info.get("started") if isinstance(info.get("started"), (int, float)) else min(starts, default=now)
    total = info.get("total") if isinstance(info.get("total"), int) else None
    done = sum(finished.values())
    left_s: float | None = None
    if total is not None and done >= total:
        left_s = 0.0
    elif total is not None and durations:
        left = total - done
        at_once = max(1, min(int(info.get("jobs_at_once") or 1), left))
        left_s = sum(durations) / len(durations) * left / at_once
    return Progress(total, finished, running, max(0.0, now - float(start)), left_s)


def format_duration(seconds: float, rough: bool = False) -> str:
    """``42s``, ``4m12s``, ``1h05m`` (``rough``: ``~4m``)."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m" if rough else f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_progress(progress: Progress) -> str:
    """``[sweep] 7/20 done (2 skipped, 1 failed), 4m12s elapsed, ~8m left``."""
    counted = f"{progress.done}/{progress.total}" if progress.total is not None else f"{progress.done}"
    details = [f"{progress.finished[name]} {label}" for name, label in _PROGRESS_LABELS if progress.finished[name]]
    line = f"[sweep] {counted} done" + (f" ({', '.join(details)})" if details else "")
    line += f", {format_duration(progress.elapsed_s)} elapsed"
    if progress.left_s is not None and progress.left_s > 0:
        line += f", ~{format_duration(progress.left_s, rough=True)} left"
    return line
