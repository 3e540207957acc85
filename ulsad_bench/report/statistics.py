"""Statistics over per-seed results: intervals, paired tests and ranks that a reviewer accepts.

Every function here is pure: it reads per-seed values (percent) and returns numbers; the report's
tables and figures (:mod:`.stat_tables`, :mod:`.stat_figures`) collect the values from the
records. The choices, stated in every table's notes:

- **Per-category interval**: the 95% Student-t interval of the mean over seeds,
  ``mean ± t(0.975, n - 1) · s / √n`` (:func:`scipy.stats.t.interval`, ``s`` the sample std);
  none for one seed.
- **Dataset-mean interval**: a two-level (hierarchical) percentile bootstrap: each of
  :data:`BOOTSTRAP_RESAMPLES` resamples draws the categories with replacement, then within each
  drawn category its seeds with replacement, and takes the mean over categories of the seed means
  (two-stage resampling of hierarchical data, Davison & Hinkley 1997, Sec. 3.8). Generator:
  ``numpy.random.default_rng(BOOTSTRAP_SEED)``, so a report is reproducible. It counts the
  variation between categories and between seeds (resampling the seeds as well makes it slightly
  conservative, since the category means already carry the seed variation), and is wider than the
  seed-only ± std of the main tables.
- **Paired test** of two methods on one dataset and metric, paired by category on the seed
  means: the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`), two-sided, with
  ``zero_method="zsplit"`` (ranks of zero differences split evenly between the two sums, as
  Demšar 2006, JMLR 7:1-30, Sec. 3.1.3, prescribes: several categories sit at 100% for more
  than one method). The p-value is exact: scipy's exact distribution when the differences are
  distinct and nonzero; with tied or zero differences (where scipy's ``method="exact"`` no longer
  is) the distribution of every sign flip (:class:`scipy.stats.PermutationMethod`), enumerated up
  to :data:`EXACT_UP_TO` categories (as scipy's ``method="auto"`` does), estimated from
  :data:`PERMUTATIONS` seeded random sign flips beyond (MVTec's 15 categories). The p-values of
  one table's comparisons are Holm-corrected (:func:`statsmodels.stats.multitest.multipletests`,
  ``method="holm"``; Holm 1979, recommended by Demšar 2006 Sec. 3.2.2 over Bonferroni).
- **Wins / ties / losses** per category: a tie is two seed means equal when rounded to
  :data:`PRINT_DECIMALS` decimals, i.e. equal as the tables print them.
- **Bayesian signed-rank test** (Benavoli et al. 2014, ICML; 2017, JMLR 18(77)) with a region of
  practical equivalence of :data:`ROPE` points: P(A better), P(equivalent), P(B better) from
  :class:`baycomp.SignedRankTest` (prior 0.5 at a zero difference, baycomp's default),
  :data:`BAYES_SAMPLES` posterior samples with ``random_state=BAYES_SEED``.
- **Ranks**: per category (a block), rank 1 = best, ties get the average rank; the average rank
  per method; the Friedman test (:func:`scipy.stats.friedmanchisquare`, with scipy's correction
  for ties), the Iman-Davenport F (Demšar 2006 Sec. 3.2.2), the Nemenyi post-hoc p-values
  (:func:`scikit_posthocs.posthoc_nemenyi_friedman`) and the critical difference
  ``CD = q_α · √(k (k + 1) / (6 N))`` with ``q_α`` the studentized range quantile over √2
  (:func:`scipy.stats.studentized_range`; Demšar 2006 Table 5(a)).
- **Too few categories**: the tests are run all the same, and their results say that no outcome
  could have been significant (:data:`NOT_ENOUGH`, a caveat printed with the numbers): the exact
  two-sided Wilcoxon p is at least ``2 / 2^n``, so it can reach α = 0.05 only from ``n >= 6``
  categories (:func:`wilcoxon_min_pairs`); the Friedman test only from enough blocks that the most
  extreme ranking reaches α (:func:`friedman_min_blocks`), and it needs three methods (with two,
  the ranks, the Nemenyi test and the critical difference are still given). The main tables never
  mark a tie with the best from such a test (:func:`tied_with_best`). The Bayesian test is not
  reported from fewer than :data:`BAYES_MIN_PAIRS` categories (a choice: from fewer pairs its
  posterior is too wide to read).
- **Exclusions** (:func:`usable_means`): a method enters the tests and ranks of a dataset only
  when it ran the clean protocol and has at least :data:`~.aggregate.FULL_SEEDS` seeds in every
  category of the dataset; runs of the authors' protocol (selected on test images), cells with
  fewer seeds (†) and datasets with a category missing (‡) are left out, and the returned notes
  say which and why.

All metrics the tests read are higher-is-better (AUROC, AP, F1-max, AUPRO).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import baycomp
import numpy as np
import pandas as pd
import scikit_posthocs
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .aggregate import FULL_SEEDS
from .table import PARTIAL_MARK, SEED_MARK

ALPHA = 0.05  # significance level of every test and of the critical difference
LEVEL = 0.95  # coverage of every interval
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # numpy.random.default_rng seed of the bootstrap
EXACT_UP_TO = 13  # with tied or zero differences: every sign flip enumerated up to 13 pairs (scipy's "auto" limit)
PERMUTATIONS = 2**EXACT_UP_TO  # ... and this many random sign flips beyond (Monte Carlo error <= 0.006 on p)
PERMUTATION_SEED = 0  # numpy.random.default_rng seed of those random sign flips
PRINT_DECIMALS = 2  # a tie: equal when rounded to the tables' printed decimals
ROPE = 1.0  # region of practical equivalence, in points (percent)
BAYES_SAMPLES = 10_000  # posterior samples of the Bayesian signed-rank test (Monte Carlo error <= 0.005)
BAYES_SEED = 0
BAYES_MIN_PAIRS = 5
NOT_ENOUGH = "too few categories to reach α"
CLEAN = "clean"


@dataclass(frozen=True)
class Interval:
    """A mean with its interval (``low``/``high`` None when there is none, e.g. one seed).

    Attributes:
        mean: the point estimate (mean over seeds; for a dataset, mean over categories of the seed means).
        low, high: the interval's ends, in the unit of the values.
        n: seeds (per category) or categories (dataset mean) it stands on.
    """

    mean: float
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class Comparison:
    """Method ``a`` against method ``b`` over the categories of one dataset (differences a - b).

    Attributes:
        a, b: the methods' labels.
        n: categories paired.
        wins, ties, losses: categories where a is better, equal as printed, worse.
        median_difference: median over categories of a - b, in points.
        p: two-sided Wilcoxon p-value (None: no category).
        p_holm: Holm-adjusted p over the comparisons it was corrected with.
        significant: Holm-adjusted p at most :data:`ALPHA` (statsmodels' ``reject``).
        bayes: (P(a better), P(equivalent), P(b better)) with the ROPE, or None.
        reason: why the test cannot be significant with so few categories ("" when it can).
    """

    a: str
    b: str
    n: int
    wins: int
    ties: int
    losses: int
    median_difference: float | None
    p: float | None = None
    p_holm: float | None = None
    significant: bool | None = None
    bayes: tuple[float, float, float] | None = None
    reason: str = ""


@dataclass(frozen=True)
class Ranking:
    """Average ranks of methods over blocks (categories), with the Friedman / Nemenyi analysis.

    Attributes:
        average_ranks: method -> average rank (1 = best), best first.
        n: blocks (categories); k: methods.
        chi2, p: Friedman statistic (scipy, corrected for ties) and p-value; None: :attr:`reason`.
        f, p_f: Iman-Davenport F and its p-value.
        cd: Nemenyi critical difference at :data:`ALPHA`.
        nemenyi: Nemenyi p-values (methods x methods), None when not computed.
        reason: why the Friedman / Nemenyi analysis was not run ("" when it was).
        caveat: why its result cannot be significant although it was run (too few blocks), "" otherwise.
    """

    average_ranks: pd.Series
    n: int
    k: int
    chi2: float | None = None
    p: float | None = None
    f: float | None = None
    p_f: float | None = None
    cd: float | None = None
    nemenyi: pd.DataFrame | None = None
    reason: str = ""
    caveat: str = ""


@dataclass
class Usable:
    """The category means that tests and ranks may use, and what was left out.

    Attributes:
        means: categories (rows) x methods (columns) of seed means, complete.
        excluded: ``"label: why"`` per method left out.
    """

    means: pd.DataFrame
    excluded: list[str] = field(default_factory=list)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Mean over seeds and its Student-t interval (:func:`scipy.stats.t.interval` with ``n - 1``
    degrees of freedom and the standard error ``s / √n``); no interval for one seed, None for none."""
    clean = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if clean.size == 0:
        return None
    mean = float(clean.mean())
    if clean.size == 1:
        return Interval(mean, None, None, 1)
    sem = float(stats.sem(clean))
    if sem == 0.0:  # every seed equal: scipy needs a positive scale
        return Interval(mean, mean, mean, int(clean.size))
    low, high = stats.t.interval(level, clean.size - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), int(clean.size))


