"""`pmcqa search`: retrieve passages from one paper (`--paper`) or the whole library.

    pmcqa search "what reduced viral titres?" --paper PMC8026465 -k 5 --mode hybrid
    pmcqa search "remdesivir in ferrets" --json              # library-wide (dense, FAISS)
    pmcqa search --queries queries.jsonl --json              # batch: one {"paper_id", "query"} per line

Batch output is one JSON line per input line, in order: ``{"paper_id", "query", "passages": [...]}``, or
``{"line", "error", ...}`` for a line that cannot be answered (bad JSON, no query, unknown paper) — one bad
line never stops the batch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from pmcqa.index.models import Passage
    from pmcqa.index.retrieval import Retriever
    from pmcqa.index.store import Store

USAGE_ERROR = 2


def register(cli: typer.Typer) -> None:
    cli.command("search")(search)


def open_retriever() -> tuple[Store, Retriever]:
    """The user's store and a retriever over it (heavy imports happen here, not at `pmcqa --help`)."""
    from pmcqa.core.settings import get_settings
    from pmcqa.index.library import open_library

    # Writable: checks that the stored vectors come from the model that embeds the queries.
    library = open_library(get_settings(), writable=True)
    return library.store, library.retriever


class SearchError(ValueError):
    """A query that cannot be answered; reported, never raised to the user as a traceback."""


def resolve_paper(store: Any, paper_id: str) -> str:
    """A stored paper id for a PMCID / PMID / DOI as typed; `SearchError` when not in the library."""
    if store.get_paper(paper_id) is not None:
        return paper_id
    resolver = getattr(store, "resolve_alias", None)
    resolved = resolver(paper_id) if resolver else None
    if resolved is None:
        raise SearchError(f"paper {paper_id} is not in the library (ingest it first)")
    return resolved


def run_query(
    store: Any, retriever: Retriever, query: str, paper_id: str | None, k: int | None, mode: str
) -> dict[str, Any]:
    """One query → the JSON object printed for it."""
    if not query.strip():
        raise SearchError("empty query")
    if paper_id:
        paper_id = resolve_paper(store, paper_id)
        passages = retriever.retrieve(paper_id, query, top_k=k, mode=mode)  # type: ignore[arg-type]
    else:
        passages = retriever.search_library(query, k)
    return {"paper_id": paper_id, "query": query, "passages": [passage_json(p) for p in passages]}


def passage_json(passage: Passage) -> dict[str, Any]:
    # One definition of a search hit serves `POST /search` and `pmcqa search --json`.
    from pmcqa.app.schemas import SearchHit

    hit = SearchHit.from_passage(passage)
    hit.score = round(hit.score, 6)
    return hit.model_dump()


def read_queries(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, parsed object) or (line number, error message) for each non-blank line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg}"
            continue
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            yield number, 'expected an object with a string "query" (and an optional "paper_id")'
            continue
        yield number, item


def run_batch(
    store: Any, retriever: Retriever, lines: Iterator[str], k: int | None, mode: str
) -> Iterator[dict[str, Any]]:
    for number, item in read_queries(lines):
        if isinstance(item, str):
            yield {"line": number, "error": item}
            continue
        paper_id = item.get("paper_id")
        try:
            yield run_query(store, retriever, item["query"], str(paper_id) if paper_id else None, k, mode)
        except SearchError as exc:
            yield {"line": number, "paper_id": paper_id, "query": item["query"], "error": str(exc)}


def print_table(console: Console, result: dict[str, Any]) -> None:
    where = result["paper_id"] or "library"
    table = Table(title=f"{escape(result['query'])} — {escape(where)}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("paper / section")
    table.add_column("text")
    for rank, passage in enumerate(result["passages"], start=1):
        text = passage["text"] if len(passage["text"]) <= 400 else passage["text"][:400] + "…"
        place = f"{passage['paper_id']}\n{passage['section']}\n[{passage['start']}:{passage['end']}]"
        table.add_row(str(rank), f"{passage['score']:.4f}", escape(place), escape(text))
    console.print(table)


def search(
    query: str | None = typer.Argument(None, help="The question or keywords."),
    paper: str | None = typer.Option(
        None, "--paper", "-p", help="Search inside this paper (PMCID/PMID/DOI)."
    ),
    k: int | None = typer.Option(None, "-k", "--top-k", min=1, max=100, help="Passages (default: top_k)."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid | dense | lexical (inside one paper)."),
    queries: Path | None = typer.Option(
        None, "--queries", help='JSONL file of {"paper_id", "query"} ("-" = stdin); one JSON line out each.'
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON output (always JSON lines with --queries)."),
) -> None:
    """Retrieve passages for a query from one paper or the whole library."""
    from pmcqa.index.retrieval import MODES

    err = Console(stderr=True)
    if mode not in MODES:
        err.print(f"[bold red]error:[/] unknown mode {escape(mode)!s}; expected {', '.join(MODES)}")
        raise typer.Exit(USAGE_ERROR)
    if (query is None) == (queries is None):
        err.print("[bold red]error:[/] give either a QUERY or --queries FILE")
        raise typer.Exit(USAGE_ERROR)
    if queries is not None and str(queries) != "-" and not queries.is_file():
        err.print(f"[bold red]error:[/] no such file: {escape(str(queries))}")
        raise typer.Exit(USAGE_ERROR)

    store, retriever = open_retriever()
    if queries is not None:
        with sys.stdin if str(queries) == "-" else queries.open(encoding="utf-8") as handle:
            for result in run_batch(store, retriever, iter(handle), k, mode):
                sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
                sys.stdout.flush()
        return
    assert query is not None
    try:
        result = run_query(store, retriever, query, paper, k, mode)
    except SearchError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(USAGE_ERROR) from None
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        print_table(Console(), result)
