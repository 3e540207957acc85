"""FastFlow (Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows", 2021) on anomalib 2.7's torch model, trained by the harness
(:mod:`.model`); anomalib is reached only through
:mod:`ulsad_bench.models.anomalib_adapter.fastflow`."""

from .model import Fastflow, FastflowSettings

__all__ = ["Fastflow", "FastflowSettings"]
