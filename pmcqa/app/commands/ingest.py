"""`pmcqa ingest`: fetch PMC papers (or read local JATS files) and store them for answering.

    pmcqa ingest PMC8435807 pmid:34527728 10.1002/qub2.92 [--json] [--refresh]
    pmcqa ingest --ids-file ids.txt            # one id per line, '#' starts a comment
    pmcqa ingest --xml paper.nxml pkg.tar.gz dir/ [--id PMC123 ...] [--json]

Exit codes: 0 when every id/document ended `ingested` or `no-full-text` (or was a skipped package member),
1 when any ended `not-found`, `failed` or `invalid`, 2 on usage errors. The summary table (or the JSON list
with --json) goes to stdout; the progress bar goes to stderr so --json output stays clean.

Ids go to the job queue when a worker serves it (`run_queued`, followed like `pmcqa jobs ID --wait`), else
they are ingested in this process (`run_ingest`); local files are always ingested in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from pmcqa.app.commands.jobs import follow_job
from pmcqa.app.commands.output import add_id_column, add_text_column
from pmcqa.app.commands.output import print_table as print_wide_table
from pmcqa.core.ids import InvalidPaperId, parse_id
from pmcqa.core.settings import Settings, get_settings
from pmcqa.core.status import Status
from pmcqa.ingest.jobs import Job, live_workers
from pmcqa.ingest.pipeline import Ingestor, IngestOutcome
from pmcqa.ingest.worker import enqueue_job

PROGRESS_MIN = 5  # show a progress bar from this many ids/paths on


def register(cli: typer.Typer) -> None:
    cli.command("ingest")(ingest)


def local_files(ids: list[str]) -> list[str]:
    """The positional arguments that are no paper id but a file or folder here: `pmcqa ingest paper.xml`
    means `--xml paper.xml`, which is said rather than queued as an invalid id."""
    found = []
    for text in ids:
        try:
            parse_id(text)
        except InvalidPaperId:
            if Path(text).exists():
                found.append(text)
    return found


def read_ids_file(path: Path) -> list[str]:
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            ids.append(text)
    return ids


def run_ingest(
    settings: Settings,
    ids: list[str] | None = None,
    xml_paths: list[Path] | None = None,
    id_override: list[str] | None = None,
    refresh: bool = False,
    show_progress: bool = False,
) -> list[IngestOutcome]:
    """Run an ingest inline (no queue) and return its outcomes; importable by other commands."""
    ingestor = Ingestor(settings)
    total = len(ids or []) + len(xml_paths or [])
    try:
        if not show_progress or total < PROGRESS_MIN:
            return _run(ingestor, ids, xml_paths, id_override, refresh, None)
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("ingesting", total=len(ids) if ids else None)
            return _run(ingestor, ids, xml_paths, id_override, refresh, lambda _o: bar.advance(task))
    finally:
        ingestor.close()


def _run(ingestor, ids, xml_paths, id_override, refresh, progress):  # type: ignore[no-untyped-def]
    outcomes = []
    if ids:
        outcomes += ingestor.ingest_ids(ids, refresh=refresh, progress=progress)
    if xml_paths:
        override = (id_override[0] if len(id_override) == 1 else id_override) if id_override else None
        outcomes += ingestor.ingest_files(xml_paths, id_override=override, progress=progress)
    return outcomes


def print_table(outcomes: list[IngestOutcome]) -> None:
    table = Table()
    add_id_column(table, "requested", [o.requested for o in outcomes])
    add_id_column(table, "paper", [o.paper_id or "" for o in outcomes])
    add_id_column(table, "status", [str(o.status) for o in outcomes])  # "ingest…" told nothing
    table.add_column("chunks")
    add_text_column(table, "title / reason")
    colours = {Status.INGESTED: "green", Status.NO_FULL_TEXT: "yellow"}
    for o in outcomes:
        colour = colours.get(o.status, "dim" if o.skipped else "red")
        detail = o.title if o.status == Status.INGESTED else (o.reason or "")
        table.add_row(
            escape(o.requested),
            o.paper_id or "",
            f"[{colour}]{o.status}[/]",
            str(o.chunks),
            escape(detail or ""),
        )
    print_wide_table(table)


def ingest(
    ids: list[str] = typer.Argument(None, help="PMCIDs, pmid:…, DOIs (bare numbers per `bare_digits`)."),
    xml: list[Path] = typer.Option(
        None,
        "--xml",
        help="Local JATS file, directory or .tar.gz; with --xml every positional argument is a path too.",
    ),
    paper_id: list[str] = typer.Option(None, "--id", help="Paper id for --xml files without one (per path)."),
    ids_file: Path | None = typer.Option(None, "--ids-file", help="File with one id per line; '#' comments."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcomes as a JSON list."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Fetch from PMC again, even if the raw XML is cached or it came from a file."
    ),
    inline: bool = typer.Option(False, "--inline", help="Ingest ids in this process, not on the job queue."),
    wait: bool | None = typer.Option(
        None, "--wait/--no-wait", help="Queue a job and follow it to the end / only print its id "
        "(default: queue it if a worker is running, else ingest inline).",
    ),
) -> None:
    """Ingest PMC papers by id, or local JATS files, into the index. Exit 1 if any id failed."""
    all_ids = list(ids or [])
    if xml:  # `pmcqa ingest --xml a.nxml dir/ pkg.tar.gz`: the option names the first path, the rest follow
        xml = [*xml, *(Path(arg) for arg in all_ids)]
        all_ids = []
    if ids_file is not None:
        if not ids_file.is_file():
            Console(stderr=True).print(f"[red]error:[/] no such file: {escape(str(ids_file))}")
            raise typer.Exit(2)
        try:
            all_ids += read_ids_file(ids_file)
        except UnicodeDecodeError as exc:
            where = f"byte {exc.start}"
            Console(stderr=True).print(f"[red]error:[/] {escape(str(ids_file))} is not UTF-8 text ({where})")
            raise typer.Exit(2) from None
    if not all_ids and not xml:
        Console(stderr=True).print("[red]error:[/] give paper ids, --ids-file or --xml PATH")
        raise typer.Exit(2)
    paths = local_files(all_ids)
    if paths:
        named = " ".join(escape(path) for path in paths)
        message = f"[red]error:[/] not paper ids but local files: ingest with --xml {named}"
        Console(stderr=True).print(message, soft_wrap=True)  # a path broken over lines cannot be pasted
        raise typer.Exit(2)
    try:
        outcomes = None
        if all_ids and not xml and not inline:  # ids go to the job queue (see `pmcqa worker`)
            outcomes = run_queued(get_settings(), all_ids, refresh, wait, as_json)
        if outcomes is None:
            outcomes = run_ingest(
                get_settings(), all_ids, list(xml or []), list(paper_id or []), refresh, show_progress=True
            )
    except ValueError as exc:  # e.g. --id count not matching the paths
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([o.model_dump() for o in outcomes], ensure_ascii=False, indent=2))
    else:
        print_table(outcomes)
    raise typer.Exit(0 if all(o.ok for o in outcomes) else 1)


# --- queued mode -------------------------------------------------------------------------------------------
def run_queued(
    settings: Settings, ids: list[str], refresh: bool, wait: bool | None, as_json: bool
) -> list[IngestOutcome] | None:
    """`pmcqa ingest` on the job queue. `wait`: True follow the job, False print its id and exit,
    None (default) follow it if a worker serves the queue, else return None (the caller runs inline)."""
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
