"""`pmcqa worker`: consume queued ingest jobs (SQLite queue by default, Redis when PMCQA_REDIS_URL is set).

`pmcqa jobs` shows the jobs (`pmcqa.app.commands.jobs`); `pmcqa ingest` queues them.
"""

from __future__ import annotations

import logging

import typer

from pmcqa.core.settings import Settings
from pmcqa.ingest.worker import describe_queue, run_worker


def register(cli: typer.Typer) -> None:
    cli.command("worker")(worker)


def worker(
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker threads in this process."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every batch."),
) -> None:
    """Run queued ingest jobs until stopped (SIGTERM finishes the running batches first)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pmcqa.worker").setLevel(logging.INFO if verbose else logging.WARNING)
    settings = Settings()
    typer.echo(f"pmcqa worker: {workers} thread(s) on {describe_queue(settings)}", err=True)
    run_worker(settings, workers=workers)
