"""Image AUROC, pixel AUROC and AUPRO: one implementation used for every model.

All functions take numpy arrays and return a float in [0, 1]. They are exact: every distinct
score is a threshold (no binning), ties count one half, as in the Mann-Whitney statistic.

``aupro`` follows the MVTec AD evaluation script (Bergmann et al.): regions are the
8-connected components of each ground-truth mask; the per-region overlap is averaged over
all regions of all images; the false positive rate is taken over all normal pixels of all
images (normal images included); the PRO-vs-FPR curve is integrated with the trapezoid rule
up to ``fpr_limit`` (the end point interpolated) and divided by ``fpr_limit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def _check(target: np.ndarray, score: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(target)
    score = np.asarray(score)
    if target.shape != score.shape:
        raise ValueError(f"{what}: targets {target.shape} and scores {score.shape} differ in shape")
    if score.dtype == bool or not np.issubdtype(score.dtype, np.number):
        raise ValueError(
            f"{what}: scores have dtype {score.dtype}; expected real-valued anomaly scores (float or integer), "
            "not a thresholded (boolean) map"
        )
    if not np.all(np.isfinite(score)):
        raise ValueError(f"{what}: scores contain NaN or infinite values")
    return target.astype(bool).ravel(), score.ravel()


def _auroc(positive: np.ndarray, score: np.ndarray, what: str) -> float:
    """Area under the ROC curve via average ranks (exact, ties count one half)."""
    n = positive.size
    n_pos = int(positive.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{what}: needs both normal and anomalous entries (got {n_pos} anomalous of {n})")
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    sorted_pos = positive[order].astype(np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_score)) + 1))
    ends = np.concatenate((starts[1:], [n]))
    average_rank = (starts + ends + 1) / 2.0  # 1-based ranks, averaged over each tie group
    positives_per_group = np.add.reduceat(sorted_pos, starts)
    rank_sum = float(np.dot(positives_per_group, average_rank))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of image scores ``[N]`` against labels ``[N]`` (1 = anomalous)."""
    positive, score = _check(labels, scores, "image_auroc")
    return _auroc(positive, score, "image_auroc")


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over all pixels of all images: maps ``[N, H, W]`` against masks ``[N, H, W]``."""
    positive, score = _check(masks, maps, "pixel_auroc")
    return _auroc(positive, score, "pixel_auroc")


def trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` from ``x[0]`` to ``x_max``, interpolating at ``x_max``.

    ``x`` must be non-decreasing. As in the MVTec AD evaluation code.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    correction = 0.0
    if not np.any(x == x_max):
        ins = int(np.searchsorted(x, x_max, side="right"))
        if not 0 < ins < len(x):
            raise ValueError(f"x_max={x_max} lies outside the curve's range [{x[0]}, {x[-1]}]")
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel 1 / size of its 8-connected ground-truth region (0 outside regions).

    Returns:
        weights float64 ``[N, H, W]`` and the total number of regions.
    """
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if n == 0:
            continue
        sizes = np.bincount(labeled.ravel()).astype(np.float64)
        inverse = np.zeros_like(sizes)
        inverse[1:] = 1.0 / sizes[1:]
        weights[i] = inverse[labeled]
        n_regions += n
    return weights, n_regions


def pro_curve(masks: np.ndarray, maps: np.ndarray, fpr_limit: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve: (FPR, PRO) at every distinct threshold, from (0, 0) on.

    With ``fpr_limit`` set, only thresholds up to the first one whose FPR exceeds the limit
    are computed (the points that ``aupro`` integrates); this skips most of the sort.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps)
    if masks.ndim != 3:
        raise ValueError(f"aupro: masks must be [N, H, W], got shape {masks.shape}")
    _check(masks, maps, "aupro")
    weights, n_regions = region_weights(masks)
    normal = ~masks.ravel()
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError(f"aupro: needs anomalous regions and normal pixels (got {n_regions} regions)")
    scores = maps.ravel()
    keep = None
    if fpr_limit is not None:
        k = int(np.floor(fpr_limit * n_normal)) + 1  # FPR at threshold t exceeds the limit once k normals are >= t
        if k <= n_normal:
            normal_scores = scores[normal]
            cut = np.partition(normal_scores, n_normal - k)[n_normal - k]
            keep = scores >= cut
    if keep is not None:
        scores, normal, pro_weights = scores[keep], normal[keep], weights.ravel()[keep]
    else:
        pro_weights = weights.ravel()
    # Descending order without negating: -x wraps around for unsigned integers (-0 is 0, -1 is 255).
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    fpr = np.cumsum(normal[order], dtype=np.float64) / n_normal
    pro = np.cumsum(pro_weights[order]) / n_regions
    last_of_group = np.concatenate((sorted_scores[1:] != sorted_scores[:-1], [True]))
    fpr = np.clip(fpr[last_of_group], 0.0, 1.0)
    pro = np.clip(pro[last_of_group], 0.0, 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see module docstring)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, fpr_limit)
    return float(np.clip(trapezoid_to(fpr, pro, fpr_limit) / fpr_limit, 0.0, 1.0))


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    maps: np.ndarray,
    kinds: Sequence[str] | None = None,
    fpr_limit: float = 0.3,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """All metrics of one test set, overall and per anomaly kind.

    Args:
        labels: ``[N]`` 0/1. scores: ``[N]``. masks: bool ``[N, H, W]``. maps: ``[N, H, W]``.
        kinds: anomaly kind of each image (``good`` for normal ones). When the anomalous
            images have more than one kind, each kind is scored against all normal images.

    Returns:
        ``(metrics, metrics_by_kind)``; the second is empty for single-kind datasets.
    """
    labels = np.asarray(labels)

    def score(subset: np.ndarray) -> dict[str, float]:
        return {
            "image_auroc": image_auroc(labels[subset], scores[subset]),
            "pixel_auroc": pixel_auroc(masks[subset], maps[subset]),
            "aupro": aupro(masks[subset], maps[subset], fpr_limit),
        }

    everything = np.ones(len(labels), dtype=bool)
    overall = score(everything)
    by_kind: dict[str, dict[str, float]] = {}
    if kinds is not None:
        kinds_arr = np.asarray(kinds)
        anomalous_kinds = sorted(set(kinds_arr[labels == 1].tolist()))
        if len(anomalous_kinds) > 1:
            for kind in anomalous_kinds:
                by_kind[kind] = score((labels == 0) | (kinds_arr == kind))
    return overall, by_kind
