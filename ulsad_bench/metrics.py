"""Every metric of a test set, one implementation used for every model: image and pixel AUROC,
AP and F1-max, AUPRO (at any FPR limits), MVTec LOCO's sPRO and MVTec AD 2's SegF1
(:func:`score_test_set`, :func:`evaluate`, :func:`seg_f1`).

All functions take numpy arrays; the metrics are fractions in [0, 1] (F1-max also returns its
threshold). They are exact: every distinct score is a threshold (no binning), ties count one
half in the AUROC (Mann-Whitney) and are handled as sklearn does in AP and F1-max. All pixel
metrics of a test set rank the anomalous pixels against one sort of the normal pixels
(:class:`Ranked`).

``aupro`` follows the MVTec AD evaluation script (Bergmann et al.): regions are the
8-connected components of each ground-truth mask; the per-region overlap is averaged over
all regions of all images; the false positive rate is taken over all normal pixels of all
images (normal images included); the PRO-vs-FPR curve is integrated with the trapezoid rule
up to ``fpr_limit`` (the end point interpolated) and divided by ``fpr_limit``. The same curve
gives AU-PRO at every limit of ``metrics.pro_limits`` (:func:`pro_key`): MVTec AD 2's official
evaluation is this MVTec AD code (MVTecAD2_public_code_utils/README.txt L30-39 points to it) with
its headline at FPR 0.05 (``mvtec_ad_evaluation/evaluate_experiment.py`` L162-164 integrate the
PRO curve to ``integration_limit`` with ``trapezoid`` and divide by it; ``pro_curve_util.py``
computes the curve over all regions and all anomaly-free pixels; ``generic_util.trapezoid``
interpolates the end point).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

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


@dataclass
class Ranked:
    """Positives ranked against negatives: one entry per distinct positive score, descending.

    What every threshold metric needs (ROC, precision-recall, PRO): a threshold ``t`` counts a
    pixel or image as anomalous when its score is ``>= t``; every distinct score is a threshold.
    Between two distinct positive scores only negatives enter, which changes ROC, PR and PRO
    curves along straight (horizontal) lines, so these entries give every curve exactly.

    Attributes:
        scores: ``[G]`` the distinct scores of the positives, descending.
        tp: ``[G]`` positives with that score.
        weight: ``[G]`` the summed weights of those positives (PRO / sPRO); ``tp`` when unweighted.
        neg_above: ``[G]`` negatives with a higher score.
        neg_equal: ``[G]`` negatives with that score (ties).
        n_pos, n_neg: totals.
    """

    scores: np.ndarray
    tp: np.ndarray
    weight: np.ndarray
    neg_above: np.ndarray
    neg_equal: np.ndarray
    n_pos: int
    n_neg: int

    @cached_property
    def cum_tp(self) -> np.ndarray:
        return np.cumsum(self.tp)

    @cached_property
    def cum_fp(self) -> np.ndarray:
        """Negatives at or above each threshold."""
        return self.neg_above + self.neg_equal


def sorted_negatives(fresh: np.ndarray) -> np.ndarray:
    """The negatives' scores sorted ascending, *in place* (pass an array of your own, such as
    ``maps[~masks]``): the one sort that every pixel metric of a test set shares."""
    out = fresh.ravel()
    out.sort(kind="quicksort")
    return out


def rank(positive_scores: np.ndarray, negatives_sorted: np.ndarray, weights: np.ndarray | None = None) -> Ranked:
    """Rank positives against the (ascending) sorted negatives; see :class:`Ranked`."""
    positive_scores = np.asarray(positive_scores).ravel()
    if positive_scores.size == 0:
        raise ValueError("rank: no positives to rank (no anomalous pixels, images or channel pixels)")
    order = np.argsort(positive_scores, kind="stable")[::-1]  # descending without negating (unsigned ints)
    ordered = positive_scores[order]
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1)).astype(np.int64)
    distinct = ordered[starts]
    tp = np.diff(np.append(starts, len(ordered)))
    weight = tp.astype(np.float64) if weights is None else np.add.reduceat(np.asarray(weights)[order], starts)
    right = np.searchsorted(negatives_sorted, distinct, side="right")
    left = np.searchsorted(negatives_sorted, distinct, side="left")
    n_neg = len(negatives_sorted)
    return Ranked(distinct, tp, np.asarray(weight, dtype=np.float64), n_neg - right, right - left, len(ordered), n_neg)


def _ranked(positive: np.ndarray, score: np.ndarray, what: str) -> Ranked:
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        raise ValueError(f"{what}: needs both normal and anomalous entries (got {n_pos} anomalous of {positive.size})")
    return rank(score[positive], sorted_negatives(score[~positive]))


def auroc_of(r: Ranked) -> float:
    """Area under the ROC curve: P(positive > negative) + 1/2 P(tie) (Mann-Whitney)."""
    below = r.n_neg - r.neg_above - r.neg_equal
    return float(np.dot(r.tp, below + 0.5 * r.neg_equal) / (r.n_pos * r.n_neg))


def average_precision_of(r: Ranked) -> float:
    """sklearn's ``average_precision_score``: sum over thresholds of (recall step) x precision."""
    cum_tp = r.cum_tp
    precision = cum_tp / (cum_tp + r.cum_fp)
    return float(np.dot(r.tp, precision) / r.n_pos)


