"""ulsad-bench: a benchmark harness reproducing ULSAD (TMLR 2024) and its baselines."""

import os

from omegaconf import OmegaConf

from .config import REPO, device_type, run_subdir

__version__ = "0.1.0"

# conf/config.yaml finds the presets in <repo>/experiments through this, from any directory.
os.environ.setdefault("ULSAD_BENCH_ROOT", str(REPO))


def _variant_suffix(variant: object) -> str:
    return "" if variant in (None, "", "null") else f"-{variant}"


if not OmegaConf.has_resolver("variant_suffix"):
    OmegaConf.register_new_resolver("variant_suffix", _variant_suffix)
if not OmegaConf.has_resolver("run_subdir"):
    OmegaConf.register_new_resolver("run_subdir", lambda overrides: run_subdir(list(overrides or [])))
if not OmegaConf.has_resolver("device_type"):
    OmegaConf.register_new_resolver("device_type", device_type)
