"""Metrics against hand-computed cases and slow brute-force references."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from ulsad_bench.metrics import aupro, evaluate, image_auroc, pixel_auroc, pro_curve


def brute_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by comparing every pair."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def area_to(x: list[float], y: list[float], limit: float) -> float:
    """Trapezoid area under the polyline (x, y) from its start to ``x = limit``, the segment that
    crosses the limit cut at the limit by linear interpolation. Written independently of the
    project's ``trapezoid_to``, so that a step (instead of interpolation) there cannot pass."""
    area = 0.0
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
    overall, by_kind = evaluate(labels, scores, masks, maps, kinds)
    assert overall["image_auroc"] == pytest.approx(0.75)
    assert by_kind["logical"]["image_auroc"] == pytest.approx(0.5)  # 0.3 vs normals 0.1, 0.5
    assert by_kind["structural"]["image_auroc"] == pytest.approx(1.0)
    assert set(by_kind["logical"]) == {"image_auroc", "pixel_auroc", "aupro"}
    _, single = evaluate(labels, scores, masks, maps, ["good", "good", "structural", "structural"])
    assert single == {}
