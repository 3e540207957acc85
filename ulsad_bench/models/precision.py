"""Mixed precision as a policy per model: what runs under bf16 autocast, what stays in fp32.

``precision=bf16`` (a job setting) means the same policy for every model: the convolutional
networks run under bf16 autocast, their outputs come back as fp32, and everything that bf16
breaks runs in fp32:

- nearest-neighbour distances to a memory bank (PatchCore: ``|x|^2 + |y|^2 - 2 x.y`` subtracts
  large, nearly equal numbers; under autocast the matrix product is bf16 and the distances lose
  their last significant digits, which is where normal and anomalous patches differ);
- Gaussian statistics and Mahalanobis distances (PaDiM);
- quantiles and map normalisation (ULSAD, EfficientAD), feature standardisation and every
  distance or reconstruction error between two feature maps (ULSAD, DFR, EfficientAD);
- the resize-and-pool matrices of DFR's regional features.

Which modules each model runs under autocast is listed in its docstring; each model calls
:func:`autocast_forward` on them (or, for ULSAD, autocasts inside its torch module). The precision
is read at every call, so one fitted model can be measured at both (``make bench``:
:meth:`~ulsad_bench.models.base.AnomalyModel.set_precision`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

PRECISIONS = ("fp32", "bf16")


def check_precision(name: str) -> str:
    """``name`` when it is one of :data:`PRECISIONS`, else an error naming the setting."""
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r}: expected one of {', '.join(PRECISIONS)}")
    return name


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting: bf16, or None for full precision."""
    return torch.bfloat16 if check_precision(name) == "bf16" else None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type (CUDA, or the CPU for checks); nothing for None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def to_fp32(value: Any) -> Any:
    """Every floating tensor in ``value`` (a tensor, or a list / tuple / dict of them) as fp32."""
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, value)


def autocast_forward(module: nn.Module, dtype: Callable[[], torch.dtype | None]) -> nn.Module:
    """Run ``module``'s forward under autocast to ``dtype()`` (read at every call; None: as it
    is) and return its floating outputs as fp32, so the code after it computes in fp32.

    Replaces the instance's ``forward``; parameters, buffers and the state dict are unchanged.
    """
    forward = module.forward

    def mixed_precision_forward(*args: Any, **kwargs: Any) -> Any:
        current = dtype()
        if current is None:
            return forward(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        with autocast(device, current):
            out = forward(*args, **kwargs)
        return to_fp32(out)

    module.forward = mixed_precision_forward  # type: ignore[method-assign]
    return module
