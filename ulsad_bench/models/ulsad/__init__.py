"""ULSAD (Patra & Ben Taieb, TMLR 2024): networks, losses, and the harness model."""

from .model import Ulsad

__all__ = ["Ulsad"]
