"""Sweeps: every category x model x seed of a dataset as one Hydra multirun, then the tables.

``make sweep DATASET=visa DATASET_ROOT=/data/VisA MODELS=ulsad,patchcore SEEDS=0,1,2,3,4 N_JOBS=2
ARGS="model.epochs=2"`` runs ``python -m ulsad_bench.sweep dataset=visa root=... models=... seeds=...
n_jobs=... -- model.epochs=2``, which

1. checks before launching anything (:func:`preflight`): the dataset (every category's layout,
   image headers and masks, as ``python -m ulsad_bench.data`` does) and every model's weights
   and files; a problem stops the sweep in seconds with one message;
2. calls ``run.py -m`` with Hydra's own launchers (``basic`` for one job at a time, ``parallel`` =
   joblib for several, ``slurm`` = submitit on a cluster): no home-made scheduler;
3. renders the tables, and exits non-zero when any job failed or is missing.

Jobs whose ok record matches (``resume``) are skipped and a job another process is running is
left to it (its lock, :mod:`ulsad_bench.joblock`), so a killed sweep re-run finishes only what is
missing. :class:`SweepSummary` (a Hydra callback, enabled in ``conf/config.yaml``) prints what the
sweep did at its end: jobs run, skipped, failed (which), missing, and running elsewhere. Each job
of a multirun writes its outcome to ``<run_dir>/.outcomes/<sweep id>.json``
(:func:`write_outcome`), so two sweeps over one folder each count only their own jobs.

While the sweep runs, every finished job prints one progress line (:meth:`SweepSummary.on_job_end`,
:func:`format_progress`): ``[sweep] 7/20 done (1 failed), 4m12s elapsed, ~8m left``. The counts
come from this sweep's outcome files, so the line is right in whichever process runs the
callback (the basic launcher's own process, joblib's workers, submitit's jobs, whose lines go
to their logs); the total, the number of jobs at once and the start are written once at the
start of the multirun to ``<sweep dir>/.sweeps/<sweep id>.json`` (:func:`write_sweep_info`).

``plan=1`` (``make sweep ... PLAN=1``) launches nothing and prints the sweep's plan instead:
jobs, those already done, the time and the cache disk they will take (:mod:`ulsad_bench.plan`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .artifacts import write_json_atomic
from .config import REPO, compose, dataset_categories, fixed_overrides

SWEEP_ID_ENV = "ULSAD_BENCH_SWEEP_ID"
OUTCOMES_DIR = ".outcomes"
#: ``<sweep dir>/.sweeps/<sweep id>.json``: the sweep's total, jobs at once and start (progress lines)
SWEEPS_DIR = ".sweeps"
OUTCOMES = ("ran", "skipped", "failed", "missing", "locked")
#: the outcome of the last multirun of this process (``run.py`` exits non-zero on failures)
LAST_OUTCOME: dict[str, list[str]] | None = None


# ----------------------------------------------------------------------------- outcomes of one sweep


def _read_json(path: Path) -> dict[str, Any] | None:
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
        previous = _read_json(path) or {}
        if previous.get("outcome") == "started":
            payload["started"] = previous.get("started", previous.get("time"))
    write_json_atomic(path, payload)


def _outcome_files(sweep_dir: Path, sweep_id: str) -> list[tuple[Path, dict[str, Any]]]:
    """``(run folder, payload)`` of every outcome file of sweep ``sweep_id`` under ``sweep_dir``;
    an unreadable file reads as ``missing``."""
    found = []
    for path in sorted(Path(sweep_dir).rglob(f"{OUTCOMES_DIR}/{sweep_id}.json")):
        payload = _read_json(path)
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
    for run_dir, payload in _outcome_files(sweep_dir, sweep_id):
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


def _config_loader() -> Any:
    """The running Hydra's config loader (None outside a Hydra app): lets the override parser
    expand ``glob()`` sweeps of config groups."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    return hydra.hydra.config_loader if hydra.is_initialized() and hydra.hydra is not None else None


def write_sweep_info(config: DictConfig, sweep_id: str) -> dict[str, Any]:
    """At the start of a multirun: ``<sweep dir>/.sweeps/<sweep id>.json`` with the number of
    jobs (Hydra's expansion of ``hydra.sweeper.params`` and the command line,
    :func:`ulsad_bench.plan.expand_sweep`; null when it cannot be known), the jobs the launcher
    runs at once and the start time. Read by every job's progress line, in whichever process."""
    from .plan import expand_sweep, jobs_at_once

    total: int | None = None
    at_once = 1
    try:
        total = len(expand_sweep(config, _config_loader()).jobs)
        at_once = jobs_at_once(config, total)
    except Exception:  # a sweeper the plan does not know: progress lines without a total
        total = None
    info = {"sweep_id": sweep_id, "total": total, "jobs_at_once": at_once, "started": time.time()}
    write_json_atomic(sweep_info_path(Path(str(config.hydra.sweep.dir)), sweep_id), info)
    return info


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
    info = _read_json(sweep_info_path(sweep_dir, sweep_id)) or {}
    finished = dict.fromkeys(FINISHED, 0)
    durations: list[float] = []
    starts: list[float] = []
    running = 0
    for _, payload in _outcome_files(sweep_dir, sweep_id):
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


