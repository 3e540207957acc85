"""Tables of intervals, paired tests and ranks, from the main runs (runs without a variant).

Per dataset and metric (the paper's three first, then every other metric the records carry):

- ``ci_<dataset>_<metric>``: categories x methods, each cell ``mean [low, high]``: the 95%
  Student-t interval over seeds per category, the two-level bootstrap interval for the Mean row;
- ``tests_<dataset>_<metric>``: one row per comparison (ULSAD against each other method, or all
  pairs): categories paired, wins / ties / losses, median difference, Wilcoxon p, Holm p,
  significance, and the Bayesian signed-rank probabilities.

Per metric, ``ranks_<metric>``: average ranks per dataset and over all datasets, with the
Friedman test, the Iman-Davenport F and the Nemenyi critical difference.

The methods, tests and conventions are those of :mod:`.statistics` (its docstring); every
table's notes state them and list what was left out and why. :func:`tied_with_best_methods` says,
per dataset and metric, which methods the data cannot tell apart from the best one, for the main
tables' bold marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .aggregate import FULL_SEEDS, per_seed
from .naming import ALL_METRICS, METRIC_LABEL, METRICS, OFFICIAL_EXTRA, dataset_label, metric_title
from .statistics import (
    ALPHA,
    BAYES_MIN_PAIRS,
    BAYES_SAMPLES,
    BAYES_SEED,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    EXACT_UP_TO,
    LEVEL,
    NOT_ENOUGH,
    PERMUTATION_SEED,
    PERMUTATIONS,
    PRINT_DECIMALS,
    ROPE,
    Comparison,
    Interval,
    Ranking,
    Usable,
    bootstrap_interval,
    over_datasets,
    paired_comparisons,
    pairs_of,
    rank_methods,
    t_interval,
    tied_with_best,
    usable_means,
    wilcoxon_min_pairs,
)
from .table import PARTIAL_MARK, SEED_MARK, Cell, Table, Value, mark_best
from .tables import Context, Method

#: the metrics tested, in this order: the paper's three, then the others a record may carry, then the
#: official metrics of a dataset's own benchmark (MVTec AD 2's AU-PRO@0.05 and SegF1)
METRIC_ORDER = (*METRICS, *(m for m in ALL_METRICS if m not in METRICS), *OFFICIAL_EXTRA)
REFERENCE_MODEL = "ulsad"  # the method the paper proposes: compared against every other
ALL_DATASETS = "All datasets"
DASH = "—"


@dataclass
class Evidence:
    """One dataset and metric: every method's per-seed values and what the tests may use.

    Attributes:
        dataset, metric: what it is about.
        categories: the dataset's categories with a value of the metric (for some method).
        methods: the methods with a value on the dataset, in the tables' order.
        seeds: method -> category -> per-seed values (percent).
        usable: category means of the methods the tests may use (columns: labels), and the others.
        no_value: the dataset's categories without any value of the metric.
    """

    dataset: str
    metric: str
    categories: list[str]
    methods: list[Method]
    seeds: dict[Method, dict[str, list[float]]]
    usable: Usable
    no_value: list[str] = field(default_factory=list)

    @property
    def means(self) -> pd.DataFrame:
        return self.usable.means

    @property
    def references(self) -> list[str]:
        """The usable methods of the reference model (ULSAD), by label."""
        return [m.label for m in self.methods if m.model == REFERENCE_MODEL and m.label in self.means.columns]


def metric_name(metric: str) -> str:
    """A metric as titles name it: "Image AUROC", else its column label ("I-AP")."""
    return metric_title(metric)


def seeds_by_category(frame: pd.DataFrame, metric: str) -> dict[str, list[float]]:
    """category -> per-seed values (seeds in order) of ``metric`` (NaN left out, :func:`.aggregate.per_seed`)."""
    out: dict[str, list[float]] = {}
    for _, categories in sorted(per_seed(frame, metric).items()):
        for category, value in categories.items():
            out.setdefault(category, []).append(value)
    return out


def evidence(ctx: Context, dataset: str, metric: str) -> Evidence:
    """The values of ``metric`` on ``dataset`` of every main method, and those the tests may use."""
    seeds = {m: seeds_by_category(ctx.frame_of(m, dataset), metric) for m in ctx.methods_in(dataset)}
    seeds = {m: s for m, s in seeds.items() if s}
    present = {c for s in seeds.values() for c in s}
    categories = [c for c in ctx.expected(dataset) if c in present]
    categories += sorted(present - set(categories))
    usable = usable_means(
        {m.label: s for m, s in seeds.items()}, categories, {m.label: m.protocol for m in seeds}, ctx.min_seeds
    )
    no_value = [c for c in ctx.expected(dataset) if c not in present]
    return Evidence(dataset, metric, categories, list(seeds), seeds, usable, no_value)


def metrics_present(ctx: Context, dataset: str) -> list[str]:
    """The metrics (of :data:`METRIC_ORDER`) with a value in a main record of ``dataset``."""
    frame = ctx.main[ctx.main["dataset"] == dataset]
    return [m for m in METRIC_ORDER if m in frame.columns and frame[m].notna().any()]


def _number(value: float, decimals: int = PRINT_DECIMALS) -> str:
    return f"{value:.{decimals}f}"


def _p(p: float) -> str:
    """A p-value with four decimals (exact p-values of 15 categories go down to 6e-5)."""
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def interval_text(interval: Interval | None, marks: str = "") -> str:
    """``mean [low, high]`` (``mean (1 seed)`` without an interval), then the marks."""
    if interval is None:
        return DASH
    if interval.low is None or interval.high is None:
        text = f"{_number(interval.mean)} (1 seed)"
    else:
        text = f"{_number(interval.mean)} [{_number(interval.low)}, {_number(interval.high)}]"
    return f"{text} {marks}" if marks else text


def _category_cell(values: list[float]) -> str:
    """One category of one method: the t interval over its seeds, † with the seed count when below the paper's."""
    interval = t_interval(values)
    if interval is None or interval.n >= FULL_SEEDS:
        return interval_text(interval)
    return interval_text(interval, f"{SEED_MARK}{interval.n}")


