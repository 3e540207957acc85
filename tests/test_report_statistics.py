"""Intervals, paired tests and ranks of the report against scipy, statsmodels, scikit-posthocs and
baycomp computed directly on the records, and against Demšar (2006, JMLR 7:1-30)'s worked examples.

The records (:func:`results`), in percent after loading:

- synthetic, 8 categories (texture, pinbox, c3..c8), seeds 0-4: ULSAD's category mean is
  80 + 1.5 i (i = 0..7); PaDiM is 3 + 0.2 i points lower everywhere (a significant difference);
  PatchCore alternates 0.6 above and 0.8 below ULSAD (no significant difference); every seed adds
  a fixed normal noise (sd 0.5). Left out of the tests: DFR (3 seeds, †), EfficientAD (no c8, ‡)
  and PaDiM run with the authors' protocol.
- mvtec_loco, 2 categories, the same three clean methods: too few categories for any test.
"""

from __future__ import annotations

import json
from pathlib import Path

import baycomp
import numpy as np
import pandas as pd
import pytest
import scikit_posthocs
from scipy import stats
from statsmodels.stats.multitest import multipletests

from tests.test_report import write_run
from ulsad_bench.protocol import Protocol
from ulsad_bench.records import RECORD_NAME, write_record
from ulsad_bench.report import load_results
from ulsad_bench.report.render_latex import render_latex
from ulsad_bench.report.render_markdown import render_markdown
from ulsad_bench.report.stat_figures import statistics_figures
from ulsad_bench.report.stat_tables import (
    comparison_row,
    evidence,
    interval_table,
    paired_table,
    rank_table,
    statistics_tables,
    tied_with_best_methods,
)
from ulsad_bench.report.statistics import (
    BAYES_SAMPLES,
    BAYES_SEED,
    NOT_ENOUGH,
    ROPE,
    average_ranks,
    bootstrap_interval,
    compare,
    critical_difference,
    friedman_min_blocks,
    iman_davenport,
    paired_comparisons,
    pairs_of,
    q_alpha,
    rank_methods,
    t_interval,
    tied_with_best,
    usable_means,
    wilcoxon_min_pairs,
    wilcoxon_p,
)
from ulsad_bench.report.table import Cell, Table
from ulsad_bench.report.tables import Context

CATEGORIES = ["texture", "pinbox", *(f"c{i}" for i in range(3, 9))]
LOCO = ["breakfast_box", "juice_bottle"]
SEEDS = range(5)
PATCHCORE_SHIFT = [0.6, -0.8] * 4
METRIC_SHIFT = {"image_auroc": 0.0, "pixel_auroc": 5.0, "aupro": -10.0}


def _noise() -> np.ndarray:
    return np.random.default_rng(26).normal(0.0, 0.5, size=(6, len(CATEGORIES), len(SEEDS), 3))


def _method_means(model: str, i: int) -> float:
    ulsad = 80.0 + 1.5 * i
    return {
        "ulsad": ulsad,
        "padim": ulsad - 3.0 - 0.2 * i,
        "patchcore": ulsad + PATCHCORE_SHIFT[i],
        "dfr": ulsad - 1.0,
        "efficientad": ulsad - 0.5,
        "authors": ulsad + 2.0,
    }[model]


def _write(root: Path, model: str, dataset: str, categories: list[str], seeds: range, authors: bool = False) -> None:
    noise = _noise()
    row = ["ulsad", "padim", "patchcore", "dfr", "efficientad", "authors"].index("authors" if authors else model)
    for i, category in enumerate(categories):
        for seed in seeds:
            values = {
                metric: (_method_means("authors" if authors else model, i) + shift + noise[row, i, seed, m]) / 100
                for m, (metric, shift) in enumerate(METRIC_SHIFT.items())
            }
            folder = f"authors/{dataset}/{category}/{model}/seed={seed}" if authors else None
            run_dir = write_run(
                root, model=model, dataset=dataset, category=category, seed=seed, folder=folder, **values
            )
            if authors:  # the same run evaluated with the authors' protocol (selected on test images)
                record = json.loads((run_dir / RECORD_NAME).read_text())
                tags = {"select_on_test": True, "drop_last_test": True, "quantiles_from_test": True}
                record["protocol"] = Protocol(name="authors", **tags).as_record()
                write_record(run_dir, record)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    root = tmp_path_factory.mktemp("statistics")
    for model in ("ulsad", "padim", "patchcore"):
        _write(root, model, "synthetic", CATEGORIES, SEEDS)
        _write(root, model, "mvtec_loco", LOCO, SEEDS)
    _write(root, "dfr", "synthetic", CATEGORIES, range(3))
    _write(root, "efficientad", "synthetic", CATEGORIES[:-1], SEEDS)
    _write(root, "padim", "synthetic", CATEGORIES, SEEDS, authors=True)
    return Context(load_results(root))