class SweepSummary(Callback):
    """Hydra callback: gives the multirun an id (inherited by its job processes), writes what
    the progress lines need, prints one progress line per finished job and the sweep's outcome
    when it ends."""

    def __init__(self) -> None:
        self.sweep_id = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        os.environ[SWEEP_ID_ENV] = self.sweep_id
        try:
            write_sweep_info(config, self.sweep_id)
        except Exception as err:  # progress is a convenience: never stop a sweep for it
            print(f"[sweep] no progress total: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """One progress line per finished job of a multirun, in the process that ran it (the
        job's outcome file is written by then: the runner writes it before returning)."""
        # the id is inherited from the multirun's process; a worker that does not inherit its
        # environment (a Ray cluster started beforehand) still has this callback's copy of it
        sweep_id = os.environ.get(SWEEP_ID_ENV) or self.sweep_id
        if not sweep_id:  # a single run
            return
        try:
            line = format_progress(sweep_progress(Path(str(config.hydra.sweep.dir)), sweep_id))
        except Exception:  # never fail a finished job for its progress line
            return
        print(line, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_OUTCOME
        LAST_OUTCOME = summarize_sweep(Path(config.hydra.sweep.dir), self.sweep_id)
        os.environ.pop(SWEEP_ID_ENV, None)
        print(format_summary(LAST_OUTCOME), flush=True)


# ----------------------------------------------------------------------------- make sweep

#: the arguments of ``python -m ulsad_bench.sweep`` (``make sweep``'s variables in brackets)
ARGUMENTS = {
    "dataset": "dataset config name (DATASET), e.g. mvtec, visa, mvtec_loco, mpdd, btad, synthetic",
    "models": "comma-separated models (MODELS)",
    "seeds": "comma-separated seeds (SEEDS)",
    "results": "output folder (RESULTS)",
    "n_jobs": "jobs at once with the parallel launcher (N_JOBS)",
    "root": "the dataset's folder (DATASET_ROOT)",
    "categories": "comma-separated categories (default: all of the dataset's)",
    "launcher": "basic | parallel | gpus (one job per GPU, Ray) | slurm | subprocess (LAUNCHER)",
    "plan": "1: print the plan (jobs, already done, time, cache disk) and launch nothing (PLAN)",
}
DEFAULT_MODELS = "ulsad,patchcore,padim,efficientad,dfr"


class SweepArgumentError(ValueError):
    """A ``make sweep`` argument is unknown or malformed."""


def parse_arguments(own: list[str]) -> dict[str, str]:
    """``key=value`` arguments, each key one of :data:`ARGUMENTS`; empty values mean unset."""
    args: dict[str, str] = {}
    for item in own:
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or key not in ARGUMENTS:
            hint = f" (did you mean {key}s=?)" if f"{key}s" in ARGUMENTS else ""
            raise SweepArgumentError(
                f"unknown argument {item!r}{hint}: expected key=value with key one of {', '.join(ARGUMENTS)}; "
                "Hydra overrides for every job go after '--' (make sweep ARGS=\"model.epochs=2\")"
            )
        if value:
            args[key] = value
    return args


def plan_requested(args: dict[str, str]) -> bool:
    """Whether ``plan=`` asks for the plan only (``1``, ``true``, ``yes``; ``0``, ``false``, ``no``: launch)."""
    value = args.get("plan", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SweepArgumentError(f"plan={args['plan']!r}: expected 1 (print the plan, launch nothing) or 0")


def hydra_quote(value: str) -> str:
    """A value as a Hydra override takes it verbatim (spaces, commas, quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _models(args: dict[str, str]) -> list[str]:
    return args.get("models", DEFAULT_MODELS).split(",")


def _base_overrides(args: dict[str, str], extra: list[str]) -> list[str]:
    """``dataset=``, ``dataset.root=`` and ``extra``, to compose the sweep's config with."""
    overrides = [f"dataset={args.get('dataset', 'synthetic')}"]
    if args.get("root"):
        overrides.append(f"dataset.root={hydra_quote(args['root'])}")
    return overrides + list(extra)


def _job_overrides(args: dict[str, str], extra: list[str]) -> list[str]:
    """What one job of the sweep composes with: the first model, the dataset, the fixed extras."""
    return [f"model={_models(args)[0]}", *fixed_overrides(_base_overrides(args, extra))]


def sweep_categories(args: dict[str, str], extra: list[str]) -> list[str]:
    if args.get("categories"):
        return args["categories"].split(",")
    return dataset_categories(_job_overrides(args, extra))


def sweep_command(args: dict[str, str], extra: list[str], categories: list[str] | None = None) -> list[str]:
    categories = categories or sweep_categories(args, extra)
    launcher = args.get("launcher") or ("parallel" if int(args.get("n_jobs", "1")) > 1 else "basic")
    base = _base_overrides(args, [])
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"model={','.join(_models(args))}",
        base[0],
        f"dataset.category={','.join(categories)}",
        f"seed={args.get('seeds', '0,1,2,3,4')}",
        f"output_root={args.get('results', 'outputs')}",
        f"hydra/launcher={launcher}",
        *base[1:],
    ]
    if launcher == "parallel":
        command.append(f"hydra.launcher.n_jobs={args.get('n_jobs', '2')}")
    return command + extra


def preflight(args: dict[str, str], extra: list[str], categories: list[str]) -> list[str]:
    """Problems that would fail every job, found before any job is launched: the dataset (every
    category checked as ``python -m ulsad_bench.data`` does) and each model's weights and files.
    Returns one message per problem (empty: go)."""
    from .data import DatasetError, dataset_root, with_category
    from .data.__main__ import check_category
    from .runner import check_inputs

    dataset = args.get("dataset", "synthetic")
    overrides = _job_overrides(args, extra)[1:]
    cfg = compose(_job_overrides(args, extra))
    problems: list[str] = []
    try:
        dataset_root(cfg.dataset, Path(str(cfg.cache_dir)))
    except DatasetError as err:
        listed = ", ".join(f"{c}/" for c in list(cfg.dataset.categories)[:3])
        return [
            f"dataset {dataset}: {err}. Pass DATASET_ROOT=/path/to/{dataset} (make sweep) or root=... : the folder "
            f"holding {listed} ... (README, 'Datasets'). Check it with: python -m ulsad_bench.data dataset={dataset} "
            f"dataset.root=/path/to/{dataset} dataset.category=all"
        ]
    for category in categories:
        try:
            check_category(with_category(cfg.dataset, category), Path(str(cfg.cache_dir)))
        except DatasetError as err:
            problems.append(f"dataset {dataset}/{category}: {err}")
    by_message: dict[str, list[str]] = {}  # one message for the models that share a missing file
    for model in _models(args):
        try:
            check_inputs(compose([f"model={model}", *overrides]))
        except Exception as err:  # the message names the file and the setting
            by_message.setdefault(f"{type(err).__name__}: {err}", []).append(model)
    for text, models in by_message.items():
        problems.append(f"{'models' if len(models) > 1 else 'model'} {', '.join(models)}: {text}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m ulsad_bench.sweep dataset=NAME [models=a,b] [seeds=0,1] [results=DIR]
    [n_jobs=N] [root=PATH] [categories=a,b] [launcher=basic|parallel|slurm] [plan=1] [-- hydra overrides]``

    Exit status: 0 when every job is ok, 1 when any failed or is missing (the tables are still
    written), 2 for a bad argument or a failed pre-flight (nothing launched). ``plan=1``: the
    plan is printed, nothing is launched, 0 (2 when Hydra cannot compose the sweep's jobs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    if {"-h", "--help"} & set(own):
        print(main.__doc__)
        print("\n".join(f"  {k}: {v}" for k, v in ARGUMENTS.items()))
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        args = parse_arguments(own)
        categories = sweep_categories(args, extra)
        if plan_requested(args):
            from .plan import format_plan, make_plan

            print(format_plan(make_plan(args, extra, categories)), flush=True)
            return 0
        problems = preflight(args, extra, categories)
    except (SweepArgumentError, ValueError, HydraException, OmegaConfBaseException) as err:
        print(f"make sweep: {err}", file=sys.stderr)
        return 2
    if problems:
        print("make sweep: nothing was launched; fix these first:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    command = sweep_command(args, extra, categories)
    print("+", shlex.join(command), flush=True)
    code = subprocess.run(command, cwd=REPO).returncode
    if code != 0:
        print(f"the sweep exited with code {code}; records written so far are kept", file=sys.stderr)
    report = [sys.executable, "-m", "ulsad_bench.report", args.get("results", "outputs"), "--out", "reports"]
    print("+", shlex.join(report), flush=True)
    return subprocess.run(report, cwd=REPO).returncode or code


if __name__ == "__main__":
    raise SystemExit(main())
