"""ulsad-bench: a benchmark harness reproducing ULSAD (TMLR 2024) and its baselines."""

from omegaconf import OmegaConf

__version__ = "0.1.0"


def _variant_suffix(variant: object) -> str:
    return "" if variant in (None, "", "null") else f"-{variant}"


def _subdir(name: object) -> str:
    return "" if name in (None, "") else f"/{name}"


if not OmegaConf.has_resolver("variant_suffix"):
    OmegaConf.register_new_resolver("variant_suffix", _variant_suffix)
if not OmegaConf.has_resolver("subdir"):
    OmegaConf.register_new_resolver("subdir", _subdir)
