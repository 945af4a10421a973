"""`pmcqa backup DEST`: a consistent copy of the embedded library (`pmcqa.app.backup`), safe to take while
`pmcqa serve` and workers write to it. Restore by pointing `PMCQA_DATA_DIR` at DEST.

    pmcqa backup /backups/pmcqa-2026-12-01 [--no-raw] [--json]

Progress goes to stderr, the summary to stdout (`--json`: machine-readable). Exit 2: refused before anything
was written (a PostgreSQL library, DEST not empty or inside the data dir, no library at the data dir); 1: the
backup failed part way, and nothing was left at DEST. No model is loaded and no index is read.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

import typer
from rich.filesize import decimal

from pmcqa.app.backup import BackupFailed, BackupRefused, BackupSummary, backup_library
from pmcqa.core.settings import Settings


def register(cli: typer.Typer) -> None:
    cli.command("backup")(backup)


def backup(
    dest: Path = typer.Argument(
        ..., help="A new or empty folder, outside the data dir, to copy the library into."
    ),
    no_raw: bool = typer.Option(
        False, "--no-raw", help="Leave out the raw XML (a cache of NCBI's replies, fetched again on need)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Copy the embedded library consistently, even while it is in use; restore with PMCQA_DATA_DIR."""
    settings = Settings()
    try:
        summary = backup_library(
            settings,
            dest,
            raw_xml=not no_raw,
            progress=lambda line: typer.echo(line, err=True),  # plain lines: paths are never wrapped
        )
    except BackupRefused as exc:
        typer.echo(f"pmcqa: {exc}", err=True)
        raise typer.Exit(2) from None
    except (BackupFailed, OSError, sqlite3.Error) as exc:  # a full disk, a vanished folder: one line
        typer.echo(f"pmcqa: backup failed, nothing was left at {dest}: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(asdict(summary), indent=2))
        return
    _print_summary(summary)


def _print_summary(summary: BackupSummary) -> None:
    typer.echo(
        f"backed up {summary.papers} papers, {summary.chunks} chunks ({decimal(summary.bytes)}) to "
        f"{summary.destination} in {summary.seconds:.1f} s; verified"
    )
    for item in summary.copied:
        files = f", {item.files} files" if item.kind in ("raw-xml", "answer-model") else ""
        typer.echo(f"  copied    {item.path} ({decimal(item.bytes)}{files})")
    for left in summary.left_out:
        typer.echo(f"  left out  {left.path}: {left.reason}")
    typer.echo(f"restore: PMCQA_DATA_DIR={summary.destination}")
