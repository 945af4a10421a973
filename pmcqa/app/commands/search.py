"""`pmcqa search`: retrieve passages from one paper (`--paper`) or the whole library.

    pmcqa search "what reduced viral titres?" --paper PMC8026465 -k 5 --mode hybrid
    pmcqa search "remdesivir in ferrets" --json              # library-wide (dense, FAISS)
    pmcqa search --queries queries.jsonl --json              # batch: one {"paper_id", "query"} per line

Batch output is one JSON line per input line, in order: ``{"paper_id", "query", "passages": [...]}``, or
``{"line", "error", ...}`` for a line that cannot be answered (bad JSON, no query, unknown paper) — one bad
line never stops the batch. Searching goes through the service facade (`Library.search`), as `POST /search`
does: the same id forms, refusals and messages; a refusal of a single query exits with its code (3: the paper
is not in the library, 4: it is being ingested, 2: invalid input).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pmcqa.app.errors import ServiceError
from pmcqa.app.schemas import SearchHit
from pmcqa.app.service import Library
from pmcqa.core.settings import Settings
from pmcqa.core.text import has_unencodable
from pmcqa.index.models import Passage
from pmcqa.index.retrieval import MODES
from pmcqa.index.store import require_library

USAGE_ERROR = 2


def register(cli: typer.Typer) -> None:
    cli.command("search")(search)


def open_library() -> Library:
    """The user's library, without an answer backend (the embedding model loads here); `LibraryNotFound`
    where there is none (nothing is created)."""
    settings = Settings()
    require_library(settings)
    return Library.create(settings, with_backend=False)


def run_query(library: Library, query: str, paper_id: str | None, k: int | None, mode: str) -> dict[str, Any]:
    """One query → the JSON object printed for it; a refusal raises `ServiceError`."""
    result = library.search(query, paper_id, k, mode)
    return {
        "paper_id": result.paper_id,
        "query": query,
        "passages": [passage_json(p) for p in result.passages],
    }


def passage_json(passage: Passage) -> dict[str, Any]:
    # One definition of a search hit serves `POST /search` and `pmcqa search --json`.
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


def json_line(result: dict[str, Any]) -> str:
    """`result` as one JSON line: readable UTF-8, or \\u escapes where it holds text no UTF-8 can carry (a
    refused query echoed back with its lone surrogate)."""
    line = json.dumps(result, ensure_ascii=False)
    return json.dumps(result) if has_unencodable(line) else line


def run_batch(library: Library, lines: Iterator[str], k: int | None, mode: str) -> Iterator[dict[str, Any]]:
    for number, item in read_queries(lines):
        if isinstance(item, str):
            yield {"line": number, "error": item}
            continue
        paper_id = item.get("paper_id")
        try:
            yield run_query(library, item["query"], str(paper_id) if paper_id else None, k, mode)
        except ServiceError as exc:
            yield {"line": number, "paper_id": paper_id, "query": item["query"], "error": exc.detail}


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

    library = open_library()
    try:
        if queries is not None:
            # Bytes that are not UTF-8 stay in the line as lone surrogates, so that line (only) answers
            # "not valid Unicode text" and the batch goes on.
            source = sys.stdin.buffer if str(queries) == "-" else queries.open("rb")
            with io.TextIOWrapper(source, encoding="utf-8", errors="surrogateescape") as handle:
                for result in run_batch(library, iter(handle), k, mode):
                    sys.stdout.write(json_line(result) + "\n")
                    sys.stdout.flush()
            return
        assert query is not None
        result = run_query(library, query, paper, k, mode)
    except ServiceError as exc:  # the same refusals, messages and exit codes as `pmcqa ask`
        err.print(f"[bold red]error:[/] {escape(exc.detail)}")
        raise typer.Exit(exc.exit_code) from None
    finally:
        library.close()
    if as_json:
        sys.stdout.write(json_line(result) + "\n")
    else:
        print_table(Console(), result)