def _mean_cell(ev: Evidence, method: Method) -> str:
    """The dataset mean of one method with its bootstrap interval; † (fewest seeds) and ‡ (categories missing)."""
    seeds = {c: ev.seeds[method][c] for c in ev.categories if ev.seeds[method].get(c)}
    marks = []
    fewest = min((len(v) for v in seeds.values()), default=0)
    if 0 < fewest < FULL_SEEDS:
        marks.append(f"{SEED_MARK}{fewest}")
    if len(seeds) < len(ev.categories):
        marks.append(PARTIAL_MARK)
    return interval_text(bootstrap_interval(seeds), " ".join(marks))


def _excluded_note(ev: Evidence, where: str) -> list[str]:
    """The notes naming the methods left out of ``ev``'s tests (and why) and the categories without values."""
    notes = []
    if ev.usable.excluded:
        notes.append(f"Left out of the tests and ranks{where}: " + "; ".join(ev.usable.excluded) + ".")
    if ev.no_value:
        notes.append(
            f"Categories without any {METRIC_LABEL.get(ev.metric, ev.metric)} value: {', '.join(ev.no_value)}."
        )
    return notes


INTERVAL_NOTES = [
    f"Per category: mean over seeds and its {LEVEL:.0%} Student-t interval, mean ± t(0.975, n − 1) · s / √n "
    "(scipy.stats.t.interval; s the sample std, ddof 1); no interval from one seed.",
    f"Mean row: the mean over categories of the seed means, with a {LEVEL:.0%} two-level percentile bootstrap "
    f"interval: {BOOTSTRAP_RESAMPLES:,} resamples, each drawing the categories with replacement and then, within "
    "each drawn category, its seeds with replacement (numpy.random.default_rng, seed "
    f"{BOOTSTRAP_SEED}). It counts the spread between categories as well as between seeds (slightly "
    "conservative: the category means already carry the seeds' spread), so it is wider than the ± std over "
    "seeds of the main tables.",
    f"{SEED_MARK}n: n seeds (the paper ran {FULL_SEEDS}; in the Mean row, the fewest of any category); "
    f"{PARTIAL_MARK}: mean over the categories the method has only. Methods of the authors' protocol are shown "
    "for reference; they, every method with a category missing and every method with fewer seeds than the "
    f"report admits (--min-seeds, default {FULL_SEEDS}) are left out of the dataset's paired tests and ranks.",
]


