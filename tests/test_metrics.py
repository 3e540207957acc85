"""Metrics against hand-computed cases and slow brute-force references."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from ulsad_bench.metrics import (
    Channel,
    aupro,
    average_precision,
    evaluate,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
    score_test_set,
    spro_curve,
    spro_key,
)

ALL_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def brute_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by comparing every pair."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def area_to(x: list[float] | np.ndarray, y: list[float] | np.ndarray, limit: float) -> float:
    """Trapezoid area under the polyline (x, y) from its start to ``x = limit``, the segment that
    crosses the limit cut at the limit by linear interpolation. Written independently of the
    project's ``trapezoid_to``, so that a step (instead of interpolation) there cannot pass."""
    area = 0.0
    x, y = list(x), list(y)
    for x0, y0, x1, y1 in zip(x[:-1], y[:-1], x[1:], y[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area


def brute_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """The PRO curve threshold by threshold, straight from the definition."""
    regions = []
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([(above[i] & region).sum() / region.sum() for i, region in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    return area_to(fprs, pros, limit) / limit


def test_image_auroc_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert image_auroc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    # one positive above both negatives, the other tied with one negative: (2 + 1.5) / 4
    assert image_auroc(labels, np.array([0.1, 0.3, 0.3, 0.9])) == pytest.approx(0.875)
    # raw, unbounded scores work as they are (no sigmoid, no clamping)
    assert image_auroc(labels, np.array([-500.0, 20.0, 1e6, 3e7])) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_brute_force_and_sklearn(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding creates ties
    assert image_auroc(labels, scores) == pytest.approx(brute_auroc(labels, scores), abs=1e-12)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_over_all_pixels() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 8, 8)) < 0.2
    maps = np.round(rng.random((3, 8, 8)) + masks * 0.3, 2)
    assert pixel_auroc(masks, maps) == pytest.approx(brute_auroc(masks.ravel().astype(int), maps.ravel()), abs=1e-12)


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        image_auroc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        image_auroc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))


def test_aupro_hand_computed() -> None:
    # One image, one region of 2 pixels, 2 normal pixels.
    masks = np.array([[[True, True, False, False]]]).reshape(1, 2, 2)
    perfect = np.array([[[0.9, 0.8], [0.1, 0.2]]])
    assert aupro(masks, perfect, fpr_limit=0.3) == pytest.approx(1.0)
    inverted = -perfect
    assert aupro(masks, inverted, fpr_limit=0.3) == pytest.approx(0.0)
    # Region pixels 0.9 and 0.1; normal pixels 0.5 and 0.05. Curve: (0,0) -> (0, .5) at 0.9
    # -> (.5, .5) at 0.5 -> (.5, 1) at 0.1 -> (1, 1). Up to 0.3 the PRO is 0.5 from FPR 0:
    # area 0.3 * 0.5 (the interpolated end point), divided by 0.3 = 0.5.
    mixed = np.array([[[0.9, 0.1], [0.5, 0.05]]])
    assert aupro(masks, mixed, fpr_limit=0.3) == pytest.approx(0.5)


SLOPED_MASK = np.array([[[True, True, False], [False, False, False]]])  # one region of 2 px, 4 normal px
# Region pixels 0.9 and 0.5; one normal pixel tied with the second region pixel at 0.5, the rest 0.1.
# Curve: (0, 0) -> (0, 0.5) at 0.9 -> (0.25, 1) at 0.5 (both pixels enter together: a sloped
# segment) -> (1, 1). At the limit 0.2 the PRO is 0.5 + 0.5 * 0.2 / 0.25 = 0.9, so the area is
# 0.2 * (0.5 + 0.9) / 2 = 0.14 and AUPRO = 0.14 / 0.2 = 0.7 (a step would give 0.5 or 1.0).
SLOPED_MAP = np.array([[[0.9, 0.5, 0.5], [0.1, 0.1, 0.1]]])


def test_aupro_interpolates_a_sloped_segment_at_the_limit() -> None:
    assert aupro(SLOPED_MASK, SLOPED_MAP, fpr_limit=0.2) == pytest.approx(0.7, abs=1e-12)
    assert brute_aupro(SLOPED_MASK, SLOPED_MAP, 0.2) == pytest.approx(0.7, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8])
