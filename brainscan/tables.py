"""The kit's one table renderer: aligned text for terminals, Markdown for reports."""

from __future__ import annotations


def text_table(rows: list[tuple[str, ...]], rule: bool = True) -> str:
    """Rows of strings (the first is the header) as aligned columns, with a dashed rule
    under the header unless ``rule`` is False."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: the header, its rule, one line per row (cells as str())."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
