"""The ``protocol_gap`` report: how much the ULSAD authors' evaluation protocol moves the numbers.

For each dataset and model with records of both ``protocol=clean`` and ``protocol=authors``
(:mod:`ulsad_bench.protocol`), table ``protocol_gap_<dataset>_<model>``: per category, on the seeds
both protocols ran, the clean and the authors' I-AUROC | P-AUROC | AUPRO, their gap (authors -
clean, mean ± std over seeds of the per-seed difference) and the gap each part of the protocol
makes on its own (``protocol.select_on_test=true`` etc. alone, against clean on common seeds;
"—" when that part was not run alone). The Mean row averages the category means of the
categories with both protocols. Figure ``protocol_curve_<dataset>_<model>``: the test image
AUROC at every evaluated epoch of the test-selected runs, the chosen epoch marked, against the
clean run's final value: how much of the "best epoch" is noise.

``python run.py -m +experiment=protocol_gap`` runs what the report needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..protocol import SWITCHES
from .naming import dataset_label, method_name
from .table import Table, Value

METRICS = ("image_auroc", "pixel_auroc", "aupro")
METRIC_PARTS = "I-AUROC | P-AUROC | AUPRO"
CURVE_CATEGORIES = 4


def _seed_means(frame: pd.DataFrame, metric: str) -> dict[int, float]:
    return {int(seed): float(group[metric].mean()) for seed, group in frame.groupby("seed")}


def _level(frame: pd.DataFrame, metric: str) -> Value:
    values = frame[metric].dropna().to_numpy(dtype=float)
    if values.size == 0:
        return Value(None)
    return Value(float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else None)


def _gap(arm: pd.DataFrame, clean: pd.DataFrame, metric: str) -> Value:
    """authors - clean (or one part - clean) over their common seeds."""
    a, c = _seed_means(arm.dropna(subset=[metric]), metric), _seed_means(clean.dropna(subset=[metric]), metric)
    common = sorted(set(a) & set(c))
    if not common:
        return Value(None, signed=True)
    diffs = np.array([a[s] - c[s] for s in common])
    value = Value(float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else None, signed=True)
    if len(common) < max(len(a), len(c)):
        value.marks.append(f"{len(common)} common seeds")
    return value


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, model) pairs with records of both protocols."""
    out = []
    for (dataset, model), group in frame.groupby(["dataset", "model"]):
        if {"clean", "authors"} <= set(group["protocol"]):
            out.append((str(dataset), str(model)))
    return out


def _common(group: pd.DataFrame, tag: str) -> pd.DataFrame:
    return group[group["protocol"] == tag]


