"""Hydra entry point: compose conf/ into one config and run one job (see ulsad_bench.runner).

``dataset.category=all`` is expanded into the dataset's category list and run as a multirun.
Exit status: a single run 0 when its record is ok; a multirun 1 when any job failed or is
missing (the sweep summary says which), else 0.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import ulsad_bench  # noqa: F401  (registers the config resolvers)
from ulsad_bench import sweep
from ulsad_bench.categories import expand_all_categories
from ulsad_bench.outcomes import sweep_failed
from ulsad_bench.runner import run

# Inherited by launcher workers (joblib, submitit): no hub lookups, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    record = run(cfg)
    if record["status"] != "ok" and HydraConfig.get().mode == RunMode.RUN:
        raise SystemExit(1)  # a single run that failed exits non-zero; a sweep goes on


if __name__ == "__main__":
    from hydra.errors import HydraException

    try:
        sys.argv = [sys.argv[0], *expand_all_categories(sys.argv[1:])]
    except (ValueError, HydraException) as err:
        sys.exit(f"run.py: {err}")
    main()
    if sweep.LAST_OUTCOME is not None and sweep_failed(sweep.LAST_OUTCOME):
        sys.exit(1)
