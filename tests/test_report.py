"""Reports from hand-made records: numbers, ± values, best / second marks, warnings and notes.

The records below are written by :func:`write_results` with values chosen so that every
aggregate is known exactly (percent, sample std over seeds):

MVTec LOCO, categories breakfast_box (bb) and juice_bottle (jb), image AUROC:
- ULSAD, seeds 0-4: bb 80, 82, 84, 86, 88 -> 84.00 ± 3.16; jb 90 x5 -> 90.00 ± 0.00;
  per-seed means 85..89 -> 87.00 ± 1.58.
- PaDiM, seeds 0-2: bb 70, 72, 74 -> 72.00 ± 2.00; jb 96 x3 -> 96.00 ± 0.00; mean 84.00 ± 1.00 (†3).
- PatchCore, seeds 0-3 ok, seed 4 failed: bb 85 -> 85.00 ± 0.00; jb 89 -> 89.00 ± 0.00;
  mean 87.00 ± 0.00 (†4), a tie with ULSAD.
Synthetic (random-init backbone, validation on test images): ULSAD on pinbox, 2 seeds; PaDiM
on texture with two different configs at seed 0 (a conflict).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ulsad_bench.records import config_hash, write_record
from ulsad_bench.report import build_report, load_results, main
from ulsad_bench.report.aggregate import dataset_stat, stat_of
from ulsad_bench.report.render_latex import escape as tex_escape
from ulsad_bench.report.render_markdown import render_markdown
from ulsad_bench.report.table import Value, mark_best
from ulsad_bench.report.tables import Context, all_tables

LOCO = ["breakfast_box", "juice_bottle"]
SYNTHETIC = ["texture", "pinbox"]
ULSAD_DEFAULTS = {"lambda_l": 0.5, "lambda_g": 0.5, "loss_pg": "attention", "loss_lg": True, "branch": "both"}
ULSAD_DEFAULTS |= {"alpha": 0.9, "beta": 0.995}


def write_run(
    root: Path,
    *,
    model: str,
    dataset: str,
    category: str,
    seed: int,
    image_auroc: float,
    pixel_auroc: float = 0.9,
    aupro: float = 0.8,
    variant: str | None = None,
    backbone: str = "wide_resnet50_2",
    weights: str = "imagenet",
    model_cfg: dict[str, Any] | None = None,
    efficiency: dict[str, Any] | None = None,
    by_kind: dict[str, dict[str, float]] | None = None,
    val_source: str = "validation folder",
    status: str = "ok",
    folder: str | None = None,
    maps: bool = False,
) -> Path:
    """One record.json (and optionally maps.npz) as the runner writes them."""
    categories = LOCO if dataset == "mvtec_loco" else SYNTHETIC
    model_cfg = {**(ULSAD_DEFAULTS if model == "ulsad" else {}), **(model_cfg or {})}
    config = {
        "backbone": {"name": backbone, "weights": weights, "random_init_seed": 0},
        "dataset": {"name": dataset, "category": category, "categories": categories, "root": "/data"},
        "model": {"name": model, **model_cfg},
        "seed": seed,
        "variant": variant,
        "output_root": str(root),
    }
    run_dir = root / (
        folder or f"{dataset}/{category}/{model}{'-' + variant if variant else ''}/{backbone}/seed={seed}"
    )
    record: dict[str, Any] = {
        "status": status,
        "model": model,
        "variant": variant,
        "dataset": dataset,
        "category": category,
        "seed": seed,
        "backbone": backbone,
        "precision": "fp32",
        "config_hash": config_hash(config),
        "config": config,
        "weights": {"policy": weights, "random_init_seed": 0}
        if weights == "random"
        else {"policy": weights, "file": "w.pth", "sha256": "ab" * 32},
        "finished": f"2026-01-01T00:00:{seed:02d}+00:00",
    }
    if status == "ok":
        record |= {
            "val_source": val_source,
            "metrics": {"image_auroc": image_auroc, "pixel_auroc": pixel_auroc, "aupro": aupro},
            "metrics_by_kind": by_kind or {},
            "timing": {"fit_s": 1.0, "predict_s": 1.0},
            "device": "cpu",
        }
        if efficiency is not None:
            record["efficiency"] = efficiency
    else:
        record["error"] = "RuntimeError: NaN loss at epoch 3"
    write_record(run_dir, record)
    if maps:
        rng = np.random.default_rng(seed)
        payload = {
            "image": rng.integers(0, 255, (3, 3, 16, 16), dtype=np.uint8),
            "mask": np.stack([np.zeros((16, 16), bool), *[np.eye(16, dtype=bool)] * 2]),
            "map": rng.random((3, 16, 16)).astype(np.float16),
            "path": np.array([f"{category}/good/0.png", f"{category}/logical/0.png", f"{category}/structural/0.png"]),
            "defect_type": np.array(["good", "logical_anomalies", "structural_anomalies"]),
        }
        if model == "ulsad":
            payload |= {"map_local": payload["map"], "map_global": payload["map"][::-1].copy()}
        np.savez_compressed(run_dir / "maps.npz", **payload)
    return run_dir


GPU = {
    "throughput_img_s": 33.0,
    "peak_memory_mb": 2048.0,
    "memory_measure": "cuda_max_allocated",
    "device": "H200",
    "latency_ms": 8.0,
    "throughput_batch1_img_s": 125.0,
}
CPU = {
    "throughput_img_s": 5.0,
    "peak_memory_mb": 1536.0,
    "memory_measure": "cpu_tensor_peak",
    "device": "cpu (2 threads)",
    "latency_ms": 250.0,
    "throughput_batch1_img_s": 4.0,
}
KINDS = {"logical": {"image_auroc": 0.7, "pixel_auroc": 0.6, "aupro": 0.5}}
KINDS["structural"] = {"image_auroc": 0.95, "pixel_auroc": 0.9, "aupro": 0.85}


def write_results(root: Path) -> Path:
    """The hand-made results folder described in the module docstring."""
    for seed in range(5):
        for category, value in (("breakfast_box", 0.80 + 0.02 * seed), ("juice_bottle", 0.90)):
            write_run(
                root,
                model="ulsad",
                dataset="mvtec_loco",
                category=category,
                seed=seed,
                image_auroc=value,
                pixel_auroc=0.80,
                aupro=0.70 + 0.01 * seed,
                efficiency=GPU,
                by_kind=KINDS,
                maps=seed == 0,
            )
    for seed in range(3):
        for category, value in (("breakfast_box", 0.70 + 0.02 * seed), ("juice_bottle", 0.96)):
            write_run(
                root,
                model="padim",
                dataset="mvtec_loco",
                category=category,
                seed=seed,
                image_auroc=value,
                pixel_auroc=0.85,
                aupro=0.60,
                efficiency=CPU,
                by_kind=KINDS,
                maps=seed == 0,
            )
    for seed in range(5):
        for category, value in (("breakfast_box", 0.85), ("juice_bottle", 0.89)):
            write_run(
                root,
                model="patchcore",
                dataset="mvtec_loco",
                category=category,
                seed=seed,
                image_auroc=value,
                pixel_auroc=0.80,
                aupro=0.75,
                by_kind=KINDS,
                status="failed" if seed == 4 else "ok",
            )
    # a copy of a finished job: a duplicate, used once
    shutil.copytree(root / "mvtec_loco/breakfast_box/patchcore/wide_resnet50_2/seed=0", root / "copy/seed=0")
    # Table 3 rows 1 and 4 (row 10 is the default run above), one seed each
    row1 = {"lambda_l": 0.0, "lambda_g": 0.0, "loss_pg": "none", "loss_lg": False, "branch": "local"}
    row4 = {"lambda_l": 0.0, "lambda_g": 0.0, "loss_pg": "l2", "loss_lg": True, "branch": "both"}
    for variant, cfg, value in (("t3-row1", row1, 0.70), ("t3-row4", row4, 0.75)):
        for category in LOCO:
            write_run(root, model="ulsad", dataset="mvtec_loco", category=category, seed=0, image_auroc=value,
                      variant=variant, model_cfg=cfg)  # fmt: skip
    # Table 30: one more backbone; Figure 8: one more (alpha, beta)
    for category in LOCO:
        write_run(root, model="ulsad", dataset="mvtec_loco", category=category, seed=0, image_auroc=0.78,
                  variant="bb-resnet50", backbone="resnet50")  # fmt: skip
        write_run(root, model="ulsad", dataset="mvtec_loco", category=category, seed=0, image_auroc=0.81,
                  variant="fig8-a0.5-b0.99", model_cfg={"alpha": 0.5, "beta": 0.99})  # fmt: skip
    # a baseline's variant run: in no table, listed in the index
    write_run(root, model="padim", dataset="mvtec_loco", category="breakfast_box", seed=0, image_auroc=0.5,
              variant="tuned", model_cfg={"n_features": 10})  # fmt: skip
    # synthetic: random-init backbone, validation on test images, and a conflict
    for seed in range(2):
        write_run(root, model="ulsad", dataset="synthetic", category="pinbox", seed=seed, image_auroc=0.6 + 0.1 * seed,
                  backbone="resnet18", weights="random", val_source="test_set (normal TEST images)")  # fmt: skip
    for n_features in (50, 60):
        write_run(root, model="padim", dataset="synthetic", category="texture", seed=0, image_auroc=0.9,
                  backbone="resnet18", weights="random", model_cfg={"n_features": n_features},
                  folder=f"synthetic/texture/padim/n={n_features}/seed=0")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def report(results_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_report(results_dir, tmp_path_factory.mktemp("reports"), paper=True, figures=False)


def md_row(path: Path, label: str) -> list[str]:
    """The cells of the Markdown row whose first cell is ``label``."""
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in {path.name}")


def test_aggregates_use_sample_std_and_per_seed_dataset_means(results_dir: Path) -> None:
    assert stat_of([80, 82, 84, 86, 88]).std == pytest.approx(np.sqrt(10))
    assert stat_of([84.0]).std is None
    ok = load_results(results_dir).ok
    ulsad = ok[(ok["model"] == "ulsad") & (ok["variant"] == "") & (ok["dataset"] == "mvtec_loco")]
    stat = dataset_stat(ulsad, "image_auroc", LOCO)
    assert (round(stat.mean, 6), round(stat.std, 6), stat.n) == (87.0, round(np.sqrt(2.5), 6), 5)


def test_load_sets_apart_failed_duplicate_and_conflicting_records(results_dir: Path) -> None:
    results = load_results(results_dir)
    assert len(results.failed) == 2  # PatchCore seed 4 in both categories
    assert set(results.failed["error"]) == {"RuntimeError: NaN loss at epoch 3"}
    assert len(results.duplicates) == 1
    (conflict,) = results.conflicts
    assert (conflict["dataset"], conflict["category"], conflict["model"]) == ("synthetic", "texture", "padim")
    assert "model.n_features: 50 vs 60" in conflict["detail"]
    assert (results.records["excluded"] == "conflict").sum() == 2


def test_table1_numbers_marks_and_tie(report) -> None:
    path = report.out / "table01_image_auroc.md"
    # columns: MVTec-LOCO, Synthetic; PatchCore ties ULSAD at 87.00: both bold, PaDiM second
    assert md_row(path, "PatchCore") == ["**87.00 ± 0.00**<sup>†4</sup>", "—"]
    assert md_row(path, "PaDiM") == ["<u>84.00 ± 1.00</u><sup>†3</sup>", "—"]
    assert md_row(path, "ULSAD") == ["**87.00 ± 1.58**", "65.00 ± 7.07<sup>†2 ‡</sup>"]
    text = path.read_text()
    assert "RANDOM-INIT BACKBONE: not comparable to the paper" in text
    assert "VALIDATION ON TEST IMAGES" in text
    assert "FEWER THAN 5 SEEDS" in text
    assert "PatchCore / MVTec-LOCO seed 4: RuntimeError: NaN loss at epoch 3" in text
    assert "Missing (—), no record: PatchCore / Synthetic." in text
    assert "Missing (—), conflicting records left out (see Conflicts): PaDiM / Synthetic." in text
    assert "PatchCore: Wide-ResNet50-2 (imagenet) on MVTec-LOCO;" in text
    assert "ULSAD: Wide-ResNet50-2 (imagenet) on MVTec-LOCO, ResNet18 (random) on Synthetic." in text


def test_table2_marks_each_metric_separately(report) -> None:
    path = report.out / "table02_pixel_auroc_aupro.md"
    assert md_row(path, "PatchCore")[0] == "<u>80.00 ± 0.00</u><sup>†4</sup> \\| **75.00 ± 0.00**<sup>†4</sup>"
    assert md_row(path, "PaDiM")[0] == "**85.00 ± 0.00**<sup>†3</sup> \\| 60.00 ± 0.00<sup>†3</sup>"
    assert md_row(path, "ULSAD")[0] == "<u>80.00 ± 0.00</u> \\| <u>72.00 ± 1.58</u>"


def test_extended_table_per_category_rows(report) -> None:
    path = report.out / "table10_mvtec_loco_image_auroc.md"
    header = md_row(path, "Category")
    assert header == ["PaDiM", "PatchCore", "ULSAD"]  # the paper's column order
    assert md_row(path, "breakfast_box") == [
        "72.00 ± 2.00<sup>†3</sup>",
        "**85.00 ± 0.00**<sup>†4</sup>",
        "<u>84.00 ± 3.16</u>",
    ]
    assert md_row(path, "juice_bottle") == [
        "**96.00 ± 0.00**<sup>†3</sup>",
        "89.00 ± 0.00<sup>†4</sup>",
        "<u>90.00 ± 0.00</u>",
    ]
    assert md_row(path, "Mean") == [
        "<u>84.00 ± 1.00</u><sup>†3</sup>",
        "**87.00 ± 0.00**<sup>†4</sup>",
        "**87.00 ± 1.58**",
    ]
    assert "RANDOM-INIT" not in path.read_text()


def test_kind_tables_and_conflict_cell(report) -> None:
    structural = report.out / "table22_mvtec_loco_structural_image_auroc.md"
    assert md_row(structural, "Mean")[2] == "**95.00 ± 0.00**"
    synthetic = (report.out / "extended_synthetic_image_auroc.md").read_text()
    assert "CONFLICTING RECORDS LEFT OUT" in synthetic
    assert "conflicting records left out (see Conflicts): PaDiM / texture" in synthetic
    assert "model.n_features: 50 vs 60" in synthetic


def test_table4_efficiency_units_and_marks(report) -> None:
    path = report.out / "table04_efficiency_mvtec_loco.md"
    assert md_row(path, "Throughput (img/s) ↑") == ["<u>5.00 ± 0.00</u><sup>†3</sup>", "—", "**33.00 ± 0.00**"]
    # memory: lower is better; PaDiM's is measured on CPU (§), 1536 MiB = 1.50 GB
    assert md_row(path, "Peak memory (GB) ↓") == ["**1.50 ± 0.00**<sup>†3 §</sup>", "—", "<u>2.00 ± 0.00</u>"]
    # batch-1 latency (lower is better) and throughput, from the records' efficiency
    assert md_row(path, "Latency, batch 1 (ms) ↓") == ["<u>250.00 ± 0.00</u><sup>†3</sup>", "—", "**8.00 ± 0.00**"]
    assert md_row(path, "Throughput, batch 1 (img/s) ↑")[2] == "**125.00 ± 0.00**"
    text = path.read_text()
    assert "no efficiency measurement in the records: PatchCore / MVTec-LOCO" in text
    assert "MEMORY MEASURED ON CPU" in text


def test_table3_rows_from_config_values(report) -> None:
    path = report.out / "table03_ablation_mvtec_loco.md"
    assert md_row(path, "1")[:5] == ["0.0", "-", "-", "-", "-"]
    assert md_row(path, "4")[:5] == ["0.0", "0.0", "✓", "✓", "-"]
    assert md_row(path, "10")[:5] == ["0.5", "0.5", "✓", "-", "✓"]
    assert md_row(path, "10")[5].startswith("**87.00 ± 1.58**")
    assert md_row(path, "1")[5].startswith("70.00<sup>†1</sup>")
    text = path.read_text()
    assert "not shown, same setting: variant fig8-a0.5-b0.99" not in text  # other alpha/beta: another context
    compare = report.out / "table03_ablation_mvtec_loco_vs_paper.md"
    assert md_row(compare, "10 (paper)")[5] == "84.10 ± 0.86 \\| 80.06 ± 0.20 \\| 73.73 ± 0.35"
    assert md_row(compare, "10 Δ")[5] == "+2.90 \\| -0.06 \\| -1.73"
    assert md_row(compare, "7 (paper)")[5] == "80.50 \\| 81.85 \\| 77.35"  # a paper-only row


def test_table30_backbones(report) -> None:
    path = report.out / "table30_backbones_mvtec_loco.md"
    assert md_row(path, "Category") == ["ResNet50", "Wide-ResNet50-2"]
    # I-AUROC 78 vs 87 (second), pixel AUROC 90 vs 80 (best), AUPRO 80 vs 72 (best)
    assert md_row(path, "Mean")[0] == "<u>78.00</u><sup>†1</sup> \\| **90.00**<sup>†1</sup> \\| **80.00**<sup>†1</sup>"
    assert "Wide-ResNet50-2: variant (none) (10 records); not shown, same setting: variant fig8" not in path.read_text()


def test_paper_comparison_values_and_differences(report) -> None:
    path = report.out / "table01_image_auroc_vs_paper.md"
    assert md_row(path, "ULSAD (paper)")[3] == "84.10 ± 0.86"  # MVTec-LOCO column
    assert md_row(path, "ULSAD Δ")[3] == "+2.90"
    assert md_row(path, "CFLOW (paper)")[:5] == ["93.57", "87.11", "94.47", "73.62", "87.77"]
    assert "**" not in "".join(md_row(path, "ULSAD"))  # no best marks in comparison tables
    table10 = report.out / "table10_mvtec_loco_image_auroc_vs_paper.md"
    assert md_row(table10, "Category")[-3:] == ["ULSAD", "ULSAD (paper)", "ULSAD Δ"]
    assert md_row(table10, "breakfast_box")[-2:] == ["83.54 ± 0.23", "+0.46"]


def test_index_lists_tables_failed_and_conflicts(report) -> None:
    index = (report.out / "README.md").read_text()
    assert "[Table 1: Average detection performance: image AUROC (%)](table01_image_auroc.md)" in index
    assert index.count("RuntimeError: NaN loss at epoch 3") == 2
    assert "model.n_features: 50 vs 60" in index
    assert "padim / mvtec_loco / variant tuned / wide_resnet50_2: 1 records" in index
    assert (report.out / "records.csv").is_file()
    keys = {t.key for t in report.tables}
    assert {"table01_image_auroc", "table02_pixel_auroc_aupro", "table03_ablation_mvtec_loco"} <= keys
    assert {"table04_efficiency_mvtec_loco", "table12_mvtec_loco_aupro", "table27_mvtec_loco_logical_aupro"} <= keys


def test_mark_best_ties_and_lower_is_better() -> None:
    values = [Value(90.001), Value(89.999), Value(80.0), Value(70.0), Value(None)]
    mark_best(values)
    assert [v.rank for v in values] == [1, 1, 2, None, None]  # 90.00 twice as printed
    memory = [Value(2.17), Value(6.8), Value(1.92)]
    mark_best(memory, higher_is_better=False)
    assert [v.rank for v in memory] == [2, None, 1]
    single = [Value(50.0)]
    mark_best(single)
    assert single[0].rank is None
    partial = [Value(99.0, ranked=False), Value(90.0), Value(80.0)]  # a partial mean (‡) is not ranked
    mark_best(partial)
    assert [v.rank for v in partial] == [None, 1, 2]


def test_latex_escapes_and_renders_marks(report) -> None:
    assert tex_escape("metal_nut 50% & DRÆM ± λ") == r"metal\_nut 50\% \& DR\AE{}M $\pm$ $\lambda$"
    text = (report.out / "table01_image_auroc.tex").read_text()
    assert r"\textbf{87.00 $\pm$ 0.00}\textsuperscript{$\dagger$4}" in text
    assert r"\underline{84.00 $\pm$ 1.00}\textsuperscript{$\dagger$3}" in text
    assert r"\toprule" in text and r"\bottomrule" in text
    assert r"\textbf{RANDOM-INIT BACKBONE: not comparable to the paper}" in text


TEX_ENGINE = next((e for e in ("pdflatex", "lualatex", "xelatex") if shutil.which(e)), None)


@pytest.mark.skipif(TEX_ENGINE is None, reason="no TeX engine (pdflatex, lualatex, xelatex) on this machine")
def test_latex_compiles(report, tmp_path: Path) -> None:
    inputs = "\n".join(rf"\input{{{p.resolve()}}}\clearpage" for p in sorted(report.out.glob("*.tex")))
    document = tmp_path / "all.tex"
    document.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + inputs + "\n\\end{document}\n"
    )
    done = subprocess.run(
        [TEX_ENGINE, "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "all.pdf").is_file()


def test_cli_prints_table1_and_failed_records(results_dir: Path, tmp_path: Path, capsys) -> None:
    assert main([str(results_dir), "--out", str(tmp_path / "reports"), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "## Table 1: Average detection performance: image AUROC (%)" in printed
    assert "| ULSAD | **87.00 ± 1.58** |" in printed
    assert "Failed records (2, not averaged in):" in printed
    assert "Conflicts (1, left out):" in printed
    assert not (tmp_path / "reports" / "table01_image_auroc_vs_paper.md").exists()


def test_rerun_removes_only_its_own_stale_files(results_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    build_report(results_dir, out, paper=True, figures=False)
    (out / "efficiency.md").write_text("written by make bench\n")
    build_report(results_dir, out, paper=False, figures=False)
    assert not (out / "table01_image_auroc_vs_paper.md").exists()
    assert (out / "efficiency.md").exists() and (out / "table01_image_auroc.md").exists()


def test_every_table_renders_in_both_formats(results_dir: Path) -> None:
    ctx = Context(load_results(results_dir))
    for table in all_tables(ctx) + all_tables(ctx, compare=True):
        markdown = render_markdown(table)
        widths = {line.count(" | ") for line in markdown.splitlines() if line.startswith("| ")}
        assert len(widths) == 1, table.key  # every row has the header's number of cells


def test_markdown_escapes_markup_in_names() -> None:
    """A name with Markdown-active characters renders as itself (parsed as GitHub does)."""
    from markdown_it import MarkdownIt

    from ulsad_bench.report.table import Table

    nasty = "a*b*_c_<i>x</i>|[l](u) `t` ~~s~~ &amp; $m$ \\ breakfast_box"
    table = Table(
        key="t",
        title=f"Table: {nasty}",
        header=["Category", ("I-AUROC | AUPRO", "x")],
        rows=[[nasty, [Value(90.0), Value(80.0)]]],
        warnings=[f"warning about {nasty}"],
        notes=[f"note on {nasty}"],
    )
    text = render_markdown(table)
    tokens = MarkdownIt("commonmark").enable("table").enable("strikethrough").parse(text)
    inline = [t for t in tokens if t.type == "inline"]
    children = [c for t in inline for c in (t.children or [])]
    assert not [c.type for c in children if c.type not in ("text", "softbreak", "strong_open", "strong_close")]
    plain = ["".join(c.content for c in (t.children or []) if c.type == "text") for t in inline]
    assert f"Table: {nasty}" in plain and nasty in plain
    assert f"warning about {nasty}" in plain and f"note on {nasty}" in plain
    assert "I-AUROC | AUPRO" in plain  # an authored label stays one cell: its pipe is escaped
    assert "breakfast_box" in text  # intraword underscores need no escape and get none


def test_all_metrics_and_spro_tables(tmp_path: Path) -> None:
    """The two tables beyond the paper, from records with every metric (values known exactly)."""
    extra = {"image_ap": 0.6, "image_f1_max": 0.7, "pixel_ap": 0.3, "pixel_f1_max": 0.4}
    for seed in range(2):
        for category in LOCO:
            kinds = {
                "logical": {**KINDS["logical"], **extra, "spro_0.05": 0.2 + 0.1 * seed, "spro_0.3": 0.5},
                "structural": {**KINDS["structural"], **extra, "spro_0.05": 0.4, "spro_0.3": 0.7},
            }
            run = write_run(
                tmp_path / "out",
                model="ulsad",
                dataset="mvtec_loco",
                category=category,
                seed=seed,
                image_auroc=0.9,
                by_kind=kinds,
            )
            record = json.loads((run / "record.json").read_text())
            record["metrics"] |= {**extra, "image_ap": 0.5 + 0.1 * seed}
            write_record(run, record)  # a job that measured these, sealed as a job seals its record
    build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    header = md_row(tmp_path / "reports" / "metrics_mvtec_loco.md", "Method")
    assert header == ["I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO"]
    row = md_row(tmp_path / "reports" / "metrics_mvtec_loco.md", "ULSAD")
    assert row[:3] == ["90.00 ± 0.00<sup>†2</sup>", "55.00 ± 7.07<sup>†2</sup>", "70.00 ± 0.00<sup>†2</sup>"]
    spro = md_row(tmp_path / "reports" / "spro_mvtec_loco.md", "ULSAD")
    # FPR <= 0.05: logical 20 / 30 over the seeds -> 25.00 ± 7.07; structural 40; mean (l + s) / 2 = 32.50 ± 3.54
    assert spro[1] == "25.00 ± 7.07<sup>†2</sup> \\| 40.00 ± 0.00<sup>†2</sup> \\| 32.50 ± 3.54<sup>†2</sup>"
    assert spro[0] == "— \\| — \\| —"  # FPR <= 0.01 not in these records
    text = (tmp_path / "reports" / "spro_mvtec_loco.md").read_text()
    assert "not the official sPRO" not in text and "union of the masks instead" in text
