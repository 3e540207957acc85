"""ULSAD's distances, attention maps, losses (Eqs. 1-6) and anomaly maps (Eqs. 7-8).

Every loss and map of the paper is the same per-position distance between two feature maps
(``[B, C, h, w]``), differing in its inputs and weight:

    d(a, b)[h, w] = l_v(a[:, h, w], b[:, h, w]) + lambda * l_d(a[:, h, w], b[:, h, w])   (Eqs. 1-2)

with l_v the squared l2 distance (magnitude) and l_d one minus the cosine similarity
(direction). Losses average ``d`` over positions (the 1/k* sum of Eqs. 1, 5, 6) and over the
batch; maps keep it per position (Eqs. 7, 8).

Magnitude reduction: Eq. 2 writes l_v = ||z' - z||^2 (a sum over the c* channels); the
authors' code takes the *mean* over channels. The weights lambda_l = lambda_g = 0.5 of
Section 4.1 and the ablations of Table 3 were obtained with the mean, under which l_v and
l_d have comparable scales; with the sum l_v grows by c* (384) and lambda's effect all but
vanishes. ``reduction="mean"`` (default) follows the code; ``"sum"`` is Eq. 2 to the letter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .settings import REDUCTIONS, UlsadSettings


def magnitude(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """l_v of Eq. 2 at every position: ``[B, C, h, w] x 2 -> [B, h, w]``."""
    squared = (a - b).pow(2)
    if reduction == "mean":
        return squared.mean(dim=1)
    if reduction == "sum":
        return squared.sum(dim=1)
    raise ValueError(f"magnitude reduction must be one of {REDUCTIONS}, got {reduction!r}")


def direction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """l_d of Eq. 2 at every position, 1 - cosine similarity: ``[B, C, h, w] x 2 -> [B, h, w]``."""
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)


def distance_map(a: torch.Tensor, b: torch.Tensor, lam: float, reduction: str = "mean") -> torch.Tensor:
    """``l_v + lambda l_d`` at every position (Eqs. 1, 5-8 before averaging): ``[B, h, w]``."""
    out = magnitude(a, b, reduction)
    if lam:
        out = out + lam * direction(a, b)
    return out


def distance_loss(a: torch.Tensor, b: torch.Tensor, lam: float, reduction: str = "mean") -> torch.Tensor:
    """Eqs. 1, 5 and 6: the per-position distance averaged over the k* positions (and batch)."""
    return distance_map(a, b, lam, reduction).mean()


def attention_map(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Attention of Eqs. 3-4: ``A = Z W`` with ``W[p, q] = softmax_p(z_p . q_q / sqrt(c*))``.

    Args:
        query: ``[B, c*, h, w]``: Z for the self-attention map A (Eq. 3), U^ for the
            cross-attention map A^ (Eq. 4).
        key: ``[B, c*, h, w]``: Z (keys and values are the frozen features in both).

    Returns:
        ``[B, c*, h, w]``: column q is the attention-weighted average of the patch features.
        One batched ``scaled_dot_product_attention`` (scale 1 / sqrt(c*)), no Python loops.
    """
    b, c, h, w = key.shape
    q = query.flatten(2).transpose(1, 2)  # [B, k*, c*]
    kv = key.flatten(2).transpose(1, 2)  # [B, k*, c*]
    out = F.scaled_dot_product_attention(q, kv, kv)  # [B, k*, c*]
    return out.transpose(1, 2).reshape(b, c, h, w)


@torch.no_grad()
def attention_targets(
    features: torch.Tensor, standardize: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """The self-attention maps A of Eq. 3 for cached features ``[N, c*, h, w]``, computed once.

    A depends only on the frozen, standardised features U, so with the features cached it is
    as fixed as they are; computing it once per training set instead of at every step saves one
    ``k* x k*`` attention per image and step, at the cost of a second tensor the size of the
    features, kept where they are. The values are those of the per-step computation (the same
    function, batched differently).
    """
    chunks = []
    for start in range(0, len(features), batch_size):
        u = standardize(features[start : start + batch_size])
        chunks.append(attention_map(u.float(), u.float()).to(features.device))
    return torch.cat(chunks)


class UlsadLoss(nn.Module):
    """Algorithm 1's objective for a batch: L_pl (Eq. 1), L_pg (Eq. 5) or its variant L^d_pg
    (U^ against U), and L_lg (Eq. 6); ``forward`` returns the named terms (their sum is
    minimised).

    From :class:`~.settings.UlsadSettings`: ``loss_pg``: ``attention`` (L_pg), ``l2`` (L^d_pg) or
    ``none``; ``loss_lg``: Eq. 6 on/off (Table 3's ablations); ``lambda_l``, ``lambda_g``,
    ``magnitude_reduction``, ``feature_dim``.
    """

    def __init__(self, settings: UlsadSettings) -> None:
        super().__init__()
        self.feature_dim, self.lambda_l, self.lambda_g = settings.feature_dim, settings.lambda_l, settings.lambda_g
        self.reduction, self.loss_pg, self.loss_lg = settings.magnitude_reduction, settings.loss_pg, settings.loss_lg

    @property
    def terms(self) -> list[str]:
        """The names of the terms :meth:`forward` returns, in its order."""
        return ["pl", *(["pg"] if self.loss_pg != "none" else []), *(["lg"] if self.loss_lg else [])]

    def forward(
        self, u: torch.Tensor, u_tilde: torch.Tensor, u_hat: torch.Tensor, target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``u``: standardised U ``[B, c*, h, w]``; ``u_tilde``: the FRN's U~ ``[B, 2 c*, h, w]``
        (U' then U''); ``u_hat``: the global autoencoder's U^; ``target``: the precomputed A of
        Eq. 3 for the batch (:func:`attention_targets`), None computes it here."""
        c = self.feature_dim
        u, u_tilde, u_hat = u.float(), u_tilde.float(), u_hat.float()
        losses = {"pl": distance_loss(u_tilde[:, :c], u, self.lambda_l, self.reduction)}
        if self.loss_pg == "attention":
            if target is None:
                with torch.no_grad():
                    target = attention_map(u, u)  # A = Z W, Eq. 3 (fixed: U is frozen)
            losses["pg"] = distance_loss(attention_map(u_hat, u), target, self.lambda_g, self.reduction)
        elif self.loss_pg == "l2":
            losses["pg"] = distance_loss(u_hat, u, self.lambda_g, self.reduction)
        if self.loss_lg:
            losses["lg"] = distance_loss(u_tilde[:, c:], u_hat, self.lambda_g, self.reduction)
        return losses
