"""ULSAD's settings (``conf/model/ulsad.yaml``), declared once: :class:`UlsadSettings`.

Paper values (Section 4.1): Wide-ResNet-50-2 layers 2 and 3, c* = 384, Adam with learning rate
2e-4 and weight decay 2e-5, 200 epochs, alpha = 0.9, beta = 0.995, lambda_l = lambda_g = 0.5
(Table 3, last row); batch size 8 with the last partial batch dropped and quantiles on the blurred
maps from the authors' code (:mod:`.model` has the sources). Each numeric setting's type declares
its range (:mod:`..settings`), checked when the settings are made.
"""

# ruff: noqa: RUF009  (trains() is dataclasses.field(default=<an immutable value>); ruff cannot tell
# that the range-declaring types below, such as Count, are immutable)

from __future__ import annotations

from dataclasses import dataclass

from ..settings import (
    Count,
    LearningRate,
    Positive,
    Probability,
    Settings,
    Weight,
    WeightDecay,
    training_settings,
    trains,
)

ARCHITECTURES = ("paper", "code")
BRANCHES = ("both", "local", "global")
LOSS_PG = ("attention", "l2", "none")
REDUCTIONS = ("mean", "sum")
QUANTILES_ON = ("blurred", "upsampled")


@dataclass(frozen=True)
class UlsadSettings(Settings, model="ulsad"):
    """Every ULSAD setting; those marked :func:`~..settings.trains` determine the trained networks
    (with data, backbone, seed, device type and precision: the trained-model cache's key)."""

    layers: tuple[str, ...] = ("layer2", "layer3")
    feature_dim: Count = 384
    architecture: str = trains("code")
    output_relu: bool | str = trains("auto")
    lambda_l: Weight = trains(0.5)
    lambda_g: Weight = trains(0.5)
    magnitude_reduction: str = trains("mean")
    loss_pg: str = trains("attention")
    loss_lg: bool = trains(True)
    branch: str = "both"
    alpha: Probability = 0.9
    beta: Probability = 0.995
    epochs: Count = trains(200)
    batch_size: Count = trains(8)
    lr: LearningRate = trains(2e-4)
    weight_decay: WeightDecay = trains(2e-5)
    blur_sigma: Positive | None = None
    feature_batch_size: Count = 32
    reuse_trained: bool = True
    cache_attention_target: bool = True
    precompute_features: bool = trains(True)
    drop_last: bool = trains(True)
    quantiles_on: str = "blurred"

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type and range
        if self.quantiles_on not in QUANTILES_ON:
            raise ValueError(f"quantiles_on must be one of {QUANTILES_ON}, got {self.quantiles_on!r}")
        if self.loss_pg not in LOSS_PG:
            raise ValueError(f"loss_pg must be one of {LOSS_PG}, got {self.loss_pg!r}")
        if self.branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {self.branch!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.magnitude_reduction not in REDUCTIONS:
            raise ValueError(f"magnitude_reduction must be one of {REDUCTIONS}, got {self.magnitude_reduction!r}")
        if self.branch != "local" and self.loss_pg == "none" and not self.loss_lg:
            raise ValueError("the global branch is untrained without L_pg and L_lg: set branch=local")
        if not 0 <= self.alpha < self.beta <= 1:
            raise ValueError(f"need 0 <= alpha < beta <= 1, got alpha={self.alpha}, beta={self.beta}")
        if not isinstance(self.output_relu, bool) and self.output_relu != "auto":
            raise ValueError(f"output_relu must be true, false or auto, got {self.output_relu!r}")


#: the settings a trained ULSAD depends on besides data, backbone, seed, device and precision: the
#: trained-model cache's key
TRAINED_BY = training_settings(UlsadSettings)