def interval_table(ctx: Context, dataset: str, metric: str) -> Table | None:
    """``ci_<dataset>_<metric>``: categories x methods, ``mean [low, high]``, and the bootstrap Mean row."""
    ev = evidence(ctx, dataset, metric)
    if not ev.methods:
        return None
    rows: list[list[Cell]] = [
        [category, *(_category_cell(ev.seeds[m].get(category, [])) for m in ev.methods)] for category in ev.categories
    ]
    rows.append(["Mean", *(_mean_cell(ev, m) for m in ev.methods)])
    name = metric_name(metric)
    return Table(
        key=f"ci_{dataset}_{metric}",
        title=f"{name} (%) on {dataset_label(dataset)}: mean and {LEVEL:.0%} interval per category and for the "
        "dataset mean",
        header=["Category", *(m.label for m in ev.methods)],
        rows=rows,
        notes=[*INTERVAL_NOTES, *_excluded_note(ev, f" of {name}")],
        rules={len(rows) - 1},
    )


def comparison_row(c: Comparison) -> list[Cell]:
    """A paired-test table's row: labels and numbers as text (p-values need their own format)."""
    p = DASH if c.p is None else _p(c.p) + (f" ({c.reason})" if c.reason else "")
    holm = _p(c.p_holm) if c.p_holm is not None else DASH
    significant = DASH if c.significant is None else ("yes" if c.significant else "no")
    bayes = [_number(x) for x in c.bayes] if c.bayes else [DASH] * 3
    median = DASH if c.median_difference is None else f"{c.median_difference:+.{PRINT_DECIMALS}f}"
    return [f"{c.a} vs {c.b}", str(c.n), f"{c.wins} / {c.ties} / {c.losses}", median, p, holm, significant, *bayes]


PAIRED_HEADER = [
    "A vs B",
    "n",
    "W / T / L",
    "Median A − B",
    "Wilcoxon p",
    "Holm p",
    f"Significant (α = {ALPHA:g})",
    "P(A better)",
    "P(equivalent)",
    "P(B better)",
]


def paired_notes() -> list[str]:
    """What the paired-test tables' columns are and how they were computed."""
    return [
        "Each row compares method A with method B over the dataset's categories, paired by category on the mean "
        "over seeds (n categories). W / T / L: categories where A's mean is higher / equal when both are rounded "
        f"to {PRINT_DECIMALS} decimals (as printed) / lower. Median A − B: in points (percent).",
        "Wilcoxon signed-rank test, two-sided (scipy.stats.wilcoxon, zero_method='zsplit': the ranks of zero "
        "differences are split between the two sums, as Demšar 2006 recommends); p from scipy's exact "
        "distribution, or, with tied or zero differences, from every one of the 2^n sign flips (scipy.stats."
        f"PermutationMethod; up to n = {EXACT_UP_TO}, beyond from {PERMUTATIONS:,} random sign flips, seed "
        f"{PERMUTATION_SEED}). "
        "Holm's step-down correction over the comparisons of this table (statsmodels multipletests, "
        f"method='holm'); significant: Holm-adjusted p ≤ {ALPHA:g}.",
        f"'{NOT_ENOUGH}': with fewer than {wilcoxon_min_pairs()} categories no exact two-sided Wilcoxon p can be "
        f"below {ALPHA:g} (its smallest value is 2 / 2^n): the p is given, but no difference can be significant.",
        f"Bayesian signed-rank test (Benavoli et al. 2014; baycomp.SignedRankTest, prior 0.5, {BAYES_SAMPLES:,} "
        f"posterior samples, random_state {BAYES_SEED}) with a region of practical equivalence of ± {ROPE:g} point: "
        "the posterior probability that A is better by more than the ROPE, that the two are equivalent, that B is "
        f"better; not reported from fewer than {BAYES_MIN_PAIRS} categories.",
    ]


def paired_table(ctx: Context, dataset: str, metric: str, all_pairs: bool = False) -> Table | None:
    """``tests_<dataset>_<metric>``: ULSAD against each other method (or every pair), one row each."""
    ev = evidence(ctx, dataset, metric)
    if len(ev.methods) < 2:
        return None
    labels = [str(c) for c in ev.means.columns]
    references = [] if all_pairs else ev.references
    comparisons = paired_comparisons(ev.means, pairs_of(labels, references)) if len(labels) >= 2 else []
    what = "ULSAD against each other method" if references else "every pair of methods"
    name = metric_name(metric)
    notes = paired_notes()
    if not all_pairs and not references:
        notes.append("ULSAD is not among the methods tested here, so every pair is compared.")
    if not comparisons:
        notes.append(f"No comparison: fewer than two methods have {ctx.min_seeds} seeds in every category.")
    return Table(
        key=f"tests_{dataset}_{metric}",
        title=f"Paired tests on {name} (%) over the categories of {dataset_label(dataset)}: {what}",
        header=list(PAIRED_HEADER),
        rows=[comparison_row(c) for c in comparisons],
        notes=[*notes, *_excluded_note(ev, "")],
    )


