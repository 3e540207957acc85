"""Models of the harness: one module per method, all behind :class:`AnomalyModel`."""

from .base import AnomalyModel, Prediction, RunContext

__all__ = ["AnomalyModel", "Prediction", "RunContext"]
