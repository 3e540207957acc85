"""The paper's figures from run records and ``maps.npz`` files (matplotlib, Agg), as PNG and PDF.

- Figure 6 (per ULSAD run): rows = chosen test images (the first of each defect type), columns
  image | ground truth | local map | global map | combined map.
- Figure 9 (per category): the same images, image | ground truth | each method's combined map.
- Figure 7: ULSAD's dataset-mean I-AUROC, P-AUROC and AUPRO per backbone (grouped bars, ± std).
- Figure 8: heat maps of the three metrics over the alpha x beta grid, the paper's choice framed.

Maps are shown with one colour scale per run and map (1st to 99.5th percentile of that map over
the run's saved images), so normal and anomalous images of a run can be compared; methods' maps
are not on one scale (their scores have different units). Each map column has its colour bar,
the caption says so, rows are labelled with the defect type as a reader says it, and each map
carries the image's anomaly score (the run's ``predictions.csv``). The run shown
is the lowest seed with a ``maps.npz``. Figures are drawn on matplotlib ``Figure`` objects (no
pyplot, no display, nothing global changed) and written by the Agg renderer (PNG) and the PDF one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..artifacts import MapPreview, read_maps, read_predictions
from .aggregate import Stat, dataset_stat
from .naming import METRIC_LABEL, METRICS, backbone_label, backbone_order, dataset_label, defect_label
from .paper import Paper
from .protocol_gap import protocol_figures
from .studies import PAPER_QUANTILES, Study, backbone_study, quantile_study
from .tables import Context, Method

CMAP = "jet"
RANDOM_TITLE = "RANDOM-INIT BACKBONE: not comparable to the paper"
MAPS_WHAT = " (one colour scale per column, shown by its bar; each map with the image's score)"
SCALE_NOTE = (
    "Colour: one scale per map column (its bar: 1st to 99.5th percentile of that run's saved maps),\n"
    "not comparable across columns; s = the image's anomaly score"
)


@dataclass
class RunMaps:
    """The saved maps of one run (:class:`~ulsad_bench.artifacts.MapPreview`) and where they come from."""

    label: str
    seed: int
    random_init: bool
    preview: MapPreview
    scores: dict[str, float] | None = None  # image path -> anomaly score (predictions.csv)

    def score_of(self, path: str) -> str:
        """``"s = 1.23"`` for the image at ``path``, "" when the run saved no score for it."""
        score = (self.scores or {}).get(path)
        return "" if score is None else f"s = {score:.3g}"


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """``stem.png`` (150 dpi) and ``stem.pdf`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def load_run_maps(frame: pd.DataFrame, label: str) -> RunMaps | None:
    """The maps of the lowest-seed run in ``frame`` that saved them."""
    for row in frame.sort_values("seed").itertuples():
        preview = read_maps(Path(row.run_dir))
        if preview is not None:
            try:
                scores = {p.path: p.score for p in read_predictions(Path(row.run_dir))}
            except (OSError, KeyError, ValueError):  # no or an unreadable predictions.csv: no scores shown
                scores = None
            return RunMaps(label, int(row.seed), row.weights_policy == "random", preview, scores)
    return None


def choose_images(defect_types: np.ndarray, per_defect: int = 1) -> list[int]:
    """The first ``per_defect`` images of each anomalous defect type (normal ones if there are none)."""
    types = [str(t) for t in defect_types]
    anomalous = [t for t in dict.fromkeys(types) if t != "good"] or ["good"]
    chosen = []
    for kind in anomalous:
        chosen += [i for i, t in enumerate(types) if t == kind][:per_defect]
    return chosen


def _scale(values: np.ndarray) -> tuple[float, float]:
    flat = values.astype(np.float32).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(flat, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1e-6)


def _show(ax: Any, picture: np.ndarray | None, title: str | None, note: str = "", **kw: Any) -> Any:
    """Draw ``picture`` (or "n/a") on ``ax`` with ``title`` above and ``note`` below; returns the image."""
    image = None
    if picture is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    else:
        image = ax.imshow(picture, **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    if note:
        ax.set_xlabel(note, fontsize=6, labelpad=1)
    return image


def _colour_bars(fig: Figure, axes: Any, images: dict[int, Any]) -> None:
    """A colour bar under each map column ``c`` (``images[c]``: one of its drawn maps)."""
    for c, image in images.items():
        bar = fig.colorbar(image, ax=axes[:, c], location="bottom", fraction=0.04, pad=0.02, aspect=12)
        bar.ax.tick_params(labelsize=5)
        bar.set_label("anomaly map", fontsize=6)


def _suptitle(fig: Figure, title: str, random_init: bool, maps: bool = False) -> None:
    if maps:
        title += f"\n{SCALE_NOTE}"
    if random_init:
        title += f"\n{RANDOM_TITLE}"
    fig.suptitle(title, fontsize=9, color="darkred" if random_init else "black")


def _image_and_mask(axes: Any, preview: MapPreview, i: int, first: bool) -> None:
    """The first two columns of a figure row: the test image (defect type as label) and its mask."""
    _show(axes[0], preview.image[i].transpose(1, 2, 0), "Image" if first else None)
    axes[0].set_ylabel(defect_label(str(preview.defect_type[i])), fontsize=7)
    _show(axes[1], preview.mask_of(i), "Ground truth" if first else None, cmap="gray", vmin=0, vmax=1)


def maps_figure(run: RunMaps, title: str, per_defect: int = 1) -> Figure:
    """Figure 6: image | ground truth | local | global | combined (local/global where saved)."""
    preview = run.preview
    columns = [
        (preview.extras[k], name) for k, name in (("local", "Local"), ("global", "Global")) if k in preview.extras
    ]
    columns.append((preview.map, "Combined"))
    scales = [_scale(maps) for maps, _ in columns]
    rows = choose_images(preview.defect_type, per_defect)
    fig = Figure(figsize=(1.6 * (2 + len(columns)), 1.7 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(len(rows), 2 + len(columns), squeeze=False)
    drawn: dict[int, Any] = {}
    for r, i in enumerate(rows):
        first = r == 0
        _image_and_mask(axes[r], preview, i, first)
        for c, (maps, name) in enumerate(columns):
            low, high = scales[c]
            note = run.score_of(str(preview.path[i])) if name == "Combined" else ""
            scale = {"cmap": CMAP, "vmin": low, "vmax": high}
            image = _show(axes[r, 2 + c], maps[i].astype(np.float32), name if first else None, note, **scale)
            drawn[2 + c] = image if image is not None else drawn.get(2 + c)
    _colour_bars(fig, axes, {c: image for c, image in drawn.items() if image is not None})
    _suptitle(fig, title, run.random_init, maps=True)
    return fig


def methods_figure(runs: list[RunMaps], title: str, per_defect: int = 1) -> Figure:
    """Figure 9: the same test images (matched by path), image | ground truth | each method's map."""
    base = runs[0].preview
    rows = choose_images(base.defect_type, per_defect)
    scales = [_scale(run.preview.map) for run in runs]
    fig = Figure(figsize=(1.6 * (2 + len(runs)), 1.7 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(len(rows), 2 + len(runs), squeeze=False)
    drawn: dict[int, Any] = {}
    for r, i in enumerate(rows):
        first = r == 0
        _image_and_mask(axes[r], base, i, first)
        for c, run in enumerate(runs):
            path = str(base.path[i])
            j = run.preview.index_of(path)
            picture = None if j is None else run.preview.map[j].astype(np.float32)
            low, high = scales[c]
            scale = {"cmap": CMAP, "vmin": low, "vmax": high}
            image = _show(axes[r, 2 + c], picture, run.label if first else None, run.score_of(path), **scale)
            drawn[2 + c] = image if image is not None else drawn.get(2 + c)
    _colour_bars(fig, axes, {c: image for c, image in drawn.items() if image is not None})
    _suptitle(fig, title, any(run.random_init for run in runs), maps=True)
    return fig


def _study_means(study: Study, expected: list[str]) -> tuple[dict[Any, dict[str, Stat | None]], str]:
    """Dataset means of every arm over the categories all arms ran (so that arms compare), and a
    line naming the categories left out ("" when none)."""
    ran = [set(arm.frame["category"]) for arm in study.arms]
    common = [c for c in expected if all(c in r for r in ran)]
    means = {
        arm.value: {m: dataset_stat(arm.frame[arm.frame["category"].isin(common)], m, common) for m in METRICS}
        for arm in study.arms
    }
    left_out = [c for c in expected if c not in common]
    return means, (f"\nmean over {', '.join(common)} (not run by every arm: {', '.join(left_out)})" if left_out else "")


def _random(study: Study) -> bool:
    return any((arm.frame["weights_policy"] == "random").any() for arm in study.arms)


def backbone_figure(study: Study, expected: list[str], paper: Paper | None = None) -> Figure:
    """Figure 7: grouped bars (metrics x backbones), error bars = std over seeds; the paper's
    Table 30 means as black ticks when ``paper`` is given (MVTec LOCO only)."""
    means, subset = _study_means(study, expected)
    backbones = backbone_order(set(means))
    width = 0.8 / len(backbones)
    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.subplots()
    x = np.arange(len(METRICS))
    lowest = 100.0
    colors = matplotlib.colormaps["tab10"]
    for b, backbone in enumerate(backbones):
        stats = [means[backbone][m] for m in METRICS]
        heights = [s.mean if s else np.nan for s in stats]
        errors = [s.std if s and s.std is not None else 0.0 for s in stats]
        offsets = x - 0.4 + width * (b + 0.5)
        bars = ax.bar(offsets, heights, width, yerr=errors, capsize=2, label=backbone_label(backbone), color=colors(b))
        ax.bar_label(bars, labels=[f"{h:.1f}" if np.isfinite(h) else "" for h in heights], fontsize=6, padding=1)
        lowest = min([lowest, *[h for h in heights if np.isfinite(h)]])
        if paper is not None and study.dataset == "mvtec_loco":
            printed = [paper.backbone(backbone, m, "mean") for m in METRICS]
            ys = [p.mean if p else np.nan for p in printed]
            ax.scatter(offsets, ys, marker="_", s=120, color="black", zorder=3, label="paper" if b == 0 else None)
    ax.set_xticks(x, [METRIC_LABEL[m] for m in METRICS])
    ax.set_ylabel("%")
    ax.set_ylim(max(0.0, lowest - 10.0), 100.0)
    ax.legend(fontsize=7, ncol=min(4, len(backbones) + 1), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    title = f"Figure 7: ULSAD per backbone on {dataset_label(study.dataset)} (mean ± std over seeds){subset}"
    _suptitle(fig, title, _random(study))
    fig.tight_layout()
    return fig


def quantile_figure(study: Study, expected: list[str]) -> Figure:
    """Figure 8: one heat map per metric over alpha (rows) x beta (columns); the paper's
    (alpha, beta) = (0.9, 0.995) framed when it is on the grid."""
    means, subset = _study_means(study, expected)
    alphas = sorted({a for a, _ in means})
    betas = sorted({b for _, b in means})
    fig = Figure(figsize=(3.3 * len(METRICS), 0.5 * len(alphas) + 1.9))
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS, strict=True):
        grid = np.full((len(alphas), len(betas)), np.nan)
        for (a, b), stats in means.items():
            stat = stats[metric]
            grid[alphas.index(a), betas.index(b)] = stat.mean if stat else np.nan
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for r in range(len(alphas)):
            for c in range(len(betas)):
                value = grid[r, c]
                text = "—" if not np.isfinite(value) else f"{value:.2f}"
                color = "white" if np.isfinite(value) and value <= middle else "black"
                ax.text(c, r, text, ha="center", va="center", fontsize=7, color=color)
        if PAPER_QUANTILES[0] in alphas and PAPER_QUANTILES[1] in betas:
            r, c = alphas.index(PAPER_QUANTILES[0]), betas.index(PAPER_QUANTILES[1])
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=7)
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
        ax.set_xlabel("β", fontsize=8)
        ax.set_ylabel("α", fontsize=8)
        ax.set_title(f"{METRIC_LABEL[metric]} (%)", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    title = (
        f"Figure 8: ULSAD over the α x β grid on {dataset_label(study.dataset)} (dataset means; red: paper's choice)"
        + subset
    )
    _suptitle(fig, title, _random(study))
    fig.tight_layout()
    return fig


def _method_runs(ctx: Context, dataset: str, category: str) -> list[tuple[Method, RunMaps]]:
    runs = []
    for method in ctx.methods_in(dataset):
        run = load_run_maps(method.select(ctx.main, dataset=dataset, category=category), method.label)
        if run is not None:
            runs.append((method, run))
    return runs


def all_figures(ctx: Context, out_dir: Path, per_defect: int = 1, paper: bool = False) -> list[tuple[str, str]]:
    """Write every figure the records allow; returns (file stem, description) pairs."""
    written: list[tuple[str, str]] = []
    for dataset in ctx.datasets():
        for category in ctx.expected(dataset):
            runs = _method_runs(ctx, dataset, category)
            where = f"{dataset_label(dataset)} / {category}"
            for method, run in runs:
                if {"local", "global"} <= set(run.preview.extras):
                    stem = f"fig6_{dataset}_{category}_{method.model}" + (
                        f"_{method.backbone}" if method.backbone else ""
                    )
                    title = f"Figure 6: {method.label} anomaly maps, {where} (seed {run.seed})"
                    save(maps_figure(run, title, per_defect), out_dir, stem)
                    written.append((stem, f"{method.label} local / global / combined maps, {where}{MAPS_WHAT}"))
            if runs:
                stem = f"fig9_{dataset}_{category}"
                title = f"Figure 9: anomaly maps per method, {where}"
                save(methods_figure([run for _, run in runs], title, per_defect), out_dir, stem)
                written.append((stem, f"anomaly maps of {', '.join(m.label for m, _ in runs)}, {where}{MAPS_WHAT}"))
    written += protocol_figures(ctx.main, out_dir, save)
    ulsad = sorted(set(ctx.ok.loc[ctx.ok["model"] == "ulsad", "dataset"]))
    for dataset in ulsad:
        study = backbone_study(ctx.ok, dataset)
        if study is not None:
            stem = f"fig7_backbones_{dataset}"
            save(backbone_figure(study, ctx.expected(dataset), ctx.paper if paper else None), out_dir, stem)
            written.append((stem, f"ULSAD per backbone on {dataset_label(dataset)}"))
        study = quantile_study(ctx.ok, dataset)
        if study is not None:
            stem = f"fig8_quantiles_{dataset}"
            save(quantile_figure(study, ctx.expected(dataset)), out_dir, stem)
            written.append((stem, f"ULSAD over the alpha x beta grid on {dataset_label(dataset)}"))
    return written
