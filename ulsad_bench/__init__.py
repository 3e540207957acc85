"""ulsad-bench: a benchmark harness reproducing ULSAD (TMLR 2024) and its baselines."""

from omegaconf import OmegaConf

__version__ = "0.1.0"


def _variant_suffix(variant: object) -> str:
    return "" if variant in (None, "", "null") else f"-{variant}"


if not OmegaConf.has_resolver("variant_suffix"):
    OmegaConf.register_new_resolver("variant_suffix", _variant_suffix)