def _means(ctx: Context, dataset: str, metric: str, models: list[str]) -> pd.DataFrame:
    """Category means over seeds straight from the loaded records (categories x model), clean runs only."""
    ok = ctx.results.ok
    frame = ok[(ok["dataset"] == dataset) & (ok["protocol"] == "clean") & ok["model"].isin(models)]
    return frame.pivot_table(index="category", columns="model", values=metric, aggfunc="mean")


def _seeds(ctx: Context, dataset: str, category: str, model: str, metric: str = "image_auroc") -> np.ndarray:
    ok = ctx.results.ok
    mask = (ok["dataset"] == dataset) & (ok["category"] == category) & (ok["model"] == model)
    return ok.loc[mask & (ok["protocol"] == "clean")].sort_values("seed")[metric].to_numpy()


def _row(table: Table | None, first: str) -> list[Cell]:
    assert table is not None
    return next(row for row in table.rows if row[0] == first)


# --- intervals ---------------------------------------------------------------------------------


def test_t_interval_is_scipys_student_interval_over_seeds(ctx: Context) -> None:
    values = _seeds(ctx, "synthetic", "texture", "ulsad")
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    interval = t_interval(list(values))
    assert interval is not None and interval.n == 5
    assert (interval.mean, interval.low, interval.high) == pytest.approx((values.mean(), low, high), abs=1e-9)
    table = interval_table(ctx, "synthetic", "image_auroc")
    assert table is not None
    assert _row(table, "texture")[table.header.index("ULSAD")] == (f"{values.mean():.2f} [{low:.2f}, {high:.2f}]")
    one = t_interval([84.0])
    assert one is not None and (one.low, one.high) == (None, None)
    flat = t_interval([90.0, 90.0, 90.0])
    assert flat is not None and (flat.low, flat.high) == (90.0, 90.0)
    assert t_interval([]) is None


def test_bootstrap_is_reproducible_and_each_stage_matches_scipys_percentile_bootstrap() -> None:
    rng = np.random.default_rng(3)
    seeds = {f"c{i}": list(80 + 2 * i + rng.normal(0, 1.0, 5)) for i in range(8)}
    first, again = bootstrap_interval(seeds), bootstrap_interval(seeds)
    assert first == again and first is not None
    assert first.mean == pytest.approx(np.mean([np.mean(v) for v in seeds.values()]))
    assert bootstrap_interval(seeds, seed=1) != first
    # one seed per category: the categories' means resampled (stage 1 alone)
    means = [float(np.mean(v)) for v in seeds.values()]
    one_seed = bootstrap_interval({c: [m] for c, m in zip(seeds, means, strict=True)})
    ref = stats.bootstrap((np.array(means),), np.mean, n_resamples=10_000, method="percentile", rng=0)
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert one_seed is not None
    assert one_seed.low == pytest.approx(ref.confidence_interval.low, abs=0.05 * width)
    assert one_seed.high == pytest.approx(ref.confidence_interval.high, abs=0.05 * width)
    # one category: its seeds resampled (stage 2 alone)
    single = bootstrap_interval({"c0": seeds["c0"]})
    ref = stats.bootstrap((np.array(seeds["c0"]),), np.mean, n_resamples=10_000, method="percentile", rng=0)
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert single is not None
    assert single.low == pytest.approx(ref.confidence_interval.low, abs=0.05 * width)
    assert single.high == pytest.approx(ref.confidence_interval.high, abs=0.05 * width)
    # both stages: wider than resampling the category means alone
    assert first.high - first.low > one_seed.high - one_seed.low
    assert bootstrap_interval({}) is None


