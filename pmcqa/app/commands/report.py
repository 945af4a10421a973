"""`pmcqa report FOLDER`: the corpus report (`pmcqa.app.corpus_report`), pmcqa beside pubmed_parser."""

from __future__ import annotations

from pathlib import Path

import typer

from pmcqa.app import corpus_report


def register(cli: typer.Typer) -> None:
    cli.command("report")(report)


def report(
    folder: Path = typer.Argument(..., help="Folder of JATS/NXML files (searched recursively)."),
) -> None:
    """Parse and chunk every JATS file of a folder; print counts, failures and time beside pubmed_parser."""
    code = corpus_report.report(folder)
    if code:
        raise typer.Exit(code)
