"""What a reader meets in the report: no failed job as a method, reports beside their results, every
setting other than the paper's marked, map figures that say how they are scaled, LaTeX's needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.test_report import write_run
from ulsad_bench.artifacts import MapPreview, read_predictions, write_predictions
from ulsad_bench.data.sample import Sample
from ulsad_bench.report import build_report
from ulsad_bench.report.build import main as report_main
from ulsad_bench.report.figures import RunMaps, maps_figure, methods_figure
from ulsad_bench.report.load import off_paper_settings, paper_model_settings

SYNTHETIC = {"dataset": "synthetic", "category": "texture"}


def _md(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_a_job_refused_before_its_backbone_resolved_is_a_failure_not_a_method(tmp_path: Path) -> None:
    for seed in range(2):
        write_run(tmp_path / "out", model="ulsad", **SYNTHETIC, seed=seed, image_auroc=0.9583)
    write_run(
        tmp_path / "out", model="ulsad", **SYNTHETIC, seed=2, image_auroc=0.0, backbone="", status="failed",
        folder="synthetic/texture/ulsad/dataset.image_size=100/seed=2",
    )  # fmt: skip
    report = build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    table = _md(tmp_path / "reports" / "table01_image_auroc.md")
    rows = [line for line in table.splitlines() if line.startswith("| ULSAD")]
    assert len(rows) == 1 and "95.83" in rows[0]
    assert any("seed=2" in line for line in _md(tmp_path / "reports" / "README.md").splitlines())
    assert len(report.results.failed) == 1


def test_reports_go_beside_the_results_they_come_from(tmp_path: Path) -> None:
    for name in ("demo", "sweep"):
        write_run(tmp_path / name, model="padim", **SYNTHETIC, seed=0, image_auroc=0.5 if name == "demo" else 0.7)
        assert report_main([str(tmp_path / name), "--no-figures"]) == 0
    assert "50.00" in _md(tmp_path / "demo" / "reports" / "table01_image_auroc.md")
    assert "70.00" in _md(tmp_path / "sweep" / "reports" / "table01_image_auroc.md")


def test_settings_other_than_the_papers_are_marked_where_the_number_is(tmp_path: Path) -> None:
    paper = paper_model_settings("ulsad")
    assert paper is not None and paper["feature_dim"] == 384 and paper["epochs"] == 200
    demo = {**paper, "feature_dim": 128, "epochs": 100}
    for seed in range(2):
        write_run(tmp_path / "out", model="ulsad", **SYNTHETIC, seed=seed, image_auroc=0.9, model_cfg=demo)
        write_run(tmp_path / "out", model="padim", **SYNTHETIC, seed=seed, image_auroc=0.8)
    report = build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    table = report.table("table01_image_auroc")
    assert table is not None and any("SETTINGS OTHER THAN THE PAPER'S" in w for w in table.warnings)
    assert any("feature_dim=128 (paper: 384), epochs=100 (paper: 200)" in n for n in table.notes)
    text = _md(tmp_path / "reports" / "table01_image_auroc.md")
    ulsad = next(line for line in text.splitlines() if line.startswith("| ULSAD"))
    padim = next(line for line in text.splitlines() if line.startswith("| PaDiM"))
    assert "¶" in ulsad and "¶" not in padim
    assert r"\P{}" in _md(tmp_path / "reports" / "table01_image_auroc.tex")
    efficientad = paper_model_settings("efficientad")
    assert efficientad is not None  # the paper's EfficientAD names its files: where they lie is no setting
    paths = {"teacher_weights": "/models/t.pth", "penalty_dir": "/data/imagenette2", "penalty_workers": 8}
    assert off_paper_settings("efficientad", {**efficientad, **paths}) == ""


def _runs(tmp_path: Path) -> list[RunMaps]:
    rng = np.random.default_rng(0)
    paths = ["good/0.png", "logical_anomalies/0.png"]
    preview = MapPreview(
        image=rng.integers(0, 255, (2, 3, 8, 8), dtype=np.uint8),
        mask=np.zeros((2, 8, 8), bool),
        map=rng.random((2, 8, 8)).astype(np.float16),
        path=np.array(paths),
        defect_type=np.array(["good", "logical_anomalies"]),
    )
    preview.extras = {"local": preview.map, "global": preview.map}
    samples = [Sample(Path(paths[0]), 0, "good", "good"), Sample(Path(paths[1]), 1, "logical_anomalies", "logical")]
    write_predictions(tmp_path, samples, np.array([0.25, 7.5]))
    scores = {row.path: row.score for row in read_predictions(tmp_path)}
    return [RunMaps("ULSAD", 0, False, preview, scores), RunMaps("PaDiM", 0, False, preview, None)]


def test_map_figures_have_colour_bars_readable_labels_scores_and_say_how_maps_are_scaled(tmp_path: Path) -> None:
    ulsad, padim = _runs(tmp_path)
    for fig, maps in ((maps_figure(ulsad, "Figure 6"), 3), (methods_figure([ulsad, padim], "Figure 9"), 2)):
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == maps
        labels = [ax.get_ylabel() for ax in fig.axes]
        assert "logical anomaly" in labels and "logical_anomalies" not in labels
        assert "one scale per map column" in fig.get_suptitle()
        notes = [ax.get_xlabel() for ax in fig.axes]
        assert "s = 7.5" in notes  # ULSAD's score of the logical image; PaDiM saved none: no score shown
        fig.savefig(tmp_path / "figure.png")  # draws (constrained layout with the colour bars)


def test_latex_tables_and_the_index_say_they_need_booktabs(tmp_path: Path) -> None:
    write_run(tmp_path / "out", model="padim", **SYNTHETIC, seed=0, image_auroc=0.7)
    build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    tex = _md(tmp_path / "reports" / "table01_image_auroc.tex")
    assert any(line.startswith("%") and r"\usepackage{booktabs}" in line for line in tex.splitlines()[:4])
    assert r"`\usepackage{booktabs}`" in _md(tmp_path / "reports" / "README.md")


def _multi_seed(root: Path) -> Path:
    """Eight synthetic categories, five seeds: PatchCore statistically tied with ULSAD, PaDiM
    significantly lower (tests/test_report_statistics.py), and two LOCO categories (too few to test)."""
    from tests.test_report_statistics import CATEGORIES, LOCO, SEEDS, _write

    for model in ("ulsad", "padim", "patchcore"):
        _write(root, model, "synthetic", CATEGORIES, SEEDS)
        _write(root, model, "mvtec_loco", LOCO, SEEDS)
    return root


def test_main_tables_mark_the_methods_tied_with_the_best_and_intervals_on_request(tmp_path: Path) -> None:
    from scipy import stats

    from ulsad_bench.report.statistics import bootstrap_interval

    results = _multi_seed(tmp_path / "out")
    report = build_report(results, tmp_path / "std", figures=False)
    table = report.table("table01_image_auroc")
    assert table is not None
    text = _md(tmp_path / "std" / "table01_image_auroc.md")
    row = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines() if " | " in line}
    synthetic = list(table.header).index("Synthetic") - 1
    assert "≈" in row["ULSAD"][synthetic] and "≈" in row["PatchCore"][synthetic]
    assert "≈" not in row["PaDiM"][synthetic] and "±" in row["ULSAD"][synthetic]
    assert any("Wilcoxon signed-rank" in n and "Holm" in n for n in table.notes)
    assert any(n.startswith("No significance test on MVTec") for n in table.notes)  # two categories only
    assert report.table("tests_synthetic_image_auroc") is not None and report.table("ranks_image_auroc") is not None

    ci = build_report(results, tmp_path / "ci", figures=False, spread="ci").table("table01_image_auroc")
    assert ci is not None and any("[low, high]: 95% intervals" in n for n in ci.notes)
    ok = report.results.ok
    ulsad = ok[(ok["model"] == "ulsad") & (ok["dataset"] == "synthetic")]
    seeds = {c: list(g.sort_values("seed")["image_auroc"]) for c, g in ulsad.groupby("category")}
    expected = bootstrap_interval(seeds)
    value = next(r for r in ci.rows if r[0] == "ULSAD")[list(ci.header).index("Synthetic")][0]
    assert expected is not None and value.interval == (expected.low, expected.high)
    texture = build_report(results, tmp_path / "ci", figures=False, spread="ci").table("extended_synthetic_image_auroc")
    values = list(ulsad[ulsad["category"] == "texture"].sort_values("seed")["image_auroc"])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert texture is not None
    cell = next(r for r in texture.rows if r[0] == "texture")[list(texture.header).index("ULSAD")][0]
    assert cell.interval is not None and np.allclose(cell.interval, (low, high))


def test_a_tiny_multi_seed_run_gets_every_statistics_table_and_the_cd_figure(tmp_path: Path) -> None:
    """Two models, two categories, three seeds (--min-seeds 3): intervals, paired tests with Holm-corrected
    p (which say that two categories cannot reach α), ranks and the critical-difference diagram."""
    from scipy import stats

    rng = np.random.default_rng(3)
    for model, base in (("ulsad", 0.9), ("padim", 0.8)):
        for category in ("texture", "pinbox"):
            for seed in range(3):
                auroc = base + 0.01 * rng.standard_normal()
                write_run(tmp_path / "out", model=model, dataset="synthetic", category=category, seed=seed,
                          image_auroc=auroc, folder=f"synthetic/{category}/{model}/seed={seed}")  # fmt: skip
    report = build_report(tmp_path / "out", tmp_path / "reports", min_seeds=3)
    for key in ("ci_synthetic_image_auroc", "tests_synthetic_image_auroc", "ranks_image_auroc"):
        assert report.table(key) is not None and (tmp_path / "reports" / f"{key}.md").is_file()
    assert (tmp_path / "reports" / "figures" / "cd_synthetic_image_auroc.png").stat().st_size > 1000
    index = _md(tmp_path / "reports" / "README.md")
    assert "## Statistics" in index and "(ci_synthetic_image_auroc.md)" in index and "(tests_synthetic" in index
    assert "(figures/cd_synthetic_image_auroc.png)" in index
    tests = report.table("tests_synthetic_image_auroc")
    assert tests is not None
    row = next(r for r in tests.rows if r[0] == "ULSAD vs PaDiM")
    ok = report.results.ok
    means = ok.pivot_table(index="category", columns="model", values="image_auroc", aggfunc="mean")
    p = stats.wilcoxon(means["ulsad"] - means["padim"], zero_method="zsplit", method="exact").pvalue
    assert row[4].startswith(f"{p:.4f} (too few categories") and row[5] == f"{p:.4f}" and row[6] == "no"
    assert build_report(tmp_path / "out", tmp_path / "strict").table("tests_synthetic_image_auroc").rows == []


def test_no_tie_mark_when_the_bold_value_is_a_method_left_out_of_the_tests(tmp_path: Path) -> None:
    from tests.test_report_statistics import CATEGORIES

    for model, base, seeds in (("ulsad", 0.95, 5), ("padim", 0.949, 5), ("patchcore", 0.988, 3)):
        for i, category in enumerate(CATEGORIES):
            for seed in range(seeds):
                auroc = base + 0.001 * ((i + seed) % 3)
                write_run(tmp_path / "out", model=model, dataset="synthetic", category=category, seed=seed,
                          image_auroc=auroc, folder=f"synthetic/{category}/{model}/seed={seed}")  # fmt: skip
    table = build_report(tmp_path / "out", tmp_path / "reports", figures=False).table("table01_image_auroc")
    assert table is not None
    text = _md(tmp_path / "reports" / "table01_image_auroc.md")
    assert "**98." in text and "≈" not in text  # PatchCore (3 seeds) is bold but untested: no claim of a tie
    assert any(n.startswith("No significance test on Synthetic") for n in table.notes)
