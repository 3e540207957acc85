"""Figures of the statistics (matplotlib, Agg), as PNG and PDF.

- ``cd_<metric>`` and ``cd_<dataset>_<metric>``: critical-difference diagrams (Demšar 2006,
  Sec. 3.2.4) over all datasets and per dataset, drawn by
  :func:`scikit_posthocs.critical_difference_diagram` from the average ranks and the Nemenyi
  p-value matrix of :func:`.statistics.rank_methods`: methods whose Nemenyi test does not reject
  at α = 0.05 are joined by a bar; the CD is drawn above the axis. Rank 1 = best.
- ``spread_<dataset>``: each method's per-seed values per category (one dot per seed, a bar at
  the mean over seeds), categories on the x axis, one panel per metric (the paper's three, when
  present), so a reader sees which categories decide a ranking and how far seeds scatter.

A diagram is not drawn when its ranking has too few methods or categories; the rank table's
notes say why (:func:`.stat_tables.diagram_reason`). Figures are drawn on matplotlib ``Figure``
objects (no pyplot state is changed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import scikit_posthocs
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .naming import METRIC_LABEL, METRICS, dataset_label
from .stat_tables import (
    ALL_DATASETS,
    DASH,
    METRIC_ORDER,
    Evidence,
    diagram_reason,
    evidence,
    metric_name,
    metrics_present,
    rankings,
    seed_values,
)
from .statistics import ALPHA, Ranking
from .tables import Context


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """``stem.png`` (150 dpi) and ``stem.pdf`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def cd_title(ranking: Ranking, metric: str, where: str) -> str:
    """The diagram's title: what, where, the test, α, N, k, the CD and the Friedman p."""
    if ranking.p is None:
        friedman = "no Friedman test (two methods)"
    else:
        verdict = "" if ranking.p <= ALPHA else "; the Friedman test does not reject"
        friedman = f"Friedman p = {ranking.p:.3g}{verdict}"
    caveat = ""
    if ranking.caveat:
        caveat = f"\n{ranking.caveat[:1].upper()}{ranking.caveat[1:]}: ranks are descriptive, no difference significant"
    cd = DASH if ranking.cd is None else f"{ranking.cd:.2f}"
    return (
        f"Critical difference diagram: average ranks by {metric_name(metric)} (1 = best), {where}\n"
        f"Nemenyi test, α = {ALPHA:g}, N = {ranking.n} categories, k = {ranking.k} methods, CD = {cd}; "
        f"{friedman}{caveat}"
    )


def cd_figure(ranking: Ranking, title: str) -> Figure:
    """A critical-difference diagram (scikit-posthocs) of ``ranking`` (which must have the Nemenyi matrix);
    the figure is sized so that one level of the diagram is 0.35 inch high (the CD bar clears the ticks)."""
    fig = Figure(figsize=(7.0, 3.0))
    ax = fig.subplots()
    scikit_posthocs.critical_difference_diagram(
        ranking.average_ranks,
        ranking.nemenyi,
        cd=ranking.cd,
        alpha=ALPHA,
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
        label_props={"fontsize": 8},
        text_h_margin=0.03,
    )
    ax.tick_params(axis="x", labelsize=7, pad=1)
    low, _ = ax.get_ylim()
    ax.set_ylim(low, 1.2)
    fig.set_size_inches(7.0, 0.35 * (1.2 - low) + 0.9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def _colors(n: int) -> list[tuple[float, ...]]:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _spread_panel(ax: Axes, ev: Evidence, colors: list[tuple[float, ...]], tested: set[str]) -> None:
    """One metric: categories on x, each method's seeds as dots at its offset, its mean as a bar."""
    frame = seed_values(ev)
    labels = [m.label for m in ev.methods]
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        offset = -0.4 + width * (i + 0.5)
        mine = frame[frame["method"] == label]
        for c, category in enumerate(ev.categories):
            values = mine.loc[mine["category"] == category, "value"].to_numpy()
            if values.size == 0:
                continue
            ax.scatter(np.full(values.size, c + offset), values, s=9, color=colors[i], alpha=0.8, linewidths=0)
            ax.hlines(values.mean(), c + offset - width / 2, c + offset + width / 2, color=colors[i], linewidth=1.5)
        name = label if label in tested else f"{label} (not tested)"
        ax.scatter([], [], s=12, color=colors[i], label=name)
    ax.set_xticks(range(len(ev.categories)), ev.categories, rotation=45, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(ev.categories) - 0.4)
    for boundary in range(len(ev.categories) - 1):  # light rules between categories
        ax.axvline(boundary + 0.5, color="0.85", linewidth=0.6, zorder=0)
    ax.set_ylabel(f"{METRIC_LABEL.get(ev.metric, ev.metric)} (%)", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)


def spread_figure(evs: list[Evidence]) -> Figure:
    """Per-seed values per category of every method, one panel per metric of ``evs`` (one dataset)."""
    labels = list(dict.fromkeys(m.label for ev in evs for m in ev.methods))
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    categories = max(len(ev.categories) for ev in evs)
    fig = Figure(figsize=(max(6.4, 1.5 + categories * (0.3 + 0.07 * len(labels))), 2.4 * len(evs) + 0.8))
    axes = fig.subplots(len(evs), 1, squeeze=False)[:, 0]
    for ax, ev in zip(axes, evs, strict=True):
        tested = {str(c) for c in ev.means.columns}
        _spread_panel(ax, ev, [colors[m.label] for m in ev.methods], tested)
    axes[-1].set_xlabel("category", fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.suptitle(
        f"Seed values per category on {dataset_label(evs[0].dataset)}: one dot per seed, bar = mean over seeds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title="method")
    return fig


def _cd_figures(ctx: Context, out: Path) -> list[tuple[str, str]]:
    written = []
    for metric in METRIC_ORDER:
        per_dataset, overall, _, _ = rankings(ctx, metric)
        if not per_dataset:
            continue
        items = [(f"cd_{metric}", ALL_DATASETS.lower(), overall)]
        items += [(f"cd_{d}_{metric}", dataset_label(d), r) for d, r in per_dataset.items()]
        for stem, where, ranking in items:
            if ranking is None or diagram_reason(ranking):
                continue
            save(cd_figure(ranking, cd_title(ranking, metric, where)), out, stem)
            what = f"critical-difference diagram of the average ranks by {metric_name(metric)}, {where}"
            caveat = f"; {ranking.caveat}" if ranking.caveat else ""
            written.append((stem, f"{what} (Nemenyi, α = {ALPHA:g}, CD = {ranking.cd:.2f}{caveat})"))
    return written


def statistics_figures(ctx: Context, out: Path) -> list[tuple[str, str]]:
    """Write the critical-difference diagrams and the seed-spread figures; (file stem, description) pairs."""
    written = _cd_figures(ctx, out)
    for dataset in ctx.datasets():
        present = metrics_present(ctx, dataset)
        shown = [m for m in METRICS if m in present] or present[:3]
        evs = [ev for ev in (evidence(ctx, dataset, m) for m in shown) if ev.methods]
        if not evs:
            continue
        stem = f"spread_{dataset}"
        save(spread_figure(evs), out, stem)
        names = ", ".join(METRIC_LABEL.get(ev.metric, ev.metric) for ev in evs)
        written.append((stem, f"per-seed {names} of every method per category, {dataset_label(dataset)}"))
    return written
