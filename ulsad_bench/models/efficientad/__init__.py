"""EfficientAD (Batzner et al., WACV 2024) on anomalib's torch model: the harness's model
(:mod:`.model`), its teacher (:mod:`.teacher`) and its penalty images (:mod:`.penalty`)."""

from .model import EfficientAd

__all__ = ["EfficientAd"]
