"""``make sweep``'s arguments and the one Hydra multirun command they become.

``python -m ulsad_bench.sweep dataset=... models=... seeds=... [-- hydra overrides]`` (the
arguments: :data:`ARGUMENTS`) launches ``run.py -m`` with the command :func:`sweep_command`
builds; the plan (:mod:`ulsad_bench.plan`) expands the same command, so what it lists is what
the sweep runs.
"""

from __future__ import annotations

import sys

from .categories import dataset_categories
from .config import REPO, fixed_overrides

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
DEFAULT_MODELS = "ulsad,patchcore,padim,efficientad,dfr,cflow,fastflow,draem,reverse_distillation"


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


def models_of(args: dict[str, str]) -> list[str]:
    return args.get("models", DEFAULT_MODELS).split(",")


def base_overrides(args: dict[str, str], extra: list[str]) -> list[str]:
    """``dataset=``, ``dataset.root=`` and ``extra``, to compose the sweep's config with."""
    overrides = [f"dataset={args.get('dataset', 'synthetic')}"]
    if args.get("root"):
        overrides.append(f"dataset.root={hydra_quote(args['root'])}")
    return overrides + list(extra)


def job_overrides(args: dict[str, str], extra: list[str]) -> list[str]:
    """What one job of the sweep composes with: the first model, the dataset, the fixed extras."""
    return [f"model={models_of(args)[0]}", *fixed_overrides(base_overrides(args, extra))]


def sweep_categories(args: dict[str, str], extra: list[str]) -> list[str]:
    if args.get("categories"):
        return args["categories"].split(",")
    return dataset_categories(job_overrides(args, extra))


def sweep_command(args: dict[str, str], extra: list[str], categories: list[str] | None = None) -> list[str]:
    categories = categories or sweep_categories(args, extra)
    launcher = args.get("launcher") or ("parallel" if int(args.get("n_jobs", "1")) > 1 else "basic")
    base = base_overrides(args, [])
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"model={','.join(models_of(args))}",
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
