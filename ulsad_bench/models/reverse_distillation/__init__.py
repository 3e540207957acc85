"""Reverse Distillation (Deng and Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022) on anomalib 2.7's torch model, trained by the harness (:mod:`.model`);
anomalib is reached only through :mod:`ulsad_bench.models.anomalib_adapter.reverse_distillation`."""

from .model import ReverseDistillation, ReverseDistillationSettings

__all__ = ["ReverseDistillation", "ReverseDistillationSettings"]