def f1_max_of(r: Ranked) -> tuple[float, float]:
    """The largest F1 over all thresholds and the threshold that gives it (the highest one on a
    tie). F1 only falls while negatives alone enter, so its maximum is at a positive's score."""
    cum_tp = r.cum_tp
    f1 = 2.0 * cum_tp / (cum_tp + r.cum_fp + r.n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(r.scores[best])


def _auroc(positive: np.ndarray, score: np.ndarray, what: str) -> float:
    """Area under the ROC curve (exact, ties count one half)."""
    return auroc_of(_ranked(positive, score, what))


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
    """Per anomalous pixel (in ``masks[masks]`` order) 1 / the size of its 8-connected region.

    Returns:
        weights float64 ``[P]`` and the total number of regions.
    """
    weights = []
    n_regions = 0
    for mask in masks:
        labeled, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if n == 0:
            continue
        sizes = np.bincount(labeled.ravel()).astype(np.float64)
        weights.append(1.0 / sizes[labeled[mask]])
        n_regions += n
    return (np.concatenate(weights) if weights else np.zeros(0)), n_regions


def overlap_curve(r: Ranked, total: float) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, overlap) at every distinct threshold, from (0, 0) to (1, 1): the PRO curve when the
    positives' weights are 1 / region size (``total`` the number of regions), the sPRO curve
    when they are saturated channel increments (``total`` the number of channels). Points where
    only negatives enter lie on horizontal segments and are represented by their ends."""
    overlap = np.cumsum(r.weight) / total
    before = np.concatenate(([0.0], overlap[:-1]))
    x = np.stack([r.neg_above / r.n_neg, r.cum_fp / r.n_neg], axis=1).ravel()
    y = np.stack([before, overlap], axis=1).ravel()
    x = np.concatenate(([0.0], x, [1.0, 1.0]))
    y = np.concatenate(([0.0], y, [overlap[-1], 1.0]))
    keep = np.concatenate(([True], (np.diff(x) != 0) | (np.diff(y) != 0)))
    return np.clip(x[keep], 0.0, 1.0), np.clip(y[keep], 0.0, 1.0)


def area_to(fpr: np.ndarray, overlap: np.ndarray, fpr_limit: float) -> float:
    """Normalised area under an overlap curve up to ``fpr_limit`` (trapezoids, end interpolated)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return float(np.clip(trapezoid_to(fpr, overlap, fpr_limit) / fpr_limit, 0.0, 1.0))


