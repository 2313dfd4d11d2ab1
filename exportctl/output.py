"""Terminal output for the CLI: rich tables on a terminal, plain aligned text when piped."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table as RichTable


@dataclass(frozen=True)
class Table:
    """A titled table of strings."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]


def print_table(table: Table, stream: TextIO | None = None) -> None:
    """Print `table` with rich on a terminal, or as plain aligned columns otherwise."""
    out = stream or sys.stdout
    if out.isatty():
        rich_table = RichTable(title=table.title, title_justify="left")
        for column in table.columns:
            rich_table.add_column(column)
        for row in table.rows:
            rich_table.add_row(*row)
        Console(file=out).print(rich_table)
        return
    widths = [len(column) for column in table.columns]
    for row in table.rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    print(f"\n{table.title}", file=out)
    for row in [table.columns, *table.rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)), file=out
        )
