"""`pmcqa jobs [JOB_ID] [--wait]`: the ingest jobs on the queue (`pmcqa.ingest.jobs`), newest first.

`follow_job` (a progress bar until the job ends) is also how `pmcqa ingest` follows the job it queued.
"""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pmcqa.core.settings import Settings
from pmcqa.core.status import Status
from pmcqa.ingest.jobs import Job, JobStore


def register(cli: typer.Typer) -> None:
    cli.command("jobs")(jobs)


def jobs(
    job_id: str | None = typer.Argument(None, help="A job id; omit to list recent jobs."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end with a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    limit: int = typer.Option(20, "--limit", min=1, help="Jobs to list."),
) -> None:
    """Show ingest jobs: recent ones, or one job's per-id outcomes."""
    settings, console = Settings(), Console(stderr=as_json)
    store = JobStore.for_settings(settings)
    if job_id is None:
        recent = store.list(limit)
        if as_json:
            typer.echo(json.dumps([job.model_dump(mode="json") for job in recent], indent=2))
            return
        table = Table(title="recent ingest jobs")
        for column in ("job id", "created", "state", "ids", "outcomes"):
            table.add_column(column)
        for job in recent:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created))
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(job.counts.items()))
            table.add_row(job.job_id, created, job.state, str(job.total), counts)
        console.print(table)
        return
    job = follow_job(settings, job_id, console) if wait else store.get(job_id)
    if job is None:
        raise typer.BadParameter(f"no job {job_id}")
    if as_json:
        typer.echo(json.dumps(job.model_dump(mode="json"), indent=2))
    else:
        print_job_table(job, console)
    if job.state == "failed":
        raise typer.Exit(1)


def follow_job(settings: Settings, job_id: str, console: Console, poll_s: float = 0.5) -> Job:
    """Poll the jobs table until the job ends, with a progress bar; returns the finished job."""
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
                task = progress.add_task(f"job {job_id[:8]}", total=job.total)
            progress.update(task, completed=finished, description=f"job {job_id[:8]} {job.state}")
            if job.finished:
                break
            time.sleep(poll_s)
    final = jobs.get(job_id)
    assert final is not None
    return final


def print_job_table(job: Job, console: Console) -> None:
    table = Table(title=f"job {job.job_id}: {job.state}")
    for column in ("id", "status", "paper id", "chunks", "title / reason"):
        table.add_column(column)
    for item in job.items or []:
        detail = item.title if item.status == Status.INGESTED else (item.reason or "")
        table.add_row(item.id, item.status, item.paper_id or "", str(item.chunks or ""), (detail or "")[:70])
    console.print(table)
    console.print(", ".join(f"{status}: {count}" for status, count in sorted(job.counts.items())))
