"""Figures 6-9 from the hand-made records of tests/test_report.py (PNG and PDF written, right panels)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from tests.test_report import write_results
from ulsad_bench.artifacts import MapPreview
from ulsad_bench.report import build_report, load_results
from ulsad_bench.report.figures import RunMaps, choose_images, maps_figure, methods_figure
from ulsad_bench.report.studies import quantile_study


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    results = write_results(tmp_path_factory.mktemp("results"))
    return build_report(results, tmp_path_factory.mktemp("reports"), paper=True)


def test_every_figure_written_as_png_and_pdf(report) -> None:
    stems = [stem for stem, _ in report.figures]
    assert stems == [
        "fig6_mvtec_loco_breakfast_box_ulsad",
        "fig9_mvtec_loco_breakfast_box",
        "fig6_mvtec_loco_juice_bottle_ulsad",
        "fig9_mvtec_loco_juice_bottle",
        "fig7_backbones_mvtec_loco",
        "fig8_quantiles_mvtec_loco",
        *(stem for stem in stems if stem.startswith("cd_")),  # the statistics' figures (test_report_statistics)
        "spread_mvtec_loco",
        "spread_synthetic",
    ]
    for stem in stems:
        png = report.out / "figures" / f"{stem}.png"
        pdf = report.out / "figures" / f"{stem}.pdf"
        assert imread(png).shape[0] > 100
        assert pdf.read_bytes().startswith(b"%PDF")
    index = (report.out / "README.md").read_text()
    assert "[fig8_quantiles_mvtec_loco](figures/fig8_quantiles_mvtec_loco.png)" in index


def test_choose_images_takes_the_first_of_each_anomalous_type() -> None:
    types = np.array(["good", "good", "logical", "logical", "structural"])
    assert choose_images(types) == [2, 4]
    assert choose_images(types, per_defect=2) == [2, 3, 4]
    assert choose_images(np.array(["good", "good"])) == [0]


def _run(label: str, with_branches: bool, paths: list[str]) -> RunMaps:
    rng = np.random.default_rng(0)
    preview = MapPreview(
        image=rng.integers(0, 255, (len(paths), 3, 8, 8), dtype=np.uint8),
        mask=np.ones((len(paths), 8, 8), bool),
        map=rng.random((len(paths), 8, 8)).astype(np.float16),
        path=np.array(paths),
        defect_type=np.array(["logical"] * len(paths)),
    )
    if with_branches:
        preview.extras = {"local": preview.map, "global": preview.map}
    return RunMaps(label, 0, random_init=True, preview=preview)


def test_map_figures_columns() -> None:
    ulsad = _run("ULSAD", True, ["a.png", "b.png"])
    fig = maps_figure(ulsad, "Figure 6", per_defect=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == ["Image", "Ground truth", "Local", "Global", "Combined"]
    assert len(fig.axes) == 10 + 3  # 2 rows x 5 panels, and a colour bar under each map column
    assert "RANDOM-INIT BACKBONE" in fig.get_suptitle()
    padim = _run("PaDiM", False, ["b.png"])
    fig = methods_figure([ulsad, padim], "Figure 9", per_defect=2)
    assert [ax.get_title() for ax in fig.axes][:4] == ["Image", "Ground truth", "ULSAD", "PaDiM"]
    # a.png has no PaDiM map: that panel says so
    assert [t.get_text() for t in fig.axes[3].texts] == ["n/a"]


def test_quantile_study_found_from_config_values(report) -> None:
    study = quantile_study(load_results(report.results.root).ok, "mvtec_loco")
    assert sorted(arm.value for arm in study.arms) == [(0.5, 0.99), (0.9, 0.995)]
