"""A :class:`~.table.Table` as Markdown: best in ``**bold**``, second best ``<u>underlined</u>``."""

from __future__ import annotations

from .table import Cell, Table, Value, md_text

DASH = "—"


def escape(text: str) -> str:
    """Markdown table cells: the column separator must be escaped."""
    return text.replace("|", "\\|")


def value(v: Value) -> str:
    if v.mean is None:
        return DASH
    text = v.number() + (f" ± {v.spread()}" if v.spread() else "")
    if v.rank == 1:
        text = f"**{text}**"
    elif v.rank == 2:
        text = f"<u>{text}</u>"
    if v.marks:
        text += f"<sup>{' '.join(v.marks)}</sup>"
    return text


def cell(c: Cell) -> str:
    if isinstance(c, list):
        return " \\| ".join(value(v) for v in c)
    return escape(md_text(c))


def _is_label_column(table: Table, index: int) -> bool:
    return all(not isinstance(row[index], list) for row in table.rows) if table.rows else index == 0


def render_markdown(table: Table, heading: str = "###") -> str:
    """The table with its title, warnings (block quotes) and notes (a list)."""
    lines = [f"{heading} {table.title}", ""]
    for warning in table.warnings:
        lines += [f"> **{escape(warning)}**", ">"]
    if table.warnings:
        lines[-1] = ""
    lines.append("| " + " | ".join(escape(md_text(h)) for h in table.header) + " |")
    aligns = [":--" if _is_label_column(table, i) else ":-:" for i in range(len(table.header))]
    lines.append("|" + "|".join(aligns) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"
