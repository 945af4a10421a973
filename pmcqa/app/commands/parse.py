"""`pmcqa parse FILE`: parse a local JATS/NXML file and show the Paper and its chunks.

Nothing is stored and nothing goes to the network. The chunks' paper id follows the rule of
`pmcqa ingest --xml` (`pmcqa.core.ids`): the ``--id`` given (a PMCID or DOI), else the paper's PMCID, else its
DOI.

Errors (missing file, not JATS) print one line on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from pmcqa.core.ids import NO_OWN_ID, InvalidPaperId, given_paper_id, own_paper_id
from pmcqa.core.settings import get_settings
from pmcqa.index.models import Chunk
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.jats import parse_jats
from pmcqa.ingest.models import Paper, Section

USAGE_ERROR = 2


def register(cli: typer.Typer) -> None:
    cli.command("parse")(parse)


def fail(message: str) -> typer.Exit:
    """Print a one-line error on stderr and return the exit to raise (code 2, no traceback)."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(USAGE_ERROR)


def read_papers(file: Path) -> list[Paper]:
    """Parse a file into papers, turning every way it can go wrong into a clear `fail`."""
    if not file.is_file():
        raise fail(f"no such file: {file}")
    limit = get_settings().max_article_bytes
    if (size := file.stat().st_size) > limit:
        raise fail(
            f"{file} is {size} bytes, over the {limit}-byte limit of one article (PMCQA_MAX_ARTICLE_BYTES)"
        )

    try:
        papers = parse_jats(file.read_bytes())
    except Exception as exc:  # any parser error means "not a JATS article we can read"
        raise fail(f"{file} is not a readable JATS article: {exc}") from None
    if not papers:
        raise fail(f"{file} holds no JATS <article>")
    return papers


def given_id(text: str) -> str:
    """`--id` in any accepted spelling ("pmc123", "PMC123.1", "doi:10.…") → the canonical PMCID or DOI."""
    try:
        return given_paper_id(text)
    except InvalidPaperId as exc:
        raise fail(f"--id: {exc}") from None


def chunk_papers(
    papers: list[Paper], file: Path, override: str | None
) -> list[tuple[Paper, str, list[Chunk]]]:
    chunker = Chunker(get_settings())
    out = []
    for n, paper in enumerate(papers):
        paper_id = override or own_paper_id(paper.pmcid, paper.doi)
        if paper_id is None:
            where = f"{file}" if len(papers) == 1 else f"article {n + 1} of {file}"
            raise fail(f"{where}: {NO_OWN_ID}")
        _, chunks = chunker.chunk(paper, paper_id)
        out.append((paper, paper_id, chunks))
    return out


def parse(
    file: Path = typer.Argument(..., help="A JATS / NXML file (article, PMC articleset or OAI record)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"paper": ..., "chunks": [...]} as JSON.'),
    paper_id: str | None = typer.Option(
        None, "--id", help="Paper id for the chunks, a PMCID or DOI (default: its PMCID, else its DOI)."
    ),
) -> None:
    """Parse a local JATS file and show the paper and its chunks."""
    if paper_id is not None:
        paper_id = given_id(paper_id)
    papers = read_papers(file)
    if paper_id and len(papers) > 1:
        raise fail(f"--id names one paper but {file} holds {len(papers)}")
    results = chunk_papers(papers, file, paper_id)
    if as_json:
        documents = [_as_document(paper, chunks) for paper, _, chunks in results]
        # One paper prints one object; an articleset prints a list of them.
        payload: Any = documents[0] if len(documents) == 1 else documents
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
        return
    console = Console()
    for paper, pid, chunks in results:
        _print_summary(console, paper, pid, chunks)


def _as_document(paper: Paper, chunks: list[Chunk]) -> dict[str, Any]:
    return {"paper": paper.model_dump(mode="json"), "chunks": [c.model_dump(mode="json") for c in chunks]}


def _add_sections(tree: Tree, sections: list[Section]) -> None:
    for section in sections:
        name = " ".join(part for part in (section.label, section.title) if part) or "(untitled)"
        _add_sections(tree.add(escape(name)), section.children)


def _print_summary(console: Console, paper: Paper, paper_id: str, chunks: list[Chunk]) -> None:
    console.print(f"[bold]{escape(paper.title or '(no title)')}[/]", highlight=False)
    ids = ", ".join(
        f"{k}={v}" for k, v in (("pmcid", paper.pmcid), ("pmid", paper.pmid), ("doi", paper.doi)) if v
    )
    # Metadata is publisher text: printed without markup so a "[...]" in it is shown, not interpreted.
    console.print(f"paper id: {paper_id}   {ids or '(no ids)'}", highlight=False, markup=False)
    facts = [paper.journal, paper.year, paper.article_type, paper.license]
    console.print(" · ".join(f for f in facts if f), highlight=False, markup=False)
    if not paper.full_text:
        note = "publisher restricts the full text" if paper.restricted else "abstract/metadata only"
        console.print(f"[yellow]no full text[/] ({note})")
    if paper.sections:
        outline = Tree("sections")
        _add_sections(outline, paper.sections)
        console.print(outline)
    else:
        console.print("sections: (none)")
    kinds: dict[str, int] = {}
    for chunk in chunks:
        kinds[chunk.kind] = kinds.get(chunk.kind, 0) + 1
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    counts = f"{len(paper.blocks)} blocks, {len(paper.references)} references, {len(chunks)} chunks"
    console.print(f"{counts} ({by_kind})", highlight=False)