def test_aupro_on_integer_maps_equals_float_maps(dtype: type) -> None:
    scale = 100 if dtype == np.int8 else 250
    integer = np.rint(SLOPED_MAP * scale).astype(dtype)
    integer[0, 1, 0] = 0  # a zero (its negation is zero too: the old sort broke on it)
    assert aupro(SLOPED_MASK, integer, fpr_limit=0.2) == pytest.approx(0.7, abs=1e-12)
    rng = np.random.default_rng(5)
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 2:5, 2:6] = masks[1, 6:9, 1:3] = True
    maps = rng.integers(0, 60, masks.shape) + 60 * masks  # fits int8
    for limit in (0.05, 0.3, 1.0):
        expected = aupro(masks, maps.astype(np.float64), limit)
        assert aupro(masks, maps.astype(dtype), limit) == pytest.approx(expected, abs=1e-12)
        assert expected == pytest.approx(brute_aupro(masks, maps.astype(np.float64), limit), abs=1e-12)


def test_boolean_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="boolean"):
        aupro(SLOPED_MASK, SLOPED_MAP > 0.4)
    with pytest.raises(ValueError, match="boolean"):
        pixel_auroc(SLOPED_MASK, SLOPED_MAP > 0.4)


def test_aupro_regions_are_eight_connected_and_weighted_equally() -> None:
    # Two diagonal pixels form ONE region (8-connectivity); a separate big region of 4.
    mask = np.zeros((1, 6, 6), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True
    mask[0, 4:6, 4:6] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 0, 0] = maps[0, 1, 1] = 1.0  # the diagonal region found entirely, the big one not
    fpr, pro = pro_curve(mask, maps)
    assert pro[1] == pytest.approx(0.5)  # one of two regions fully overlapped
    assert fpr[1] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed: int, limit: float) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), bool)
    for i in range(3):  # the 4th image is normal: its pixels count for the FPR
        for _ in range(2):
            y, x = rng.integers(0, 9, 2)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # ties on purpose
    assert aupro(masks, maps, limit) == pytest.approx(brute_aupro(masks, maps, limit), abs=1e-9)


def test_aupro_fast_enough_for_a_visa_category() -> None:
    """~200 test images at 256 x 256 (13M pixels) must take seconds, not minutes."""
    rng = np.random.default_rng(0)
    masks = np.zeros((200, 256, 256), bool)
    masks[:100, 100:140, 60:90] = True
    maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    start = time.perf_counter()
    value = aupro(masks, maps)
    assert time.perf_counter() - start < 30.0
    assert 0.0 <= value <= 1.0


def test_evaluate_scores_each_kind_against_all_normals() -> None:
    labels = np.array([0, 0, 1, 1])
    kinds = ["good", "good", "logical", "structural"]
    scores = np.array([0.1, 0.5, 0.3, 0.9])
    masks = np.zeros((4, 4, 4), bool)
    masks[2, :2, :2] = True
    masks[3, 2:, 2:] = True
    maps = masks * 1.0 + 0.01
    overall, by_kind, thresholds = evaluate(labels, scores, masks, maps, kinds)
    assert overall["image_auroc"] == pytest.approx(0.75)
    assert by_kind["logical"]["image_auroc"] == pytest.approx(0.5)  # 0.3 vs normals 0.1, 0.5
    assert by_kind["structural"]["image_auroc"] == pytest.approx(1.0)
    assert set(by_kind["logical"]) == set(ALL_METRICS)
    assert set(thresholds) == {"image_f1_max", "pixel_f1_max"}
    _, single, _ = evaluate(labels, scores, masks, maps, ["good", "good", "structural", "structural"])
    assert single == {}


# ----------------------------------------------------------------------------- AP and F1-max


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = int(np.argmax(f1[:-1]))
    return float(f1[best]), float(thresholds[best])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decimals", [1, 3, None])
def test_ap_and_f1_max_match_sklearn_with_and_without_ties(seed: int, decimals: int | None) -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # ties, many of them at 1 decimal
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    f1, threshold = f1_max(labels, scores)
    expected_f1, _ = sklearn_f1_max(labels, scores)
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    chosen = scores >= threshold  # the reported threshold gives the reported F1
    tp = int((chosen & (labels == 1)).sum())
    assert 2 * tp / (chosen.sum() + labels.sum()) == pytest.approx(f1, abs=1e-12)


def test_ap_and_f1_hand_computed() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.1])  # a positive and a negative tied at 0.8
    # thresholds 0.9: P=1, R=1/2; 0.8: P=2/3, R=1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert average_precision(labels, scores) == pytest.approx(5 / 6)
    # F1 at 0.9: 2/(1+2) = 2/3; at 0.8: 4/(3+2) = 0.8 -> F1-max 0.8 at 0.8
    assert f1_max(labels, scores) == pytest.approx((0.8, 0.8))


