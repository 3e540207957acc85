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

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .artifacts import write_json_atomic
from .config import REPO, compose
from .data import DatasetError, dataset_root, with_category
from .data.__main__ import check_category
from .launch import (
    ARGUMENTS,
    SweepArgumentError,
    job_overrides,
    models_of,
    parse_arguments,
    plan_requested,
    sweep_categories,
    sweep_command,
)
from .outcomes import SWEEP_ID_ENV, format_progress, format_summary, summarize_sweep, sweep_info_path, sweep_progress
from .plan import expand_sweep, format_plan, jobs_at_once, make_plan
from .runner import check_inputs
from .spec import JobSpec

#: the outcome of the last multirun of this process (``run.py`` exits non-zero on failures)
LAST_OUTCOME: dict[str, list[str]] | None = None


# ----------------------------------------------------------------------------- progress of one sweep


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


def preflight(args: dict[str, str], extra: list[str], categories: list[str]) -> list[str]:
    """Problems that would fail every job, found before any job is launched: the dataset (every
    category checked as ``python -m ulsad_bench.data`` does) and each model's weights and files.
    Returns one message per problem (empty: go)."""
    dataset = args.get("dataset", "synthetic")
    overrides = job_overrides(args, extra)[1:]
    cfg = compose(job_overrides(args, extra))
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
    for model in models_of(args):
        try:
            check_inputs(JobSpec.from_config(compose([f"model={model}", *overrides])))
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
    report = [sys.executable, "-m", "ulsad_bench.report", args.get("results", "outputs")]  # -> <results>/reports
    print("+", shlex.join(report), flush=True)
    return subprocess.run(report, cwd=REPO).returncode or code


if __name__ == "__main__":
    raise SystemExit(main())
