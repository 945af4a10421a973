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
from rich.text import Text

from pmcqa.app.commands.output import add_id_column, add_text_column, print_table
from pmcqa.core.db import require_existing
from pmcqa.core.settings import Settings
from pmcqa.core.status import Status
from pmcqa.ingest.jobs import AmbiguousJobId, Job, JobStore, live_workers


def register(cli: typer.Typer) -> None:
    cli.command("jobs")(jobs)


def jobs(
    job_id: str | None = typer.Argument(
        None, help="A job id, or a unique prefix of one; omit to list recent jobs."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end with a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    limit: int = typer.Option(20, "--limit", min=1, help="Jobs to list."),
) -> None:
    """Show ingest jobs: recent ones, or one job's per-id outcomes."""
    settings, console = Settings(), Console(stderr=as_json)
    require_existing(settings)  # a mistyped PMCQA_DATA_DIR: refused, not created with an empty jobs table
    store = JobStore.for_settings(settings)
    if job_id is None:
        recent = store.list(limit)
        if as_json:
            typer.echo(json.dumps([job.model_dump(mode="json") for job in recent], indent=2))
            return
        table = Table(title="recent ingest jobs")
        add_id_column(table, "job id", [job.job_id for job in recent])
        table.add_column("created")
        add_id_column(table, "state", [job.state for job in recent])
        for column in ("ids", "outcomes"):
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
    if wait and not found.finished and not live_workers(settings, store):
        # Nothing would ever move it: say so rather than show a bar that never advances.
        console.print(
            f"[yellow]warning:[/] no worker serves this queue: start one (`pmcqa worker`) to run job "
            f"{found.job_id}; waiting for one"
        )
    job = follow_job(settings, found.job_id, console) if wait else found
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
                task = progress.add_task(f"job {job_id}", total=job.total)
            progress.update(task, completed=finished, description=f"job {job_id} {job.state}")
            if job.finished:
                break
            time.sleep(poll_s)
    final = jobs.get(job_id)
    assert final is not None
    return final


def print_job_table(job: Job, console: Console) -> None:
    table = Table(title=f"job {job.job_id}: {job.state}")
    items = job.items or []
    add_id_column(table, "id", [item.id for item in items])
    add_id_column(table, "paper id", [item.paper_id or "" for item in items])
    add_id_column(table, "status", [str(item.status) for item in items])
    table.add_column("chunks")
    add_text_column(table, "title / reason")
    for item in items:
        detail = item.title if item.status == Status.INGESTED else (item.reason or "")
        cells = (item.id, item.paper_id or "", item.status, str(item.chunks or ""), detail or "")
        table.add_row(*(Text(cell) for cell in cells))  # ids and reasons are data, never rich markup
    print_table(table, console)
    console.print(", ".join(f"{status}: {count}" for status, count in sorted(job.counts.items())))
