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
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .config import REPO, compose
from .records import write_json_atomic

SWEEP_ID_ENV = "ULSAD_BENCH_SWEEP_ID"
OUTCOMES_DIR = ".outcomes"
OUTCOMES = ("ran", "skipped", "failed", "missing", "locked")
#: the outcome of the last multirun of this process (``run.py`` exits non-zero on failures)
LAST_OUTCOME: dict[str, list[str]] | None = None


# ----------------------------------------------------------------------------- outcomes of one sweep


def write_outcome(run_dir: Path, outcome: str, detail: str = "") -> None:
    """Called by the runner at the end of every job of a multirun (no-op outside one)."""
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    if not sweep_id:
        return
    payload = {"outcome": outcome, "detail": detail, "pid": os.getpid(), "time": time.time()}
    write_json_atomic(Path(run_dir) / OUTCOMES_DIR / f"{sweep_id}.json", payload)


def summarize_sweep(sweep_dir: Path, sweep_id: str) -> dict[str, list[str]]:
    """What happened to the jobs of sweep ``sweep_id``: one outcome file per job of this sweep
    (written ``started`` when the job begins, then its end); a job still ``started`` when the
    sweep ends was killed (``missing``). Other sweeps' jobs in the same folder are not counted."""
    outcome: dict[str, list[str]] = {name: [] for name in OUTCOMES}
    sweep_dir = Path(sweep_dir)
    for path in sorted(sweep_dir.rglob(f"{OUTCOMES_DIR}/{sweep_id}.json")):
        run_dir = path.parent.parent
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            payload = {"outcome": "missing", "detail": f"unreadable outcome file {path}"}
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


class SweepSummary(Callback):
    """Hydra callback: gives the multirun an id (inherited by its job processes) and prints the
    sweep's outcome when it ends."""

    def __init__(self) -> None:
        self.sweep_id = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        os.environ[SWEEP_ID_ENV] = self.sweep_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_OUTCOME
        LAST_OUTCOME = summarize_sweep(Path(config.hydra.sweep.dir), self.sweep_id)
        os.environ.pop(SWEEP_ID_ENV, None)
        print(format_summary(LAST_OUTCOME), flush=True)


# ----------------------------------------------------------------------------- dataset.category=all


def _parse(argv: Iterable[str]) -> list[Any]:
    """Hydra overrides among command-line arguments (flags such as ``-m``, ``--cfg job``, ``-cn x``
    are not overrides: anything without ``=`` or starting with ``-`` is left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])


def fixed_overrides(argv: Iterable[str], keep_category: bool = False) -> list[str]:
    """The overrides to compose one job's config with: no Hydra settings and no sweeps (a sweep
    over the dataset or an experiment preset is refused: their categories differ)."""
    fixed = []
    for override in _parse(argv):
        key = override.key_or_group
        if key.startswith("hydra") or (key == "dataset.category" and not keep_category):
            continue
        if override.is_sweep_override():
            if key in ("dataset", "experiment"):
                raise ValueError(
                    f"dataset.category=all with a sweep over {override.input_line}: the datasets have different "
                    "categories; run one multirun per dataset"
                )
            continue
        fixed.append(override.input_line)
    return fixed


def dataset_categories(overrides: list[str]) -> list[str]:
    """Every category of the dataset that the config composed with ``overrides`` names (an
    ``+experiment=`` preset may choose the dataset)."""
    from .data import categories_of, with_category

    cfg = compose(overrides)
    return categories_of(with_category(cfg.dataset, "all"))


def expand_all_categories(argv: list[str]) -> list[str]:
    """Command-line arguments with ``dataset.category=all`` replaced by the dataset's categories.

    The dataset is the one the whole command line composes to (``dataset=``, or a preset's), so
    every override takes part; sweeps over other keys do not change it, and a sweep over the
    dataset itself is refused (its categories differ). The result is a multirun (``-m`` is
    added when missing).
    """
    if "dataset.category=all" not in argv:
        return list(argv)
    categories = ",".join(dataset_categories(fixed_overrides(argv)))
    expanded = [f"dataset.category={categories}" if a == "dataset.category=all" else a for a in argv]
    return expanded if {"-m", "--multirun"} & set(expanded) else ["-m", *expanded]


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
    "launcher": "basic | parallel | slurm | subprocess (LAUNCHER)",
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
    [n_jobs=N] [root=PATH] [categories=a,b] [launcher=basic|parallel|slurm] [-- hydra overrides]``

    Exit status: 0 when every job is ok, 1 when any failed or is missing (the tables are still
    written), 2 for a bad argument or a failed pre-flight (nothing launched)."""
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
