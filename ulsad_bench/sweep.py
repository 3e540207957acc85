"""Sweeps: every category x model x seed of a dataset as one Hydra multirun, then the tables.

``make sweep DATASET=visa MODELS=ulsad,patchcore SEEDS=0,1,2,3,4 N_JOBS=2`` runs
``python -m ulsad_bench.sweep dataset=visa models=... seeds=... n_jobs=...``, which calls
``run.py -m`` with Hydra's own launchers (``basic`` for one job at a time, ``parallel`` =
joblib for several, ``slurm`` = submitit on a cluster): no home-made scheduler. Jobs whose
record is ``ok`` with the same config hash are skipped, so a killed sweep re-run finishes only
what is missing. :class:`SweepSummary` (a Hydra callback, enabled in ``conf/config.yaml``)
prints what the sweep did at its end: jobs run, skipped, failed (which), and missing.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .records import RECORD_NAME, read_record

REPO = Path(__file__).resolve().parent.parent


def summarize_sweep(sweep_dir: Path, since: float) -> dict[str, list[str]]:
    """What happened to the jobs of a sweep started at time ``since`` (epoch seconds).

    A job of this sweep is a run folder whose ``.hydra/config.yaml`` Hydra wrote after ``since``.
    It ran if its record was finished after ``since``, was skipped if its ok record is
    older, failed if its record says so, and is missing if it has no record (killed).
    """
    outcome: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": [], "missing": []}
    for hydra_dir in sorted(Path(sweep_dir).rglob(".hydra")):
        started = hydra_dir / "config.yaml"  # rewritten by Hydra whenever a job starts in this folder
        if not started.is_file() or started.stat().st_mtime < since - 1:
            continue
        run_dir = hydra_dir.parent
        label = str(run_dir.relative_to(sweep_dir))
        record_path = run_dir / RECORD_NAME
        record = read_record(record_path)
        if record is None:
            outcome["missing"].append(label)
        elif record.get("status") != "ok":
            outcome["failed"].append(f"{label}: {record.get('error', 'unknown error')}")
        elif record_path.stat().st_mtime >= since - 1:
            outcome["ran"].append(label)
        else:
            outcome["skipped"].append(label)
    return outcome


def format_summary(outcome: dict[str, list[str]]) -> str:
    lines = [
        f"sweep summary: {len(outcome['ran'])} ran, {len(outcome['skipped'])} skipped (already done), "
        f"{len(outcome['failed'])} failed, {len(outcome['missing'])} missing (no record)"
    ]
    lines += [f"  FAILED  {item}" for item in outcome["failed"]]
    lines += [f"  MISSING {item}" for item in outcome["missing"]]
    return "\n".join(lines)


class SweepSummary(Callback):
    """Hydra callback printing the sweep's outcome when a multirun ends."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(format_summary(summarize_sweep(Path(config.hydra.sweep.dir), self.started)), flush=True)


def dataset_categories(dataset: str, overrides: list[str]) -> list[str]:
    """Every category listed in ``conf/dataset/<dataset>.yaml``."""
    from hydra import compose, initialize_config_dir

    from .data import categories_of, with_category

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset={dataset}", *overrides])
    return categories_of(with_category(cfg.dataset, "all"))


def expand_all_categories(argv: list[str]) -> list[str]:
    """Command-line arguments with ``dataset.category=all`` replaced by the dataset's categories.

    The result is a multirun (``-m`` is added when missing).
    """
    if "dataset.category=all" not in argv:
        return list(argv)
    dataset = next((a.split("=", 1)[1] for a in argv if a.startswith("dataset=")), "synthetic")
    root = [a for a in argv if a.startswith("dataset.root=")]
    categories = ",".join(dataset_categories(dataset, root))
    expanded = [f"dataset.category={categories}" if a == "dataset.category=all" else a for a in argv]
    return expanded if {"-m", "--multirun"} & set(expanded) else ["-m", *expanded]


def sweep_command(args: dict[str, str], extra: list[str]) -> list[str]:
    dataset = args.get("dataset", "synthetic")
    root_override = [f"dataset.root={args['root']}"] if args.get("root") else []
    categories = args.get("categories") or ",".join(dataset_categories(dataset, root_override))
    launcher = args.get("launcher") or ("parallel" if int(args.get("n_jobs", "1")) > 1 else "basic")
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"model={args.get('models', 'ulsad,patchcore,padim,efficientad,dfr')}",
        f"dataset={dataset}",
        f"dataset.category={categories}",
        f"seed={args.get('seeds', '0,1,2,3,4')}",
        f"output_root={args.get('results', 'outputs')}",
        f"hydra/launcher={launcher}",
        *root_override,
    ]
    if launcher == "parallel":
        command.append(f"hydra.launcher.n_jobs={args.get('n_jobs', '2')}")
    return command + extra


def main(argv: list[str] | None = None) -> int:
    """``python -m ulsad_bench.sweep dataset=NAME [models=a,b] [seeds=0,1] [results=DIR]
    [n_jobs=N] [root=PATH] [categories=a,b] [launcher=basic|parallel|slurm] [-- hydra overrides]``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    args = dict(item.split("=", 1) for item in own if item)
    command = sweep_command(args, extra)
    print("+", shlex.join(command), flush=True)
    code = subprocess.run(command, cwd=REPO).returncode
    if code != 0:
        print(f"the sweep exited with code {code}; records written so far are kept", file=sys.stderr)
    report = [sys.executable, "-m", "ulsad_bench.report", args.get("results", "outputs"), "--out", "reports"]
    print("+", shlex.join(report), flush=True)
    return subprocess.run(report, cwd=REPO).returncode or code


if __name__ == "__main__":
    raise SystemExit(main())
