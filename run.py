"""Hydra entry point: compose conf/ into one config and run one job (see ulsad_bench.runner)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import ulsad_bench  # noqa: F401  (registers the config resolvers)
from ulsad_bench.runner import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    record = run(cfg)
    if record["status"] != "ok" and HydraConfig.get().mode == RunMode.RUN:
        raise SystemExit(1)  # a single run that failed exits non-zero; a sweep goes on


if __name__ == "__main__":
    main()
