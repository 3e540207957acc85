"""Series x slots grids: the shape of every table of the paper.

A *series* is what a table compares (a method, an ablation setting, a backbone); a *slot* is
where it is compared (a dataset, a category, a metric). The paper puts series in rows (Tables
1-3) or in columns (Tables 4, 7-30); :func:`build_grid` does both, marks the best and second
best of each slot (and of each part of a ``a | b`` cell), and, with ``compare=True``, puts the
paper's number and the difference (measured - paper) next to each measured series, plus the
paper's own series that were not measured. Comparison tables carry no best/second marks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .naming import LOWER_IS_BETTER
from .table import Table, Text, Value, mark_best

Measure = Callable[["Slot"], list[Value]]
Lookup = Callable[["Slot"], list["Value | None"]]


@dataclass
class Slot:
    """Where series are compared. ``parts``: the metric of each value of a cell."""

    key: str
    label: Text
    parts: tuple[str, ...]
    rule: bool = False  # a rule above this slot's row (the Mean row)


@dataclass
class Series:
    """One compared thing: its label cells (rows layout) or header (columns layout), its measured
    values (None for a paper-only series) and the paper's (None where the paper has none)."""

    labels: list[Text]
    measured: Measure | None = None
    paper: Lookup | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _suffix(label: Text, suffix: str) -> Text:
    return (label[0] + suffix, label[1] + suffix) if isinstance(label, tuple) else label + suffix


def _difference(measured: list[Value], paper: list[Value | None]) -> list[Value]:
    out = []
    for m, p in zip(measured, paper, strict=True):
        if m.mean is None or p is None or p.mean is None:
            out.append(Value(None))
        else:
            out.append(Value(round(m.mean, m.decimals) - p.mean, decimals=m.decimals, signed=True))
    return out


def _lines(series: Series, slots: list[Slot], compare: bool) -> list[tuple[list[Text], list[list[Value]]]]:
    """The rows (or columns) a series prints: measured; with ``compare`` also paper and difference."""
    measured = [series.measured(s) for s in slots] if series.measured else None
    if not compare:
        return [(series.labels, measured)] if measured is not None else []
    paper = [series.paper(s) for s in slots] if series.paper else None
    has_paper = paper is not None and any(v is not None for cell in paper for v in cell)
    lines: list[tuple[list[Text], list[list[Value]]]] = []
    if measured is not None:
        lines.append((series.labels, measured))
    if has_paper:
        assert paper is not None
        printed = [[v if v is not None else Value(None) for v in cell] for cell in paper]
        lines.append(([_suffix(series.labels[0], " (paper)"), *[""] * (len(series.labels) - 1)], printed))
        if measured is not None:
            delta = [_difference(m, p) for m, p in zip(measured, paper, strict=True)]
            lines.append(([_suffix(series.labels[0], " Δ"), *[""] * (len(series.labels) - 1)], delta))
    return lines


def build_grid(
    key: str,
    title: str,
    series: list[Series],
    slots: list[Slot],
    *,
    series_as: str,
    corner: list[Text],
    compare: bool = False,
) -> Table:
    """A :class:`~.table.Table` of ``series`` x ``slots``.

    Args:
        series_as: "rows" (a series is a row; ``corner`` labels its label columns) or
            "columns" (a series is a column; ``corner`` is the slot column's header).
        compare: add the paper's numbers and the differences (see the module docstring).
    """
    blocks = [lines for s in series if (lines := _lines(s, slots, compare))]
    table = Table(key=key, title=title, header=[])
    if series_as == "rows":
        table.header = [*corner, *[s.label for s in slots]]
        for lines in blocks:
            if compare and table.rows:
                table.rules.add(len(table.rows))
            table.rows += [[*labels, *cells] for labels, cells in lines]
        measured_rows = [cells for lines in blocks for labels, cells in lines[:1]] if not compare else []
        for j, slot in enumerate(slots):
            for part, metric in enumerate(slot.parts):
                mark_best([row[j][part] for row in measured_rows], metric not in LOWER_IS_BETTER)
    elif series_as == "columns":
        columns = [(labels, cells) for lines in blocks for labels, cells in lines]
        table.header = [*corner, *[labels[0] for labels, _ in columns]]
        for j, slot in enumerate(slots):
            if slot.rule:
                table.rules.add(len(table.rows))
            table.rows.append([slot.label, *[cells[j] for _, cells in columns]])
        if not compare:
            for j, slot in enumerate(slots):
                for part, metric in enumerate(slot.parts):
                    mark_best([cells[j][part] for _, cells in columns], metric not in LOWER_IS_BETTER)
    else:
        raise ValueError(f"series_as must be 'rows' or 'columns', got {series_as!r}")
    return table