def rankings(ctx: Context, metric: str) -> tuple[dict[str, Ranking], Ranking | None, list[str], list[Evidence]]:
    """Per dataset with the metric: its :class:`Ranking`; the ranking over all datasets (None when no
    dataset has two usable methods); the notes on what the pooled ranking left out; the evidence."""
    found = [evidence(ctx, d, metric) for d in ctx.datasets() if metric in metrics_present(ctx, d)]
    per_dataset = {ev.dataset: rank_methods(ev.means) for ev in found if ev.means.shape[1] and ev.means.shape[0]}
    pooled = over_datasets({ev.dataset: ev.means for ev in found})
    overall = rank_methods(pooled.means) if pooled.means.shape[1] else None
    return per_dataset, overall, pooled.excluded, found


def diagram_reason(ranking: Ranking | None) -> str:
    """Why no critical-difference diagram is drawn for ``ranking`` ("" when one is: the Nemenyi test
    and the CD exist, also where the Friedman test is missing or cannot reject, which the diagram says)."""
    if ranking is None:
        return "no dataset has two methods usable for ranks"
    if ranking.nemenyi is None or ranking.cd is None:
        return ranking.reason or "no Nemenyi test"
    return ""


STAT_ROWS = ["N (categories)", "k (methods)", "Friedman χ² (p)", "Iman–Davenport F (p)", f"Nemenyi CD (α = {ALPHA:g})"]


def _stat_cells(r: Ranking | None) -> list[str]:
    """One column's N, k, Friedman, Iman-Davenport and CD (the reason when the tests were not run)."""
    if r is None:
        return [DASH] * len(STAT_ROWS)
    friedman = f"{r.chi2:.2f} (p {_p(r.p)})" if r.chi2 is not None and r.p is not None else (r.reason or DASH)
    if r.caveat:
        friedman += f"; {r.caveat}"
    iman = f"{r.f:.2f} (p {_p(r.p_f)})" if r.f is not None and r.p_f is not None else DASH
    return [str(r.n), str(r.k), friedman, iman, DASH if r.cd is None else f"{r.cd:.2f}"]


def _stat_rows(columns: list[Ranking | None]) -> list[list[Cell]]:
    """The rank table's lower rows, one per :data:`STAT_ROWS` (text)."""
    cells = [_stat_cells(r) for r in columns]
    return [[name, *(c[i] for c in cells)] for i, name in enumerate(STAT_ROWS)]


def rank_notes(metric: str, min_seeds: int = FULL_SEEDS) -> list[str]:
    """How the rank tables' ranks and tests were computed."""
    return [
        f"Rank 1 = best: in each category the methods are ranked by their mean {metric_name(metric)} over seeds "
        "(ties share the average rank), and the ranks are averaged over the categories (Demšar 2006). All "
        "datasets: every dataset's categories are blocks (a dataset with more categories weighs more), over the "
        "methods usable on every dataset that has two usable methods.",
        "Friedman test: scipy.stats.friedmanchisquare (χ² with k − 1 degrees of freedom, corrected for ties); "
        "Iman–Davenport F with k − 1 and (k − 1)(N − 1) degrees of freedom (Demšar 2006, Sec. 3.2.2). Nemenyi "
        "post-hoc test (scikit-posthocs posthoc_nemenyi_friedman): two methods differ at "
        f"α = {ALPHA:g} when their average ranks differ by more than CD = q_α √(k (k + 1) / (6 N)), q_α the "
        "studentized range quantile (1 − α, k, ∞) over √2 (Demšar 2006, Table 5(a)); read it only where the "
        "Friedman test rejects.",
        f"A method enters the ranks of a dataset only with the clean protocol and {min_seeds} seeds in every "
        "category; '—': left out (see below).",
    ]