def test_the_mean_row_is_the_bootstrap_of_the_method_s_seeds(ctx: Context) -> None:
    seeds = {c: list(_seeds(ctx, "synthetic", c, "ulsad")) for c in CATEGORIES}
    interval = bootstrap_interval(seeds)
    assert interval is not None
    table = interval_table(ctx, "synthetic", "image_auroc")
    assert table is not None
    assert _row(table, "Mean")[table.header.index("ULSAD")] == (
        f"{interval.mean:.2f} [{interval.low:.2f}, {interval.high:.2f}]"
    )


# --- paired tests ------------------------------------------------------------------------------


def test_paired_tests_match_scipy_wilcoxon_and_statsmodels_holm(ctx: Context) -> None:
    means = _means(ctx, "synthetic", "image_auroc", ["ulsad", "padim", "patchcore"])
    expected_p = [stats.wilcoxon(means["ulsad"], means[m], method="exact").pvalue for m in ("padim", "patchcore")]
    reject, holm_p, _, _ = multipletests(expected_p, alpha=0.05, method="holm")
    table = paired_table(ctx, "synthetic", "image_auroc")
    assert table is not None and table.key == "tests_synthetic_image_auroc"
    for model, label, p, adjusted, rejected in zip(
        ("padim", "patchcore"), ("PaDiM", "PatchCore"), expected_p, holm_p, reject, strict=True
    ):
        row = _row(table, f"ULSAD vs {label}")
        diff = means["ulsad"] - means[model]
        wins, ties = int((diff.round(2) > 0).sum()), int((means["ulsad"].round(2) == means[model].round(2)).sum())
        assert row[1] == "8"
        assert row[2] == f"{wins} / {ties} / {8 - wins - ties}"
        assert row[3] == f"{np.median(diff):+.2f}"
        assert row[4] == f"{p:.4f}" and row[5] == f"{adjusted:.4f}"
        assert row[6] == ("yes" if rejected else "no")
    assert _row(table, "ULSAD vs PaDiM")[2] == "8 / 0 / 0" and _row(table, "ULSAD vs PaDiM")[6] == "yes"
    assert _row(table, "ULSAD vs PatchCore")[6] == "no"


def test_zero_differences_split_their_ranks_as_demsar_s_table_2() -> None:
    """Demšar 2006 Sec. 3.1.3: C4.5+m against C4.5 gives R+ = 93, R- = 12, T = 12 (two zero differences
    split between the sums), significant at 0.05 (critical T for N = 14: 21); W/T/L 10/2/2."""
    c45, c45_m = DEMSAR_AUC[:, 0] * 100, DEMSAR_AUC[:, 1] * 100
    every_flip = stats.PermutationMethod(n_resamples=2**16)
    result = stats.wilcoxon(c45_m, c45, zero_method="zsplit", method=every_flip)
    assert result.statistic == pytest.approx(12.0)
    p = wilcoxon_p(c45_m, c45)  # 14 pairs with zeros: 8192 random sign flips
    assert p is not None and p < 0.05
    assert p == pytest.approx(result.pvalue, abs=0.003)
    assert wilcoxon_p(c45, c45_m) == p  # two-sided: the same p either way round
    # up to 13 pairs, every sign flip: scipy's exact conditional p-value
    thirteen = stats.wilcoxon(c45_m[:13], c45[:13], zero_method="zsplit", method=every_flip).pvalue
    assert wilcoxon_p(c45_m[:13], c45[:13]) == pytest.approx(thirteen, rel=1e-12)
    means = pd.DataFrame({"C4.5+m": c45_m, "C4.5": c45})
    comparison = compare("C4.5+m", "C4.5", means)
    assert (comparison.wins, comparison.ties, comparison.losses) == (10, 2, 2)
    assert comparison.median_difference == pytest.approx(np.median(c45_m - c45))


def test_too_few_categories_give_a_p_value_that_says_it_cannot_be_significant(ctx: Context) -> None:
    assert wilcoxon_min_pairs(0.05) == 6  # 2 / 2^5 = 0.0625, 2 / 2^6 = 0.031
    assert wilcoxon_p([1.0] * 5, [0.0] * 5) == pytest.approx(2 / 2**5)  # the smallest p of 5 pairs: above 0.05
    assert wilcoxon_p([1.0] * 6, [0.0] * 6) == pytest.approx(2 / 2**6)
    assert wilcoxon_p([1.0] * 3, [1.0] * 3) == 1.0
    table = paired_table(ctx, "mvtec_loco", "image_auroc")
    assert table is not None
    row = _row(table, "ULSAD vs PaDiM")
    means = _means(ctx, "mvtec_loco", "image_auroc", ["ulsad", "padim"])
    p = stats.wilcoxon(means["ulsad"] - means["padim"], zero_method="zsplit", method="exact").pvalue
    assert row[1] == "2" and row[4] == f"{p:.4f} ({NOT_ENOUGH} (the Wilcoxon test needs 6))"
    assert row[6] == "no" and row[7:] == ["—"] * 3  # never significant; no Bayesian test from 2 categories


