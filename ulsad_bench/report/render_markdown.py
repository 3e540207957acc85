"""A :class:`~.table.Table` as Markdown: best in ``**bold**``, second best ``<u>underlined</u>``.

Names (categories, models, variants, paths in notes) are text: every character Markdown could
read as markup (emphasis, code, links, HTML, tables, strike-through, entities, math) is escaped
with a backslash, which CommonMark and GitHub render as the character itself. Labels given as a
``(markdown, latex)`` pair are authored markup (``λ<sub>l</sub>``) and are printed as they are,
as the LaTeX renderer prints their LaTeX half.
"""

from __future__ import annotations

import re

from .table import Cell, Table, Text, Value

DASH = "—"
# ``_`` between two letters or digits cannot open or close emphasis (CommonMark's flanking rule),
# so ``breakfast_box`` stays readable; everywhere else it is escaped.
ACTIVE = re.compile(r"([\\`*\[\]<>|~&$#!]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def escape(text: str) -> str:
    """Plain text for Markdown: backslash before every Markdown-active character."""
    return ACTIVE.sub(r"\\\1", text)


def label(text: Text) -> str:
    """A label: a ``(markdown, latex)`` pair is authored markup (only its ``|``, the column
    separator, is escaped); plain text is escaped whole."""
    return text[0].replace("|", "\\|") if isinstance(text, tuple) else escape(text)


def value(v: Value) -> str:
    if v.mean is None:
        return DASH
    text = v.number() + v.after_number("±")
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
    return label(c)


def _is_label_column(table: Table, index: int) -> bool:
    return all(not isinstance(row[index], list) for row in table.rows) if table.rows else index == 0


def render_markdown(table: Table, heading: str = "###") -> str:
    """The table with its title, warnings (block quotes) and notes (a list)."""
    lines = [f"{heading} {escape(table.title)}", ""]
    for warning in table.warnings:
        lines += [f"> **{escape(warning)}**", ">"]
    if table.warnings:
        lines[-1] = ""
    lines.append("| " + " | ".join(label(h) for h in table.header) + " |")
    aligns = [":--" if _is_label_column(table, i) else ":-:" for i in range(len(table.header))]
    lines.append("|" + "|".join(aligns) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {escape(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"