def protocol_gap_tables(main: pd.DataFrame) -> list[Table]:
    """One table per dataset and model that ran both protocols (see the module docstring)."""
    tables = []
    for dataset, model in _pairs(main):
        frame = main[(main["dataset"] == dataset) & (main["model"] == model)]
        header = ["Category", "Clean", "Authors", "Gap", *[f"Δ {s} alone" for s in SWITCHES]]
        rows: list[list[Any]] = []
        sums: dict[str, list[list[float]]] = {}
        for category, group in frame.groupby("category", sort=True):
            clean, authors = _common(group, "clean"), _common(group, "authors")
            if clean.empty or authors.empty:
                continue
            row: list[Any] = [str(category)]
            columns = [
                [_level(clean, m) for m in METRICS],
                [_level(authors, m) for m in METRICS],
                [_gap(authors, clean, m) for m in METRICS],
                *[[_gap(_common(group, s), clean, m) for m in METRICS] for s in SWITCHES],
            ]
            for j, cell in enumerate(columns):
                sums.setdefault(header[j + 1], [[] for _ in METRICS])
                for k, value in enumerate(cell):
                    if value.mean is not None:
                        sums[header[j + 1]][k].append(value.mean)
            rows.append(row + columns)
        if not rows:
            continue
        n = len(rows)
        mean_row: list[Any] = ["Mean"]
        for j, name in enumerate(header[1:]):
            parts = []
            for values in sums[name]:
                value = Value(float(np.mean(values)) if values else None, signed=j >= 2)
                if values and len(values) < n:
                    value.marks.append(f"{len(values)} of {n} categories")
                parts.append(value)
            mean_row.append(parts)
        rows.append(mean_row)
        curve_note = f"Figure protocol_curve_{dataset}_{model}: test AUROC per evaluated epoch."
        tables.append(
            Table(
                key=f"protocol_gap_{dataset}_{model}",
                title=(
                    f"Protocol gap, {method_name(model)} on {dataset_label(dataset)}: {METRIC_PARTS} (%) under the "
                    "clean protocol and the ULSAD authors' protocol"
                ),
                header=header,
                rows=rows,
                warnings=["AUTHORS' PROTOCOL numbers are TEST-SELECTED: for comparison with published tables only"],
                notes=[
                    "Clean: fixed epochs, calibration on a validation split, every test image scored. Authors: the "
                    "epoch with the best test image AUROC (select_on_test), the last incomplete test batch of the "
                    "path-sorted test set never scored (drop_last_test), calibration on normal test images "
                    "(quantiles_from_test); see ulsad_bench/protocol.py for the authors' code, file and line.",
                    "Gap = authors - clean, mean ± std over seeds of the per-seed difference (common seeds only); "
                    "Δ <part> alone = that part switched on alone - clean; — = not run. The parts need not add up "
                    "to the gap: they interact (e.g. the test images dropped change what selection sees).",
                    "Mean: mean over the categories of their means (no ±).",
                    curve_note,
                ],
                rules={len(rows) - 1},
            )
        )
    return tables


def _curve_frame(main: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    frame = main[(main["dataset"] == dataset) & (main["model"] == model)]
    return frame[[len(c) > 1 for c in frame["selection_curve"]]]


def curve_figure(main: pd.DataFrame, dataset: str, model: str) -> Figure | None:
    """Test image AUROC per evaluated epoch of the test-selected runs (a few categories)."""
    runs = _curve_frame(main, dataset, model)
    categories = sorted(set(runs["category"]))[:CURVE_CATEGORIES]
    if not categories:
        return None
    clean = main[(main["dataset"] == dataset) & (main["model"] == model) & (main["protocol"] == "clean")]
    fig = Figure(figsize=(3.2 * len(categories), 2.8))
    axes = fig.subplots(1, len(categories), squeeze=False)[0]
    for ax, category in zip(axes, categories, strict=True):
        for row in runs[runs["category"] == category].itertuples():
            epochs = [e for e, _ in row.selection_curve]
            values = [100 * v for _, v in row.selection_curve]
            (line,) = ax.plot(epochs, values, lw=1, label=f"{row.protocol} seed {row.seed}")
            if row.selected_epoch in epochs:
                chosen = epochs.index(row.selected_epoch)
                ax.plot([epochs[chosen]], [values[chosen]], "o", color=line.get_color(), ms=4)
        final = clean.loc[clean["category"] == category, "image_auroc"].dropna()
        if not final.empty:
            ax.axhline(float(final.mean()), color="black", ls="--", lw=1, label="clean (last epoch)")
        ax.set_title(category, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("test image AUROC (%)", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.suptitle(
        f"{method_name(model)} on {dataset_label(dataset)}: test AUROC per epoch (dot: the epoch test-set "
        "selection keeps)\nTEST-SELECTED: for comparison with published numbers only",
        fontsize=9,
        color="darkred",
    )
    fig.tight_layout()
    return fig


def protocol_figures(main: pd.DataFrame, out_dir: Path, save: Any) -> list[tuple[str, str]]:
    """Write the curve figures (``save(fig, out_dir, stem)``); returns (stem, description) pairs."""
    written = []
    for dataset, model in sorted({(str(d), str(m)) for d, m in zip(main["dataset"], main["model"], strict=True)}):
        fig = curve_figure(main, dataset, model)
        if fig is None:
            continue
        stem = f"protocol_curve_{dataset}_{model}"
        save(fig, out_dir, stem)
        written.append((stem, f"test AUROC per epoch under test-set selection, {method_name(model)}, {dataset}"))
    return written