def test_bayesian_probabilities_are_baycomps(ctx: Context) -> None:
    means = _means(ctx, "synthetic", "image_auroc", ["ulsad", "padim", "patchcore"])
    for model, label in (("padim", "PaDiM"), ("patchcore", "PatchCore")):
        expected = baycomp.SignedRankTest.probs(
            means["ulsad"].to_numpy(),
            means[model].to_numpy(),
            rope=ROPE,
            nsamples=BAYES_SAMPLES,
            random_state=BAYES_SEED,
        )
        row = _row(paired_table(ctx, "synthetic", "image_auroc"), f"ULSAD vs {label}")
        assert row[7:] == [f"{x:.2f}" for x in expected]
    x = np.arange(8, dtype=float)
    better = compare("a", "b", pd.DataFrame({"a": x + 5, "b": x})).bayes
    same = compare("a", "b", pd.DataFrame({"a": x + 0.1, "b": x})).bayes
    assert better is not None and better[0] > 0.95
    assert same is not None and same[1] > 0.95


def test_all_pairs_on_request_and_holm_over_the_table() -> None:
    rng = np.random.default_rng(0)
    means = pd.DataFrame({m: rng.normal(80, 2, 8) + shift for m, shift in (("a", 3), ("b", 0), ("c", 0.2))})
    assert pairs_of(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs_of(["a", "b", "c"], ["a"]) == [("a", "b"), ("a", "c")]
    found = paired_comparisons(means, pairs_of(["a", "b", "c"]), bayes=False)
    raw = [stats.wilcoxon(means[a], means[b], method="exact").pvalue for a, b in pairs_of(["a", "b", "c"])]
    reject, adjusted, _, _ = multipletests(raw, method="holm")
    assert [c.p for c in found] == pytest.approx(raw)
    assert [c.p_holm for c in found] == pytest.approx(list(adjusted))
    assert [c.significant for c in found] == list(reject)
    assert comparison_row(found[0])[0] == "a vs b"


# --- ranks -------------------------------------------------------------------------------------

# Demšar 2006, Table 6: AUC of C4.5, C4.5+m, C4.5+cf, C4.5+m+cf on 14 data sets. On "voting" the
# paper prints 0.975 for both C4.5+cf and C4.5+m+cf but ranks them 2 and 3 (unrounded values differ),
# so C4.5+m+cf's is written 0.9749 here to reproduce its ranks.
DEMSAR_AUC = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.654, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.975, 0.9749],
        [0.957, 0.978, 0.946, 0.970],
    ]
)
DEMSAR_NAMES = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]


