"""CFLOW-AD (Gudovskiy, Ishizaka, Kozuka, "CFLOW-AD: Real-time unsupervised anomaly detection with
localization via conditional normalizing flows", WACV 2022) on anomalib 2.7's torch model, trained
by the harness with anomalib 0.7's configuration (:mod:`.model`, sources in its docstring)."""

from .model import Cflow

__all__ = ["Cflow"]
