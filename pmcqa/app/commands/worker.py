"""`pmcqa worker`: consume queued ingest jobs (SQLite queue by default, Redis when PMCQA_REDIS_URL is set).

Also the CLI side of queued jobs: `pmcqa jobs`, and `run_queued`, which `pmcqa ingest` calls to enqueue a
job and follow it with a progress bar (polling the jobs table).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import typer

from pmcqa.app.commands.output import add_id_column, print_table

if TYPE_CHECKING:
    from rich.console import Console

    from pmcqa.core.settings import Settings
    from pmcqa.ingest.jobs import Job
    from pmcqa.ingest.pipeline import IngestOutcome


def worker(
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker threads in this process."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every batch."),
) -> None:
    """Run queued ingest jobs until stopped (SIGTERM finishes the running batches first)."""
    from pmcqa.core.logs import configure_logging
    from pmcqa.core.settings import Settings
    from pmcqa.ingest.worker import describe_queue, run_worker

    settings = Settings()
    configure_logging(settings.log_format, logging.WARNING)  # json: a line per ingest outcome regardless
    logging.getLogger("pmcqa.worker").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("pmcqa.ingest.outcome").setLevel(logging.INFO)
    typer.echo(f"pmcqa worker: {workers} thread(s) on {describe_queue(settings)}", err=True)
    run_worker(settings, workers=workers)


def jobs(
    job_id: str | None = typer.Argument(
        None, help="A job id, or a unique prefix of one; omit to list recent jobs."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end with a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    limit: int = typer.Option(20, "--limit", min=1, help="Jobs to list."),
) -> None:
    """Show ingest jobs: recent ones, or one job's per-id outcomes."""
    from rich.console import Console
    from rich.table import Table

    from pmcqa.core.settings import Settings
    from pmcqa.ingest.jobs import AmbiguousJobId, JobStore

    settings, console = Settings(), Console(stderr=as_json)
    store = JobStore.for_settings(settings)
    if job_id is None:
        recent = store.list(limit)
        if as_json:
            typer.echo(json.dumps([job.model_dump(mode="json") for job in recent], indent=2))
            return
        table = Table(title="recent ingest jobs")
        add_id_column(table, "job id", [job.job_id for job in recent])
        for column in ("created", "state", "ids", "outcomes"):
            table.add_column(column)
        for job in recent:
            created = job.created.astimezone().strftime("%Y-%m-%d %H:%M:%S")
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(job.counts.items()))
            table.add_row(job.job_id, created, job.state, str(job.total), counts)
        print_table(table, console)
        return
    try:
        found = store.find(job_id)
    except AmbiguousJobId as exc:
        raise typer.BadParameter(str(exc), param_hint="JOB_ID") from None
    if found is None:
        raise typer.BadParameter(f"no job {job_id}", param_hint="JOB_ID")
    job = follow_job(settings, found.job_id, console) if wait else found
    if as_json:
        typer.echo(json.dumps(job.model_dump(mode="json"), indent=2))
    else:
        print_job_table(job, console)
    if job.state == "failed":
        raise typer.Exit(1)


def register(cli: typer.Typer) -> None:
    cli.command("worker")(worker)
    cli.command("jobs")(jobs)


# --- helpers for `pmcqa ingest` (queued mode) --------------------------------------------------------------
def follow_job(settings: Settings, job_id: str, console: Console, poll_s: float = 0.5) -> Job:
    """Poll the jobs table until the job ends, with a progress bar; returns the finished job."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pmcqa.core.status import Status
    from pmcqa.ingest.jobs import JobStore

    jobs = JobStore.for_settings(settings)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = None
        while True:
            job = jobs.get(job_id, items=False)
            if job is None:
                raise typer.BadParameter(f"no job {job_id}")
            finished = job.total - job.counts.get(Status.PENDING, 0)
            if task is None:
                task = progress.add_task(f"job {job_id}", total=job.total)
            progress.update(task, completed=finished, description=f"job {job_id} {job.state}")
            if job.finished:
                break
            time.sleep(poll_s)
    final = jobs.get(job_id)
    assert final is not None
    return final


def print_job_table(job: Job, console: Console) -> None:
    from rich.table import Table

    from pmcqa.core.status import Status

    table = Table(title=f"job {job.job_id}: {job.state}")
    items = job.items or []
    add_id_column(table, "id", [item.id for item in items])
    add_id_column(table, "paper id", [item.paper_id or "" for item in items])
    for column in ("status", "chunks", "title / reason"):
        table.add_column(column)
    for item in job.items or []:
        detail = item.title if item.status == Status.INGESTED else (item.reason or "")
        table.add_row(item.id, item.paper_id or "", item.status, str(item.chunks or ""), (detail or "")[:70])
    print_table(table, console)
    console.print(", ".join(f"{status}: {count}" for status, count in sorted(job.counts.items())))


def run_queued(
    settings: Settings, ids: list[str], refresh: bool, wait: bool | None, as_json: bool
) -> list[IngestOutcome] | None:
    """`pmcqa ingest` on the job queue. `wait`: True follow the job, False print its id and exit,
    None (default) follow it if a worker serves the queue, else return None (the caller runs inline)."""
    from rich.console import Console

    from pmcqa.ingest.worker import enqueue_job, live_workers

    console = Console(stderr=True)  # stdout stays clean for --json
    if wait is None and not live_workers(settings):
        console.print("[dim]no worker is running on this queue: ingesting in this process[/dim]")
        return None
    job = enqueue_job(settings, ids, refresh=refresh)
    if wait is False:
        if as_json:
            typer.echo(json.dumps({"job_id": job.job_id, "state": job.state, "total": job.total}))
        else:
            console.print(f"queued job {job.job_id} ({job.total} ids): `pmcqa jobs {job.job_id} --wait`")
        raise typer.Exit(0)
    if not live_workers(settings):
        console.print("[yellow]waiting for a worker: start `pmcqa worker` or `pmcqa serve`[/yellow]")
    return job_outcomes(follow_job(settings, job.job_id, console))


def job_outcomes(job: Job) -> list[IngestOutcome]:
    """A finished job's items as pipeline outcomes, so queued and inline runs print the same way."""
    from pmcqa.core.status import Status
    from pmcqa.ingest.pipeline import IngestOutcome

    return [
        IngestOutcome(
            requested=item.id,
            paper_id=item.paper_id,
            status=Status.FAILED if item.status == Status.PENDING else item.status,
            reason=item.reason,
            title=item.title,
            chunks=item.chunks or 0,
        )
        for item in job.items or []
    ]