def test_demsar_worked_example_ranks_friedman_and_critical_difference() -> None:
    """Demšar 2006 Sec. 3.2.2: average ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28 (his equation,
    without scipy's tie correction), F_F = 3.69; CD = 1.25 at alpha 0.05 (1.12 at 0.10); Nemenyi finds
    no pair different at 0.05, and C4.5 worse than C4.5+m and C4.5+m+cf at 0.10."""
    means = pd.DataFrame(DEMSAR_AUC, columns=DEMSAR_NAMES)
    ranks = average_ranks(means)
    assert [round(ranks[n], 3) for n in DEMSAR_NAMES] == [3.143, 2.000, 2.893, 1.964]
    n, k = means.shape
    chi2_demsar = 12 * n / (k * (k + 1)) * (sum(ranks**2) - k * (k + 1) ** 2 / 4)
    assert chi2_demsar == pytest.approx(9.28, abs=0.005)
    f, p_f = iman_davenport(chi2_demsar, n, k)
    assert f == pytest.approx(3.69, abs=0.005)
    assert f > stats.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.005) and p_f < 0.05
    ranking = rank_methods(means)
    assert ranking.chi2 == pytest.approx(stats.friedmanchisquare(*DEMSAR_AUC.T).statistic)
    assert ranking.p == pytest.approx(stats.friedmanchisquare(*DEMSAR_AUC.T).pvalue)
    assert ranking.f == pytest.approx(iman_davenport(ranking.chi2, n, k)[0])
    assert ranking.cd == pytest.approx(1.25, abs=0.005)
    assert critical_difference(4, 14, alpha=0.10) == pytest.approx(1.12, abs=0.005)
    expected = scikit_posthocs.posthoc_nemenyi_friedman(DEMSAR_AUC).to_numpy()
    assert ranking.nemenyi is not None
    assert np.allclose(ranking.nemenyi.loc[DEMSAR_NAMES, DEMSAR_NAMES].to_numpy(), expected)
    off_diagonal = ranking.nemenyi.to_numpy()[~np.eye(4, dtype=bool)]
    assert (off_diagonal > 0.05).all()
    assert ranking.nemenyi.loc["C4.5", "C4.5+m"] < 0.10 and ranking.nemenyi.loc["C4.5", "C4.5+m+cf"] < 0.10
    assert ranking.nemenyi.loc["C4.5", "C4.5+cf"] > 0.10


def test_q_alpha_is_demsar_s_table_5a() -> None:
    table_5a = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    assert [q_alpha(k) for k in range(2, 11)] == pytest.approx(table_5a, abs=1e-3)


def test_rank_table_matches_scipy_and_scikit_posthocs(ctx: Context) -> None:
    table = rank_table(ctx, "image_auroc")
    assert table is not None and table.key == "ranks_image_auroc"
    assert table.header == ["Method", "MVTec-LOCO", "Synthetic", "All datasets"]
    synthetic = _means(ctx, "synthetic", "image_auroc", ["ulsad", "padim", "patchcore"])
    loco = _means(ctx, "mvtec_loco", "image_auroc", ["ulsad", "padim", "patchcore"])
    pooled = pd.concat([loco, synthetic])
    for column, means in ((1, loco), (2, synthetic), (3, pooled)):
        ranks = stats.rankdata(-means.to_numpy(), axis=1).mean(axis=0)
        for model, label in zip(means.columns, ("PaDiM", "PatchCore", "ULSAD"), strict=True):
            assert _row(table, label)[column][0].mean == pytest.approx(ranks[list(means.columns).index(model)])
    result = stats.friedmanchisquare(*pooled.to_numpy().T)
    assert _row(table, "Friedman χ² (p)")[3].startswith(f"{result.statistic:.2f} (p ")
    assert _row(table, "N (categories)")[1:] == ["2", "8", "10"]
    assert _row(table, "Nemenyi CD (α = 0.05)")[3] == f"{2.343 * np.sqrt(3 * 4 / 60):.2f}"
    assert f"; {NOT_ENOUGH} (N = 2; needs 3)" in _row(table, "Friedman χ² (p)")[1]  # LOCO: 3 methods need 3
    assert friedman_min_blocks(3) == 3
    assert _row(table, "ULSAD")[2][0].rank == 1  # bold: the best average rank


def test_two_methods_get_ranks_but_no_friedman_test() -> None:
    ranking = rank_methods(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 3.0, 1.0]}))
    assert ranking.average_ranks.to_dict() == {"a": pytest.approx(4 / 3), "b": pytest.approx(5 / 3)}
    assert ranking.chi2 is None and "three methods" in ranking.reason
    assert ranking.cd == pytest.approx(1.960 * np.sqrt(2 * 3 / 18), abs=1e-3) and ranking.nemenyi is not None


# --- exclusions and the best -------------------------------------------------------------------


def test_authors_protocol_and_marked_cells_are_left_out_and_said_so(ctx: Context) -> None:
    ev = evidence(ctx, "synthetic", "image_auroc")
    assert set(ev.means.columns) == {"PaDiM", "PatchCore", "ULSAD"}
    excluded = " ".join(ev.usable.excluded)
    assert "DFR: † fewer than 5 seeds in texture (3)" in excluded
    assert "EffAD: ‡ no value in c8" in excluded
    assert "[AUTHORS' PROTOCOL" in excluded and "authors' protocol" in excluded
    for table in (paired_table(ctx, "synthetic", "image_auroc"), rank_table(ctx, "image_auroc")):
        assert table is not None
        notes = " ".join(table.notes)
        assert "DFR" in notes and "EffAD" in notes and "AUTHORS' PROTOCOL" in notes
        assert not any("DFR" in str(row[0]) or "EffAD" in str(row[0]) for row in table.rows)
    ci = interval_table(ctx, "synthetic", "image_auroc")
    assert ci is not None and "DFR" in ci.header and _row(ci, "texture")[ci.header.index("DFR")].endswith("†3")
    assert _row(ci, "Mean")[ci.header.index("EffAD")].endswith("‡")


