"""DRAEM (Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
for surface anomaly detection", ICCV 2021) on anomalib 2.7's torch model, trained by the harness.

- :mod:`.model`: :class:`Draem`, the :class:`~ulsad_bench.models.base.AnomalyModel` (anomalib's
  ``training_step`` and optimiser re-created; sources in its docstring);
- :mod:`.anomaly_source`: where the synthetic anomalies take their texture from (DTD, offline, or
  generated Perlin-noise textures, a recorded substitute).
"""

from .model import Draem

__all__ = ["Draem"]
