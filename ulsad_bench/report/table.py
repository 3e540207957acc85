"""A table independent of its output format: labels, values with their marks, warnings and notes.

The Markdown and LaTeX renderers (:mod:`.render_markdown`, :mod:`.render_latex`) print the same
:class:`Table`. A value cell holds one or more :class:`Value` parts (Table 2 prints
``P-AUROC | AUPRO`` in one cell, as the paper does).

Best and second best (:func:`mark_best`): values are compared as printed (rounded to their
decimals); every value equal to the best is bold, every value equal to the next distinct value
is underlined (dense ranking). Marks are set only when at least two values are compared; a
mean over part of a dataset's categories (marked ‡) is not ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .aggregate import FULL_SEEDS, Stat

# a label: plain text, or (markdown, latex) where LaTeX needs its own spelling
Text = str | tuple[str, str]

SEED_MARK = "†"
PARTIAL_MARK = "‡"
CPU_MARK = "§"
SETTING_MARK = "¶"
TIE_MARK = "≈"  # not significantly different from the best method (the best included)


@dataclass
class Value:
    """One printed number: ``mean ± std`` with its marks; ``mean`` None prints as a dash.

    Attributes:
        mean, std: in the unit printed (percent for metrics).
        decimals: printed decimals.
        rank: 1 = best (bold), 2 = second best (underlined), None = unmarked.
        marks: superscript marks, e.g. ``"†3"`` (3 seeds) or ``"‡"`` (partial mean).
        signed: print a sign (differences to the paper).
        ranked: takes part in best / second best (a partial mean does not).
        interval: ``(low, high)`` printed instead of ``± std`` (``--spread ci``), same unit.
    """

    mean: float | None
    std: float | None = None
    decimals: int = 2
    rank: int | None = None
    marks: list[str] = field(default_factory=list)
    signed: bool = False
    ranked: bool = True
    interval: tuple[float, float] | None = None

    def number(self) -> str:
        if self.mean is None:
            return ""
        return f"{self.mean:+.{self.decimals}f}" if self.signed else f"{self.mean:.{self.decimals}f}"

    def spread(self) -> str:
        return "" if self.std is None or self.mean is None else f"{self.std:.{self.decimals}f}"

    def after_number(self, pm: str) -> str:
        """What follows the number: `` [low, high]`` when the value carries an interval, else
        `` <pm> std`` (``pm``: the renderer's ±), "" without either."""
        if self.mean is None:
            return ""
        if self.interval is not None:
            low, high = self.interval
            return f" [{low:.{self.decimals}f}, {high:.{self.decimals}f}]"
        return f" {pm} {self.spread()}" if self.spread() else ""


Cell = Text | list[Value]


@dataclass
class Table:
    """A table as the paper lays it out.

    Attributes:
        key: file stem, e.g. ``table01_image_auroc``.
        title: e.g. ``Table 1: Average detection performance: image AUROC (%)``.
        header: one label per column.
        rows: label cells (:data:`Text`) and value cells (lists of :class:`Value`).
        warnings: shown in the caption / above the table (random-init backbone, few seeds, ...).
        notes: printed under the table.
        rules: row indices that get a rule above them (LaTeX ``\\midrule``), e.g. the Mean row.
    """

    key: str
    title: str
    header: list[Text]
    rows: list[list[Cell]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rules: set[int] = field(default_factory=set)


def md_text(text: Text) -> str:
    return text[0] if isinstance(text, tuple) else text


def value_of(stat: Stat | None, decimals: int = 2) -> Value:
    """A printed value from an aggregate, with its seed and partial-mean marks."""
    if stat is None:
        return Value(None)
    value = Value(stat.mean, stat.std, decimals)
    if stat.n < FULL_SEEDS:
        value.marks.append(f"{SEED_MARK}{stat.n}")
    if stat.missing_categories:
        value.marks.append(PARTIAL_MARK)
        value.ranked = False
    return value


def mark_best(values: Sequence[Value], higher_is_better: bool = True) -> None:
    """Rank 1 (bold) and 2 (underlined) among ``values`` as printed; see the module docstring."""
    present = [v for v in values if v.mean is not None and v.ranked]
    if len(present) < 2:
        return
    printed = sorted({round(v.mean, v.decimals) for v in present}, reverse=higher_is_better)  # type: ignore[arg-type]
    for v in present:
        position = printed.index(round(v.mean, v.decimals))  # type: ignore[arg-type]
        v.rank = position + 1 if position < 2 else None