def rank_table(ctx: Context, metric: str) -> Table | None:
    """``ranks_<metric>``: methods x (datasets, all datasets), average ranks, then the tests' rows."""
    per_dataset, overall, pooled_excluded, found = rankings(ctx, metric)
    if not per_dataset:
        return None
    datasets = list(per_dataset)
    columns: list[Ranking | None] = [*per_dataset.values(), overall]
    labels = [m.label for m in ctx.methods if any(m.label in r.average_ranks.index for r in columns if r)]
    values = {label: [Value(_rank(r, label)) for r in columns] for label in labels}
    for i in range(len(columns)):
        mark_best([values[label][i] for label in labels], higher_is_better=False)
    rows: list[list[Cell]] = [[label, *([v] for v in values[label])] for label in labels]
    name = metric_name(metric)
    notes = rank_notes(metric, ctx.min_seeds)
    for ev in found:
        notes += _excluded_note(ev, f" on {dataset_label(ev.dataset)}")
    if pooled_excluded:
        notes.append("Left out of the ranks over all datasets: " + "; ".join(pooled_excluded) + ".")
    for where, ranking in [*((dataset_label(d), r) for d, r in per_dataset.items()), (ALL_DATASETS, overall)]:
        reason = diagram_reason(ranking)
        if reason:
            notes.append(f"No critical-difference diagram for {where}: {reason}.")
        elif ranking is not None and ranking.caveat:
            notes.append(
                f"{where}: {ranking.caveat}: no difference of ranks can be significant; ranks are descriptive."
            )
    return Table(
        key=f"ranks_{metric}",
        title=f"Average ranks by {name} over categories (1 = best), per dataset and over all datasets: Friedman "
        "test and Nemenyi critical difference",
        header=["Method", *(dataset_label(d) for d in datasets), ALL_DATASETS],
        rows=rows + _stat_rows(columns),
        notes=notes,
        rules={len(rows)},
    )


def _rank(ranking: Ranking | None, label: str) -> float | None:
    if ranking is None or label not in ranking.average_ranks.index:
        return None
    return float(ranking.average_ranks[label])


def statistics_tables(ctx: Context, all_pairs: bool = False) -> list[Table]:
    """Every interval and paired-test table (per dataset and metric) and every rank table (per metric)."""
    tables: list[Table | None] = []
    for dataset in ctx.datasets():
        for metric in metrics_present(ctx, dataset):
            tables += [interval_table(ctx, dataset, metric), paired_table(ctx, dataset, metric, all_pairs)]
    present = {m for d in ctx.datasets() for m in metrics_present(ctx, d)}
    tables += [rank_table(ctx, metric) for metric in METRIC_ORDER if metric in present]
    return [t for t in tables if t is not None]


def tied_with_best_methods(
    ctx: Context, metrics: tuple[str, ...] = METRIC_ORDER
) -> dict[tuple[str, str], frozenset[Method] | None]:
    """Per (dataset, metric): the methods not significantly different from the best one (highest
    mean over categories), by the paired Wilcoxon test across categories, Holm-corrected over the
    comparisons with the best (:func:`.statistics.tied_with_best`); None when there are too few
    categories or usable methods to test, or when the best printed value (the bold one: the highest
    mean over categories of the clean methods with every category) belongs to a method left out of
    the tests (too few seeds), which then cannot be the reference. Methods left out of the tests
    (authors' protocol, †, ‡) are in no set."""
    out: dict[tuple[str, str], frozenset[Method] | None] = {}
    for dataset in ctx.datasets():
        for metric in (m for m in metrics if m in metrics_present(ctx, dataset)):
            ev = evidence(ctx, dataset, metric)
            tied = tied_with_best(ev.means) if _bold_is_tested(ev) else None
            by_label = {m.label: m for m in ev.methods}
            out[(dataset, metric)] = None if tied is None else frozenset(by_label[label] for label in tied)
    return out


def _bold_is_tested(ev: Evidence) -> bool:
    """Whether the method with the highest mean over categories among the clean ones that have every
    category (those the main tables rank) is among the tested methods."""
    ranked = {
        m.label: float(np.mean([np.mean(ev.seeds[m][c]) for c in ev.categories]))
        for m in ev.methods
        if m.protocol == "clean" and all(ev.seeds[m].get(c) for c in ev.categories)
    }
    return bool(ranked) and max(ranked, key=lambda label: ranked[label]) in ev.means.columns


def seed_values(ev: Evidence) -> pd.DataFrame:
    """Long table of ``ev``'s per-seed values: method (label), category, value (for the figures)."""
    rows = [
        (m.label, category, value)
        for m in ev.methods
        for category in ev.categories
        for value in ev.seeds[m].get(category, [])
    ]
    return pd.DataFrame(rows, columns=["method", "category", "value"]).astype({"value": np.float64})