def test_pixel_metrics_of_one_test_set_match_sklearn() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(7)
    masks = np.zeros((5, 16, 16), bool)
    masks[1, 3:8, 2:6] = masks[2, 10:14, 10:15] = masks[3, 0:3, 0:16] = True
    maps = np.round(rng.random(masks.shape) + 0.6 * masks, 2).astype(np.float32)
    labels = np.array([0, 1, 1, 1, 0])
    scores = maps.reshape(5, -1).max(axis=1)
    metrics, thresholds = score_test_set(labels, scores, masks, maps)
    y, s = masks.ravel().astype(int), maps.ravel()
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert metrics["pixel_f1_max"] == pytest.approx(sklearn_f1_max(y, s)[0], abs=1e-12)
    assert metrics["aupro"] == pytest.approx(brute_aupro(masks, maps, 0.3), abs=1e-9)
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert (metrics["image_f1_max"], thresholds["image_f1_max"]) == pytest.approx(f1_max(labels, scores))


# ----------------------------------------------------------------------------- sPRO


def brute_spro(maps: np.ndarray, masks: np.ndarray, channels: list[Channel], limit: float) -> float:
    """sPRO threshold by threshold from its definition (Bergmann et al. 2022)."""
    normal = ~masks
    fprs, spros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        spros.append(np.mean([min((above[c.image] & c.mask).sum() / max(c.saturation, 1.0), 1.0) for c in channels]))
    fprs.append(1.0)
    spros.append(1.0)
    return area_to(fprs, spros, limit) / limit


def test_spro_hand_computed_with_a_saturated_channel() -> None:
    # Two images; image 1 has two channels: A = 4 pixels saturating at 2 (relative 0.5), B = 2
    # pixels with absolute saturation 2. Image 0 is good. 8 normal pixels in all.
    masks = np.zeros((2, 2, 4), bool)
    masks[1, 0, :] = True  # A: pixels (0,0..3)
    masks[1, 1, :2] = True  # B: pixels (1,0..1)
    a = np.zeros((2, 4), bool)
    a[0, :] = True
    b = np.zeros((2, 4), bool)
    b[1, :2] = True
    channels = [Channel(1, a, 2.0), Channel(1, b, 2.0)]
    maps = np.zeros((2, 2, 4))
    maps[1, 0] = [0.9, 0.8, 0.2, 0.2]  # A saturates after its two best pixels
    maps[1, 1] = [0.8, 0.1, 0.5, 0.05]  # B: one pixel at 0.8 (tied with A's), one at 0.1
    maps[0] = [[0.5, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05]]  # a normal pixel at 0.5
    # t=0.9: A 1/2, B 0 -> 0.25, FPR 0. t=0.8: A 1, B 1/2 -> 0.75, FPR 0. t=0.5: FPR 2/8 (one normal
    # pixel in each image). Up to FPR 0.25 the sPRO stays 0.75 (A saturated, B waits for 0.1):
    # area to 0.2 = 0.2 * 0.75 -> normalised 0.75.
    fpr, spro = spro_curve(maps, masks, channels)
    assert fpr[:3].tolist() == [0.0, 0.0, 0.0] and spro[:3].tolist() == [0.0, 0.25, 0.75]
    assert area_to(fpr, spro, 0.2) / 0.2 == pytest.approx(0.75)
    assert brute_spro(maps, masks, channels, 0.2) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("limit", [0.01, 0.05, 0.3, 1.0])
def test_spro_matches_brute_force_with_overlapping_channels_and_ties(seed: int, limit: float) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), bool)
    channels = []
    for image in (1, 2, 3):  # image 0 is good
        for _ in range(int(rng.integers(1, 4))):  # several channels per image, possibly overlapping
            channel = np.zeros((12, 12), bool)
            y, x = rng.integers(0, 8, 2)
            channel[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
            relative = bool(rng.integers(0, 2))
            area = int(channel.sum())
            saturation = int(0.5 * area) if relative else min(int(rng.integers(1, 10)), area)
            channels.append(Channel(image, channel, float(saturation)))
            masks[image] |= channel
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 1)  # heavy ties
    metrics, _ = score_test_set(np.array([0, 1, 1, 1]), maps.reshape(4, -1).max(1), masks, maps, channels=channels)
    assert metrics[spro_key(limit)] == pytest.approx(brute_spro(maps, masks, channels, limit), abs=1e-9)
