"""Mean ± std over seeds, for one category and for a dataset's mean over categories.

Conventions (stated in every table's notes):

- std is the *sample* standard deviation over seeds (``ddof=1``); with one seed it is undefined
  and not printed. The paper does not say which it used.
- A dataset mean is computed per seed (the mean over categories of that seed's values), then
  mean ± std over seeds. Only seeds present in every category that has values are used; the
  mean is then the mean of the category means over those seeds. Categories with no value at
  all are left out and the cell is marked as a partial mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FULL_SEEDS = 5  # the paper's protocol: five seeds per category


@dataclass(frozen=True)
class Stat:
    """An aggregate over seeds.

    Attributes:
        mean: mean over seeds.
        std: sample std over seeds (ddof=1); None for one seed.
        n: number of seeds.
        categories: categories averaged (1 for a single category).
        missing_categories: expected categories with no value (a partial mean when not empty).
        dropped_seeds: seeds left out of a dataset mean because some category lacks them.
    """

    mean: float
    std: float | None
    n: int
    categories: int = 1
    missing_categories: tuple[str, ...] = field(default=())
    dropped_seeds: tuple[int, ...] = field(default=())


def stat_of(values: Sequence[float], **extra: object) -> Stat | None:
    """Mean and sample std of per-seed values; None when there are none."""
    clean = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if clean.size == 0:
        return None
    std = float(clean.std(ddof=1)) if clean.size > 1 else None
    return Stat(mean=float(clean.mean()), std=std, n=int(clean.size), **extra)  # type: ignore[arg-type]


def per_seed(frame: pd.DataFrame, column: str) -> dict[int, dict[str, float]]:
    """``{seed: {category: value}}`` of ``column`` (NaN left out; two records of one category and
    seed, which :mod:`.load` prevents, would be averaged)."""
    values: dict[int, dict[str, list[float]]] = {}
    for seed, category, value in zip(frame["seed"], frame["category"], frame[column], strict=True):
        if not math.isnan(value):
            values.setdefault(int(seed), {}).setdefault(str(category), []).append(float(value))
    return {seed: {c: float(np.mean(v)) for c, v in cats.items()} for seed, cats in values.items()}


def category_stat(frame: pd.DataFrame, column: str) -> Stat | None:
    """Mean ± std over the seeds of one category's records."""
    return stat_of([float(np.mean(list(cats.values()))) for cats in per_seed(frame, column).values()])


def dataset_stat(frame: pd.DataFrame, column: str, expected: Sequence[str] = ()) -> Stat | None:
    """Mean over categories per seed, then mean ± std over seeds (see the module docstring)."""
    table = per_seed(frame, column)
    if not table:
        return None
    present = sorted({c for cats in table.values() for c in cats})
    missing = tuple(c for c in expected if c not in present)
    complete = {seed: cats for seed, cats in table.items() if len(cats) == len(present)}
    dropped = tuple(sorted(seed for seed in table if seed not in complete))
    if not complete:
        return None
    return stat_of(
        [float(np.mean(list(cats.values()))) for _, cats in sorted(complete.items())],
        categories=len(present),
        missing_categories=missing,
        dropped_seeds=dropped,
    )
