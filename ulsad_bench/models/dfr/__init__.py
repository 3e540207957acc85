"""DFR (Yang, Shi, Qi, "Unsupervised anomaly segmentation via deep feature reconstruction",
Neurocomputing 2020), reimplemented from the paper and the authors' public code
(github.com/YoungGod/DFR, ``DFR-source/``), the eighth baseline of the ULSAD paper.

Split as anomalib's model folders split ``torch_model`` from ``lightning_model``:

- :mod:`.torch_model`: the pure torch modules, no training logic: :class:`RegionalFeatures`
  (the multi-scale regional feature generator over VGG19), :class:`FeatCAE` (the
  convolutional autoencoder of 1 x 1 convolutions) and :class:`DfrModel` (both, for inference:
  images -> anomaly maps and scores);
- :mod:`.model`: :class:`Dfr`, the :class:`~ulsad_bench.models.base.AnomalyModel` that trains
  them (feature cache, latent width chosen by PCA, epochs).

Each module's docstring names the file of the authors' code behind every value.
"""

from .model import Dfr
from .torch_model import DfrModel

__all__ = ["Dfr", "DfrModel"]
