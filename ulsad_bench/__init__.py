"""ulsad-bench: a benchmark harness reproducing ULSAD (TMLR 2024) and its baselines."""

import hashlib
import os
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# conf/config.yaml finds the presets in <repo>/experiments through this, from any directory.
os.environ.setdefault("ULSAD_BENCH_ROOT", str(Path(__file__).resolve().parent.parent))


def _variant_suffix(variant: object) -> str:
    return "" if variant in (None, "", "null") else f"-{variant}"


def _subdir(name: object) -> str:
    """``/<overrides>`` for a run folder; long override lists keep a prefix plus a hash."""
    if name in (None, ""):
        return ""
    text = str(name)
    if len(text) > 120:
        text = f"{text[:100]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return f"/{text}"


if not OmegaConf.has_resolver("variant_suffix"):
    OmegaConf.register_new_resolver("variant_suffix", _variant_suffix)
if not OmegaConf.has_resolver("subdir"):
    OmegaConf.register_new_resolver("subdir", _subdir)