def _seed_table(seeds: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Categories' seed values padded with NaN into one array, and each category's seed count."""
    rows = [np.array([v for v in values if not math.isnan(v)], dtype=np.float64) for values in seeds.values()]
    rows = [row for row in rows if row.size]
    counts = np.array([row.size for row in rows], dtype=np.int64)
    table = np.full((len(rows), int(counts.max()) if rows else 0), np.nan)
    for i, row in enumerate(rows):
        table[i, : row.size] = row
    return table, counts


def bootstrap_interval(
    seeds: Mapping[str, Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> Interval | None:
    """The dataset mean (mean over categories of the seed means) and its two-level percentile
    bootstrap interval: categories drawn with replacement, then each drawn category's seeds drawn
    with replacement (as many as it has); see the module docstring. None without values."""
    table, counts = _seed_table(seeds)
    if counts.size == 0:
        return None
    mean = float(np.mean([np.nanmean(row) for row in table]))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, counts.size, size=(resamples, counts.size))  # stage 1: categories
    size = counts[drawn][..., None]
    picks = rng.integers(0, size, size=(*drawn.shape, table.shape[1]))  # stage 2: seeds of each drawn category
    values = table[drawn[..., None], picks]
    used = np.arange(table.shape[1]) < size
    category_means = np.where(used, values, 0.0).sum(axis=-1) / counts[drawn]
    low, high = np.percentile(category_means.mean(axis=1), [50 * (1 - level), 50 * (1 + level)])
    return Interval(mean, float(low), float(high), int(counts.size))


def wilcoxon_min_pairs(alpha: float = ALPHA) -> int:
    """The fewest pairs at which the exact two-sided signed-rank test can reach ``alpha``: its
    smallest p-value is ``2 / 2^n`` (every difference of one sign)."""
    n = 1
    while 2.0 / 2**n > alpha:
        n += 1
    return n


def wilcoxon_p(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of the paired values ``a - b``
    (:func:`scipy.stats.wilcoxon`, ``zero_method="zsplit"``); None without pairs, 1 when every
    difference is zero (below :func:`wilcoxon_min_pairs` pairs no p can reach ``alpha``: the caller
    says so). Without zero or tied differences, scipy's exact distribution;
    with them, the distribution of every sign flip (:class:`scipy.stats.PermutationMethod`) up to
    :data:`EXACT_UP_TO` pairs, :data:`PERMUTATIONS` random sign flips beyond."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return None
    nonzero = d[d != 0]
    if nonzero.size == 0:  # identical in every category
        return 1.0
    if nonzero.size and nonzero[0] < 0:  # the two-sided p of b - a is that of a - b: one cache entry, one p
        d = -d
    return _wilcoxon(tuple(float(x) for x in d))


@functools.lru_cache(maxsize=4096)
def _wilcoxon(d: tuple[float, ...]) -> float:
    """Cached (a random sign flip test of 15 pairs takes about a second): the main tables' marks and
    the paired-test tables ask for the same comparisons."""
    values = np.array(d)
    tied = bool((values == 0).any()) or np.unique(np.abs(values)).size < values.size
    method: str | stats.PermutationMethod = "exact"
    if tied:  # scipy's "exact" assumes distinct nonzero differences
        method = stats.PermutationMethod(n_resamples=PERMUTATIONS, rng=np.random.default_rng(PERMUTATION_SEED))
    return float(stats.wilcoxon(values, zero_method="zsplit", method=method).pvalue)


def holm(pvalues: Sequence[float | None], alpha: float = ALPHA) -> list[tuple[float | None, bool | None]]:
    """Holm-adjusted p-values and rejections (:func:`statsmodels.stats.multitest.multipletests`,
    ``method="holm"``) over the p-values that are not None (those stay None)."""
    present = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[tuple[float | None, bool | None]] = [(None, None)] * len(pvalues)
    if present:
        reject, adjusted, _, _ = multipletests([pvalues[i] for i in present], alpha=alpha, method="holm")
        for i, r, p in zip(present, reject, adjusted, strict=True):
            out[i] = (float(p), bool(r))
    return out


def win_tie_loss(a: Sequence[float], b: Sequence[float], decimals: int = PRINT_DECIMALS) -> tuple[int, int, int]:
    """Categories where ``a`` is better, equal when both are rounded to ``decimals``, worse."""
    ra, rb = np.round(np.asarray(a, dtype=np.float64), decimals), np.round(np.asarray(b, dtype=np.float64), decimals)
    return int((ra > rb).sum()), int((ra == rb).sum()), int((ra < rb).sum())


def bayes_signed_rank(a: Sequence[float], b: Sequence[float], rope: float = ROPE) -> tuple[float, float, float] | None:
    """(P(a better), P(equivalent), P(b better)) of the Bayesian signed-rank test with a ROPE
    (:meth:`baycomp.SignedRankTest.probs`: its first probability is the first argument's);
    None with fewer than :data:`BAYES_MIN_PAIRS` pairs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < BAYES_MIN_PAIRS:
        return None
    probs = baycomp.SignedRankTest.probs(x, y, rope=rope, nsamples=BAYES_SAMPLES, random_state=BAYES_SEED)
    return float(probs[0]), float(probs[1]), float(probs[2])


def compare(
    a: str, b: str, means: pd.DataFrame, alpha: float = ALPHA, rope: float = ROPE, bayes: bool = True
) -> Comparison:
    """Method ``a`` against ``b`` on the categories of ``means`` (categories x methods), before Holm;
    ``bayes``: with the Bayesian signed-rank test."""
    x, y = means[a].to_numpy(dtype=np.float64), means[b].to_numpy(dtype=np.float64)
    wins, ties, losses = win_tie_loss(x, y)
    p = wilcoxon_p(x, y, alpha)
    needed = wilcoxon_min_pairs(alpha)
    reason = "" if x.size >= needed else f"{NOT_ENOUGH} (the Wilcoxon test needs {needed})"
    return Comparison(
        a,
        b,
        n=int(x.size),
        wins=wins,
        ties=ties,
        losses=losses,
        median_difference=float(np.median(x - y)) if x.size else None,
        p=p,
        bayes=bayes_signed_rank(x, y, rope) if bayes else None,
        reason=reason,
    )


def pairs_of(methods: Sequence[str], references: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Each reference against every other method (all pairs when there is no reference)."""
    if not references:
        return list(itertools.combinations(methods, 2))
    pairs: list[tuple[str, str]] = []
    for ref in references:
        pairs += [(ref, m) for m in methods if m != ref and (m, ref) not in pairs]
    return pairs


def paired_comparisons(
    means: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    alpha: float = ALPHA,
    rope: float = ROPE,
    bayes: bool = True,
) -> list[Comparison]:
    """:func:`compare` for every pair, Holm-corrected together (one table's family)."""
    found = [compare(a, b, means, alpha, rope, bayes) for a, b in pairs]
    adjusted = holm([c.p for c in found], alpha)
    return [replace(c, p_holm=p, significant=reject) for c, (p, reject) in zip(found, adjusted, strict=True)]


def tied_with_best(means: pd.DataFrame, alpha: float = ALPHA) -> frozenset[str] | None:
    """The methods whose category means are not significantly different from the best method's
    (highest mean over categories): the best and every method whose Wilcoxon test against it,
    Holm-corrected over those k - 1 comparisons, does not reject. None with fewer than two methods
    or too few categories to test (then no value should be claimed best on evidence)."""
    if means.shape[1] < 2 or means.shape[0] < wilcoxon_min_pairs(alpha):
        return None
    best = str(means.mean(axis=0).idxmax())
    pairs = [(best, str(m)) for m in means.columns if m != best]
    comparisons = paired_comparisons(means, pairs, alpha, bayes=False)
    return frozenset([best, *(c.b for c in comparisons if not c.significant)])


def average_ranks(means: pd.DataFrame) -> pd.Series:
    """Average rank per method over the blocks (rows): rank 1 = highest value, ties averaged
    (:func:`scipy.stats.rankdata`, ``method="average"``); best first."""
    ranks = stats.rankdata(-means.to_numpy(dtype=np.float64), axis=1, method="average").mean(axis=0)
    return pd.Series(ranks, index=[str(c) for c in means.columns]).sort_values(kind="stable")


def q_alpha(k: int, alpha: float = ALPHA) -> float:
    """The Nemenyi critical value for ``k`` methods: the studentized range quantile (infinite
    degrees of freedom) over √2 (Demšar 2006, Table 5(a))."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks, ``q_α √(k (k + 1) / (6 N))`` (Demšar 2006 Sec. 3.2.2)."""
    return q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """Iman and Davenport's F = (N - 1) χ² / (N (k - 1) - χ²) and its p-value from the F
    distribution with k - 1 and (k - 1)(N - 1) degrees of freedom (Demšar 2006 Sec. 3.2.2)."""
    denominator = n * (k - 1) - chi2
    if denominator <= 0:  # every block ranks the methods alike
        return math.inf, 0.0
    f = (n - 1) * chi2 / denominator
    return float(f), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def friedman_min_blocks(k: int, alpha: float = ALPHA) -> int:
    """The fewest blocks at which the Friedman test of ``k`` methods can reach ``alpha``: with every
    block ranking the methods alike, χ² = N (k - 1) (chi-squared, k - 1 degrees of freedom)."""
    n = 2
    while stats.chi2.sf(n * (k - 1), k - 1) > alpha:
        n += 1
    return n


def nemenyi(means: pd.DataFrame) -> pd.DataFrame:
    """Nemenyi post-hoc p-values (:func:`scikit_posthocs.posthoc_nemenyi_friedman`; blocks = rows)."""
    labels = [str(c) for c in means.columns]
    matrix = scikit_posthocs.posthoc_nemenyi_friedman(means.to_numpy(dtype=np.float64))
    return pd.DataFrame(matrix.to_numpy(), index=labels, columns=labels)


def rank_methods(means: pd.DataFrame, alpha: float = ALPHA) -> Ranking:
    """Average ranks, Friedman (scipy), Iman-Davenport, Nemenyi and the CD of ``means`` (blocks x
    methods); the tests are left out (with a reason) when they cannot reach ``alpha``."""
    n, k = means.shape
    ranks = average_ranks(means) if n else pd.Series(dtype=np.float64)
    if k < 2 or n < 2:
        return Ranking(ranks, n, k, reason="ranks need two methods and two categories")
    caveat = (
        "" if n >= friedman_min_blocks(k, alpha) else f"{NOT_ENOUGH} (N = {n}; needs {friedman_min_blocks(k, alpha)})"
    )
    if k < 3:  # scipy's Friedman test needs three methods; the ranks, Nemenyi and the CD do not
        reason = "the Friedman test needs at least three methods (two: see the paired tests)"
        return Ranking(
            ranks, n, k, cd=critical_difference(k, n, alpha), nemenyi=nemenyi(means), reason=reason, caveat=caveat
        )
    with np.errstate(invalid="ignore", divide="ignore"):  # every method tied in every block: NaN, handled below
        chi2, p = stats.friedmanchisquare(*means.to_numpy(dtype=np.float64).T)
    if not np.isfinite(chi2):
        return Ranking(ranks, n, k, reason="every method ties in every category")
    f, p_f = iman_davenport(float(chi2), n, k)
    return Ranking(
        ranks,
        n,
        k,
        chi2=float(chi2),
        p=float(p),
        f=f,
        p_f=p_f,
        cd=critical_difference(k, n, alpha),
        nemenyi=nemenyi(means),
        caveat=caveat,
    )


def exclusion(
    seeds: Mapping[str, Sequence[float]], categories: Sequence[str], protocol: str = CLEAN, full: int = FULL_SEEDS
) -> str:
    """Why a method's values on one dataset cannot enter its tests and ranks ("" when they can):
    a protocol other than the clean one, a category without a value (‡), a category with fewer
    than ``full`` seeds (†)."""
    if protocol != CLEAN:
        return f"evaluated with the authors' protocol ({protocol}: selected on test images)"
    counts = {c: sum(not math.isnan(v) for v in seeds.get(c, ())) for c in categories}
    missing = [c for c in categories if counts[c] == 0]
    few = [f"{c} ({counts[c]})" for c in categories if 0 < counts[c] < full]
    parts = []
    if missing:
        parts.append(f"{PARTIAL_MARK} no value in {', '.join(missing)}")
    if few:
        parts.append(f"{SEED_MARK} fewer than {full} seeds in {', '.join(few)}")
    return "; ".join(parts)


def usable_means(
    seeds: Mapping[str, Mapping[str, Sequence[float]]],
    categories: Sequence[str],
    protocols: Mapping[str, str] | None = None,
    full: int = FULL_SEEDS,
) -> Usable:
    """Category means (categories x methods) of the methods :func:`exclusion` lets in; ``seeds`` is
    method -> category -> per-seed values, ``protocols`` method -> protocol tag (default clean)."""
    columns: dict[str, list[float]] = {}
    excluded = []
    for method, values in seeds.items():
        why = exclusion(values, categories, (protocols or {}).get(method, CLEAN), full)
        if why:
            excluded.append(f"{method}: {why}")
            continue
        columns[method] = [float(np.nanmean(np.asarray(values[c], dtype=np.float64))) for c in categories]
    return Usable(pd.DataFrame(columns, index=list(categories), dtype=np.float64), excluded)


def over_datasets(per_dataset: Mapping[str, pd.DataFrame]) -> Usable:
    """One block matrix over datasets: each dataset's categories are blocks (rows named
    ``dataset/category``). The datasets used are those with at least two usable methods; the
    methods are those usable on every one of them (a block needs every method); others are listed."""
    used = {d: m for d, m in per_dataset.items() if m.shape[1] >= 2 and m.shape[0] > 0}
    if not used:
        return Usable(pd.DataFrame(dtype=np.float64), [])
    everywhere = [c for c in next(iter(used.values())).columns if all(c in m.columns for m in used.values())]
    excluded = []
    for method in dict.fromkeys(c for m in per_dataset.values() for c in m.columns):
        if method not in everywhere:
            lacking = [d for d, m in used.items() if method not in m.columns]
            excluded.append(f"{method}: not usable on {', '.join(lacking)}")
    blocks = [m[everywhere].set_axis([f"{d}/{c}" for c in m.index]) for d, m in used.items()]
    return Usable(pd.concat(blocks), excluded)