def test_usable_means_needs_every_category_with_full_seeds() -> None:
    seeds = {"a": {"x": [1.0] * 5, "y": [2.0] * 5}, "b": {"x": [1.0] * 4, "y": [2.0] * 5}, "c": {"x": [1.0] * 5}}
    usable = usable_means(seeds, ["x", "y"], {"a": "clean", "b": "clean", "c": "clean"})
    assert list(usable.means.columns) == ["a"]
    assert usable.excluded == ["b: † fewer than 5 seeds in x (4)", "c: ‡ no value in y"]
    assert usable_means({"a": seeds["a"]}, ["x", "y"], {"a": "authors"}).means.empty


def test_tied_with_best_against_a_direct_wilcoxon_holm(ctx: Context) -> None:
    means = _means(ctx, "synthetic", "image_auroc", ["ulsad", "padim", "patchcore"])
    raw = [stats.wilcoxon(means["ulsad"], means[m], method="exact").pvalue for m in ("padim", "patchcore")]
    reject = multipletests(raw, method="holm")[0]
    expected = {"ULSAD", *(label for label, r in zip(("PaDiM", "PatchCore"), reject, strict=True) if not r)}
    found = tied_with_best_methods(ctx)
    synthetic = found[("synthetic", "image_auroc")]
    assert synthetic is not None and {m.label for m in synthetic} == expected == {"ULSAD", "PatchCore"}
    assert found[("mvtec_loco", "image_auroc")] is None  # 2 categories: nothing can be tested
    assert tied_with_best(pd.DataFrame({"a": np.arange(8.0)})) is None


# --- tables and figures ------------------------------------------------------------------------


def test_tables_keys_titles_and_both_renderers(ctx: Context) -> None:
    tables = statistics_tables(ctx)
    keys = {t.key for t in tables}
    for dataset in ("synthetic", "mvtec_loco"):
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            assert {f"ci_{dataset}_{metric}", f"tests_{dataset}_{metric}"} <= keys
    assert {"ranks_image_auroc", "ranks_pixel_auroc", "ranks_aupro"} <= keys
    assert len(keys) == len(tables) == 15
    for table in tables:
        notes = " ".join(table.notes)
        assert any(word in notes for word in ("bootstrap", "Wilcoxon", "Friedman")), table.key
        assert table.key in render_latex(table) and render_markdown(table).startswith("### ")
    ci = next(t for t in tables if t.key == "ci_synthetic_image_auroc")
    assert "10,000 resamples" in " ".join(ci.notes) and "seed 0" in " ".join(ci.notes)
    tests = next(t for t in tables if t.key == "tests_synthetic_image_auroc")
    assert "Holm" in " ".join(tests.notes) and "zsplit" in " ".join(tests.notes)
    assert (
        tests.title
        == "Paired tests on Image AUROC (%) over the categories of Synthetic: ULSAD against each other method"
    )


def test_figures_are_written_and_too_small_rankings_say_so(ctx: Context, tmp_path: Path) -> None:
    written = dict(statistics_figures(ctx, tmp_path))
    for stem in ("cd_image_auroc", "cd_synthetic_image_auroc", "spread_synthetic", "spread_mvtec_loco"):
        assert stem in written
        for ext in (".png", ".pdf"):
            assert (tmp_path / f"{stem}{ext}").stat().st_size > 1000
    assert NOT_ENOUGH in written["cd_mvtec_loco_image_auroc"]  # drawn, its ranks descriptive, and it says so
    assert NOT_ENOUGH not in written["cd_synthetic_image_auroc"]
    table = rank_table(ctx, "image_auroc")
    assert table is not None
    assert any(n.startswith(f"MVTec-LOCO: {NOT_ENOUGH}") and "descriptive" in n for n in table.notes)
