"""`pmcqa papers`: the papers in the library, like GET/DELETE /papers (through the same `Library` facade).

    pmcqa papers list [--offset N --limit N] [--json]
    pmcqa papers show PMC8026465 [--json]          # metadata, status, outline
    pmcqa papers text PMC8026465 --start 2212 --end 2254 --context 200
    pmcqa papers delete 10.1371/journal.pone.0008519

Ids are printed whole (they are what a user copies). A refusal exits with its code (3: not in the library,
4: being ingested, 2: invalid input). No embedding model is loaded: these commands read and delete only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.markup import escape
from rich.table import Table

from pmcqa.app.commands.output import add_id_column, print_table
from pmcqa.app.errors import ServiceError
from pmcqa.app.routes.papers import MAX_OFFSET
from pmcqa.app.schemas import PaperDetail, PaperList, PaperSummary
from pmcqa.app.service import Library
from pmcqa.core.settings import Settings
from pmcqa.index.store import require_library

papers = typer.Typer(help="List, show, read and delete the papers in the library.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    cli.add_typer(papers, name="papers")


@contextmanager
def _library() -> Iterator[Library]:
    settings = Settings()
    require_library(settings)  # a mistyped PMCQA_DATA_DIR: refused, not created empty
    library = Library.for_papers(settings)
    try:
        yield library
    except ServiceError as exc:  # its exit code tells "not in the library" from "being ingested"
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(exc.exit_code) from None
    finally:
        library.close()


@papers.command("list")
def list_papers(
    offset: int = typer.Option(0, "--offset", min=0, max=MAX_OFFSET, help="Papers to skip."),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Papers to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the body of GET /papers)."),
) -> None:
    """The stored papers, most recently stored first."""
    with _library() as library:
        page = library.papers(offset, limit)
    listing = PaperList(
        total=page.total,
        offset=offset,
        limit=limit,
        papers=[PaperSummary.from_record(r, page.statuses.get(r.paper_id)) for r in page.papers],
    )
    if as_json:
        typer.echo(listing.model_dump_json(indent=2))
        return
    table = Table(title=f"{listing.total} papers (showing {offset + 1}-{offset + len(listing.papers)})")
    add_id_column(table, "paper id", [p.paper_id for p in listing.papers])
    add_id_column(table, "status", [p.status for p in listing.papers])  # no-full-text: abstract only
    add_id_column(table, "pmid", [p.pmid or "" for p in listing.papers])
    add_id_column(table, "doi", [p.doi or "" for p in listing.papers])
    table.add_column("year")
    table.add_column("title")
    for paper in listing.papers:
        table.add_row(
            paper.paper_id,
            paper.status,
            paper.pmid or "",
            paper.doi or "",
            paper.year or "",
            escape(paper.title),
        )
    print_table(table)


@papers.command("show")
def show(
    paper_id: str = typer.Argument(..., help="PMCID, PMID (pmid:123) or DOI."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the body of GET /papers/{id})."),
) -> None:
    """One paper: ids, title, ingest status, size and outline."""
    with _library() as library:
        detail = PaperDetail.from_view(library.paper(paper_id))
    if as_json:
        typer.echo(detail.model_dump_json(indent=2))
        return
    for label, value in (
        ("paper id", detail.paper_id),
        ("pmid", detail.pmid),
        ("doi", detail.doi),
        ("title", detail.title),
        ("journal", detail.journal),
        ("year", detail.year),
        ("status", detail.status),
        ("license", detail.license),
        ("size", f"{detail.chars} characters, {detail.chunks} chunks" if detail.chars else None),
    ):
        if value:
            typer.echo(f"{label:>9}: {value}")
    if detail.outline:
        typer.echo("  outline:")
        for entry in detail.outline:
            typer.echo(f"    {'  ' * entry.depth}{' > '.join(entry.path[-1:])}")


@papers.command("text")
def text(
    paper_id: str = typer.Argument(..., help="PMCID, PMID (pmid:123) or DOI."),
    start: int = typer.Option(0, "--start", min=0, help="Start of the span (a citation's start)."),
    end: int | None = typer.Option(None, "--end", min=0, help="End of the span (exclusive)."),
    context: int = typer.Option(0, "--context", min=0, help="Characters to add on either side."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the body of GET /papers/{id}/text)."),
) -> None:
    """Canonical text of a paper around a span, e.g. to read a citation in context."""
    from dataclasses import asdict

    with _library() as library:
        window = library.text(paper_id, start, end, context)
    if as_json:
        typer.echo(json.dumps(asdict(window), indent=2, ensure_ascii=False))
        return
    typer.echo(window.text)


@papers.command("delete")
def delete(
    paper_id: str = typer.Argument(..., help="PMCID, PMID (pmid:123) or DOI."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the body of DELETE /papers/{id})."),
) -> None:
    """Remove a paper (its chunks, vectors and aliases) from the library."""
    with _library() as library:
        deleted = library.delete(paper_id)
    typer.echo(json.dumps({"deleted": deleted}) if as_json else f"deleted {deleted}")
