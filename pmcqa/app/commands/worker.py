"""`pmcqa worker`: consume queued ingest jobs (SQLite queue by default, Redis when PMCQA_REDIS_URL is set).

`pmcqa jobs` shows the jobs (`pmcqa.app.commands.jobs`); `pmcqa ingest` queues them. `pmcqa worker --check` is
the worker container's healthcheck.
"""

from __future__ import annotations

import logging
import socket

import typer

from pmcqa.core.logs import configure_logging
from pmcqa.core.settings import Settings
from pmcqa.ingest.jobs import live_workers
from pmcqa.ingest.worker import describe_queue, run_worker


def register(cli: typer.Typer) -> None:
    cli.command("worker")(worker)


def worker(
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker threads in this process."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every batch."),
    check: bool = typer.Option(
        False, "--check", help="Exit 0 if a worker on this host reported in recently, else 1 (healthchecks)."
    ),
) -> None:
    """Run queued ingest jobs until stopped (SIGTERM finishes the running batches first)."""
    if check:
        raise typer.Exit(0 if check_local_worker(Settings()) else 1)
    settings = Settings()
    configure_logging(settings.log_format, logging.WARNING)  # json: a line per ingest outcome regardless
    logging.getLogger("pmcqa.worker").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("pmcqa.ingest.outcome").setLevel(logging.INFO)
    typer.echo(f"pmcqa worker: {workers} thread(s) on {describe_queue(settings)}", err=True)
    run_worker(settings, workers=workers)


def check_local_worker(settings: Settings) -> bool:
    """Whether a worker process of this host serves the queue: its heartbeat is recent in the workers table.

    Workers register as "<hostname>:<pid>" (`ingest.worker.run_worker`); in a container the hostname is the
    container's, so this checks the worker of that container, not merely that Redis answers.
    """
    prefix = f"{socket.gethostname()}:"
    alive = [name for name in live_workers(settings) if name.startswith(prefix)]
    if alive:
        typer.echo(f"worker alive: {', '.join(alive)} on {describe_queue(settings)}")
    else:
        typer.echo(f"no live worker of {prefix[:-1]} on {describe_queue(settings)}", err=True)
    return bool(alive)
