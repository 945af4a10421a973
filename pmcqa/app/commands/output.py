"""Shared pieces of the commands' terminal output: tables whose ids, statuses and reasons are printed whole.

Ids (DOIs, job ids) are what a user copies into the next command, and a status (`no-full-text`, `failed`) is
what a user reads a table for, so such a column is never cut or wrapped: other columns give way, and on a
terminal too narrow even for them, the table is printed wider than the terminal (it wraps the lines, but each
id stays one piece of text). A reason (NCBI's error text, a parser's message) is wrapped, never cut: the
table is where a user reads why an id failed.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def add_id_column(table: Table, header: str, ids: list[str], **options: Any) -> None:
    """A column that shows its values whole: never cut, never wrapped."""
    width = max([len(header), *(len(value) for value in ids)])
    table.add_column(header, no_wrap=True, min_width=width, overflow="ignore", **options)


def add_text_column(table: Table, header: str, **options: Any) -> None:
    """A column of prose (titles, failure reasons) that wraps to the width left and is never cut: a word
    longer than the column (a URL in an error) folds onto the next line."""
    table.add_column(header, overflow="fold", **options)


def print_table(table: Table, console: Console | None = None) -> None:
    """Print `table` no narrower than its id columns need, whatever the terminal's width."""
    console = console or Console()
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    width = console.width
    if needed > width:  # print(width=...) is capped at the console's width: widen the console itself
        console.width = needed
    try:
        console.print(table)
    finally:
        console.width = width
