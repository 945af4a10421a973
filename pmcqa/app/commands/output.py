"""Shared pieces of the commands' terminal output."""

from __future__ import annotations

from typing import Any


def add_id_column(table: Any, header: str, ids: list[str]) -> None:
    """A rich table column that shows ids whole, however narrow the terminal: never cut, never wrapped
    (ids such as DOIs and job ids are what a user copies into the next command); other columns give way."""
    width = max([len(header), *(len(value) for value in ids)])
    table.add_column(header, no_wrap=True, min_width=width, overflow="ignore")