def _pro_ranked(masks: np.ndarray, maps: np.ndarray, negatives: np.ndarray | None = None) -> tuple[Ranked, int]:
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps)
    if masks.ndim != 3:
        raise ValueError(f"aupro: masks must be [N, H, W], got shape {masks.shape}")
    _check(masks, maps, "aupro")
    weights, n_regions = region_weights(masks)
    if n_regions == 0 or masks.all():
        raise ValueError(f"aupro: needs anomalous regions and normal pixels (got {n_regions} regions)")
    negatives = sorted_negatives(maps[~masks]) if negatives is None else negatives
    return rank(maps[masks], negatives, weights), n_regions


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve: (FPR, PRO) at every distinct threshold, from (0, 0) to (1, 1)."""
    ranked, n_regions = _pro_ranked(masks, maps)
    return overlap_curve(ranked, n_regions)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see module docstring)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return area_to(*pro_curve(masks, maps), fpr_limit)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of scores against labels, as sklearn's ``average_precision_score``."""
    positive, score = _check(labels, scores, "average_precision")
    return average_precision_of(_ranked(positive, score, "average_precision"))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``(F1-max, threshold)``: the best F1 over every threshold ``score >= t``."""
    positive, score = _check(labels, scores, "f1_max")
    return f1_max_of(_ranked(positive, score, "f1_max"))


# ----------------------------------------------------------------------------- MVTec LOCO sPRO


@dataclass(frozen=True)
class Channel:
    """One ground-truth channel of MVTec LOCO (one mask file of one anomalous image).

    Attributes:
        image: index of its image in the test set.
        mask: bool ``[H, W]`` at the maps' resolution.
        saturation: the overlap in pixels (at that resolution) at which its sPRO reaches 1.
    """

    image: int
    mask: np.ndarray
    saturation: float


def spro_weights(scores: np.ndarray, saturation: float) -> np.ndarray:
    """Per pixel of one channel, in descending score order, the increment of
    ``min(overlap / saturation, 1)`` it brings (the pixels of a tie sum to the tie's increment)."""
    count = np.arange(len(scores) + 1, dtype=np.float64)
    value = np.minimum(count / max(saturation, 1.0), 1.0)
    return np.diff(value)


def spro_ranked(maps: np.ndarray, channels: Sequence[Channel], negatives: np.ndarray) -> Ranked:
    """Every channel pixel as a weighted positive (:func:`spro_weights`) against the negatives."""
    scores, weights = [], []
    for channel in channels:
        values = np.asarray(maps[channel.image])[channel.mask]
        values = values[np.argsort(values, kind="stable")[::-1]]
        scores.append(values)
        weights.append(spro_weights(values, channel.saturation))
    return rank(np.concatenate(scores), negatives, np.concatenate(weights))


def spro_curve(maps: np.ndarray, masks: np.ndarray, channels: Sequence[Channel]) -> tuple[np.ndarray, np.ndarray]:
    """The sPRO curve (Bergmann et al. 2022): mean over all channels of ``min(overlap /
    saturation, 1)`` against the FPR over every pixel outside the union masks (good images and
    the defect-free pixels of anomalous ones), at every distinct threshold."""
    if not channels:
        raise ValueError("spro: no ground-truth channels")
    negatives = sorted_negatives(np.asarray(maps)[~np.asarray(masks, dtype=bool)])
    return overlap_curve(spro_ranked(maps, channels, negatives), len(channels))


# ----------------------------------------------------------------------------- MVTec AD 2's SegF1

#: the threshold rule of SegF1: mean + 3 std of the validation images' anomaly-map pixels
SEG_THRESHOLD_STDS = 3.0
SEG_F1 = "seg_f1"


@dataclass(frozen=True)
class SegThreshold:
    """The segmentation threshold of SegF1 and what it was computed from (for the record)."""

    value: float
    mean: float
    std: float
    images: int
    pixels: int

    def as_record(self, source: str) -> dict[str, float | int | str]:
        return {
            "value": self.value,
            "rule": f"mean + {SEG_THRESHOLD_STDS:g} std of every anomaly-map pixel of the threshold images",
            "mean": self.mean,
            "std": self.std,
            "images": self.images,
            "pixels": self.pixels,
            "source": source,
            "binarised": "score >= value is anomalous",
        }


def segmentation_threshold(maps: np.ndarray, stds: float = SEG_THRESHOLD_STDS) -> SegThreshold:
    """``mean + stds x std`` over every pixel of the anomaly maps ``[N, H, W]`` of anomaly-free
    images that are not test images (MVTec AD 2's validation set). The rule is the official one:
    the MVTec AD 2 upload checker's hint, ``segmentation_threshold = np.mean(anomaly_scores_val) + 3 *
    np.std(anomaly_scores_val)`` (MVTecAD2_public_code_utils/check_and_prepare_data_for_upload.py
    L58-66), with numpy's population std (ddof 0), fixed without test data. Maps at the size the
    metrics score them (``dataset.image_size``, the model's crop applied), as the test maps."""
    maps = np.asarray(maps)
    if maps.size == 0:
        raise ValueError("segmentation threshold: no anomaly maps of threshold images")
    if not np.all(np.isfinite(maps)):
        raise ValueError("segmentation threshold: the threshold images' maps contain NaN or infinite values")
    mean = float(np.mean(maps, dtype=np.float64))
    std = float(np.std(maps, dtype=np.float64))
    return SegThreshold(mean + stds * std, mean, std, int(maps.shape[0]), int(maps.size))


def seg_f1(masks: np.ndarray, maps: np.ndarray, threshold: float) -> float:
    """SegF1: the F1 of the binarised maps (``score >= threshold``) against the masks, over every
    pixel of every test image pooled (``2 TP / (2 TP + FP + FN)``; 0 when nothing is found).

    MVTec AD 2 (Heckler-Kram et al. 2025) scores submitted binary masks on its server; whether the
    server pools pixels over a category's images, as here, or averages per-image F1 scores is not
    stated in the official code at hand (MVTecAD2_public_code_utils/ only checks the submission): the
    pooled F1 is the choice here, made for the whole test set as the other pixel metrics are.
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps)
    _check(masks, maps, "seg_f1")
    predicted = maps >= threshold
    tp = int(np.count_nonzero(predicted & masks))
    denominator = int(np.count_nonzero(predicted)) + int(np.count_nonzero(masks))
    return 2.0 * tp / denominator if denominator else 0.0


# ----------------------------------------------------------------------------- one test set

#: the FPR limits of AUC-sPRO: the official evaluation's (0.01, 0.05, 0.1, 0.3, 1) and 0.2
SPRO_LIMITS = (0.01, 0.05, 0.1, 0.2, 0.3, 1.0)


def spro_key(limit: float) -> str:
    return f"spro_{limit:g}"


def pro_key(limit: float, fpr_limit: float = 0.3) -> str:
    """The record key of AU-PRO up to FPR ``limit``: ``aupro`` at ``fpr_limit`` (the paper's 0.3,
    the key every record has), ``aupro_<limit>`` at any other (``aupro_0.05``)."""
    return "aupro" if limit == fpr_limit else f"aupro_{limit:g}"


def check_pro_limits(limits: object) -> tuple[float, ...]:
    """``metrics.pro_limits`` as a tuple of floats, each in (0, 1]; a ``ValueError`` names the setting."""
    values = list(limits) if isinstance(limits, (list, tuple)) else None
    if values is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"metrics.pro_limits={limits!r}: expected a list of FPR limits in (0, 1], e.g. [0.05, 0.3]")
    outside = [v for v in values if not 0 < v <= 1]
    if outside:
        raise ValueError(f"metrics.pro_limits={values}: {outside} outside (0, 1]: every FPR limit must be in (0, 1]")
    return tuple(dict.fromkeys(float(v) for v in values))


def score_test_set(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    maps: np.ndarray,
    fpr_limit: float = 0.3,
    channels: Sequence[Channel] | None = None,
    spro_limits: Sequence[float] = SPRO_LIMITS,
    pro_limits: Sequence[float] = (),
) -> tuple[dict[str, float], dict[str, float]]:
    """Every metric of one test set: ``(metrics, thresholds)``.

    Image AUROC, AP, F1-max over image scores; pixel AUROC, AP, F1-max and AUPRO over all pixels
    of all images, from one sort of the normal pixels' scores (AUPRO at ``fpr_limit`` as ``aupro``,
    and at each other limit of ``pro_limits`` from the same curve, :func:`pro_key`); with
    ``channels``, AUC-sPRO at each of ``spro_limits`` against the same sort. ``thresholds`` holds
    the F1-max thresholds.
    """
    labels = np.asarray(labels)
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps)
    image = _ranked(*_check(labels, scores, "image metrics"), "image metrics")
    _check(masks, maps, "pixel metrics")
    if masks.ndim != 3:
        raise ValueError(f"pixel metrics: masks must be [N, H, W], got shape {masks.shape}")
    negatives = sorted_negatives(maps[~masks])
    if negatives.size == 0 or negatives.size == masks.size:
        raise ValueError(f"pixel metrics: needs normal and anomalous pixels (got {masks.sum()} of {masks.size})")
    pixel, n_regions = _pro_ranked(masks, maps, negatives)
    image_f1, image_t = f1_max_of(image)
    pixel_f1, pixel_t = f1_max_of(pixel)
    metrics = {
        "image_auroc": auroc_of(image),
        "image_ap": average_precision_of(image),
        "image_f1_max": image_f1,
        "pixel_auroc": auroc_of(pixel),
        "pixel_ap": average_precision_of(pixel),
        "pixel_f1_max": pixel_f1,
    }
    pro = overlap_curve(pixel, n_regions)
    for limit in (fpr_limit, *pro_limits):
        metrics[pro_key(limit, fpr_limit)] = area_to(*pro, limit)
    if channels:
        curve = overlap_curve(spro_ranked(maps, channels, negatives), len(channels))
        metrics |= {spro_key(limit): area_to(*curve, limit) for limit in spro_limits}
    return metrics, {"image_f1_max": image_t, "pixel_f1_max": pixel_t}


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    maps: np.ndarray,
    kinds: Sequence[str] | None = None,
    fpr_limit: float = 0.3,
    channels: Sequence[Channel] | None = None,
    spro_limits: Sequence[float] = SPRO_LIMITS,
    pro_limits: Sequence[float] = (),
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    """All metrics of one test set, overall and per anomaly kind.

    Args:
        labels: ``[N]`` 0/1. scores: ``[N]``. masks: bool ``[N, H, W]``. maps: ``[N, H, W]``.
        kinds: anomaly kind of each image (``good`` for normal ones). When the anomalous
            images have more than one kind, each kind is scored against all normal images.
        channels: MVTec LOCO's ground-truth channels (for sPRO), or None.
        pro_limits: FPR limits of AU-PRO besides ``fpr_limit`` (``metrics.pro_limits``, :func:`pro_key`).

    Returns:
        ``(metrics, metrics_by_kind, thresholds)``; the second is empty for single-kind datasets;
        the third holds the F1-max thresholds of the whole test set.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)

    def score(subset: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        index = np.flatnonzero(subset)
        renumber = {int(i): j for j, i in enumerate(index)}
        kept = [Channel(renumber[c.image], c.mask, c.saturation) for c in (channels or []) if c.image in renumber]
        arrays = (labels[subset], scores[subset], masks[subset], maps[subset])
        return score_test_set(*arrays, fpr_limit, kept or None, spro_limits, pro_limits)

    everything = np.ones(len(labels), dtype=bool)
    overall, thresholds = score(everything)
    by_kind: dict[str, dict[str, float]] = {}
    if kinds is not None:
        kinds_arr = np.asarray(kinds)
        anomalous_kinds = sorted(set(kinds_arr[labels == 1].tolist()))
        if len(anomalous_kinds) > 1:
            for kind in anomalous_kinds:
                by_kind[kind] = score((labels == 0) | (kinds_arr == kind))[0]
    return overall, by_kind, thresholds
