"""Corpus report (`pmcqa report FOLDER`): pmcqa's parser + chunker beside pubmed_parser on a folder of JATS.

pubmed_parser is optional (``pip install 'pmcqa[report]'``); without it the report prints pmcqa's row and says
which extra to install.

Columns (per tool, totals over the folder):
- files: XML/NXML files tried; failures: files that raised (for pmcqa also: no <article> found, or an article
  with no PMCID or DOI, which `pmcqa ingest --xml` would refuse without --id);
- sections: pmcqa's body section nodes; paragraphs: pmcqa blocks of kind "paragraph" (all parts) vs
  pubmed_parser's `//body//p` paragraphs (`parse_pubmed_paragraph(path, all_paragraph=True)`);
- tables / captions: pmcqa blocks of those kinds; chunks: pmcqa chunks with the configured budget;
- characters: pmcqa canonical text (every block) vs the summed pubmed_parser paragraph texts;
- seconds / cpu s: wall and process CPU time of parsing (+ chunking for pmcqa; the tokenizer load is
  excluded). CPU time is the fairer figure on a shared machine; the caption splits pmcqa's into parse/chunk.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pmcqa.core.ids import NO_OWN_ID, own_paper_id
from pmcqa.core.settings import Settings
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.jats import parse_jats
from pmcqa.ingest.models import Section

SUFFIXES = {".xml", ".nxml"}
PUBMED_PARSER_MISSING = (
    "pubmed_parser is not installed, so only pmcqa's row is shown; "
    "for the side-by-side row install the report extra: pip install 'pmcqa[report]'"
)


@dataclass
class ReportRow:
    """One tool's totals; None marks a column the tool does not produce."""

    tool: str
    files: int = 0
    sections: int | None = None
    paragraphs: int = 0
    tables: int | None = None
    captions: int | None = None
    chunks: int | None = None
    characters: int = 0
    failures: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    chunk_cpu_seconds: float | None = None


def corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _count_sections(sections: list[Section]) -> int:
    return sum(1 + _count_sections(s.children) for s in sections)


def _paper_id(paper_pmcid: str | None, paper_doi: str | None) -> str:
    paper_id = own_paper_id(paper_pmcid, paper_doi)
    if paper_id is None:
        raise ValueError(NO_OWN_ID)
    return paper_id


def pmcqa_row(files: Sequence[Path], settings: Settings) -> ReportRow:
    chunker = Chunker(settings)
    _ = chunker.counter  # loaded before the clock starts: a one-off cost
    totals = dict.fromkeys(["sections", "paragraphs", "tables", "captions", "chunks", "characters"], 0)
    failures = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    chunk_cpu = 0.0
    for path in files:
        try:
            papers = parse_jats(path.read_bytes())
            if not papers:
                raise ValueError("no article")
            chunk_started = time.process_time()
            chunks = [chunker.chunk(p, _paper_id(p.pmcid, p.doi))[1] for p in papers]
            chunk_cpu += time.process_time() - chunk_started
        except Exception:  # a report counts failures instead of stopping at the first
            failures += 1
            continue
        for paper, paper_chunks in zip(papers, chunks, strict=True):
            kinds = [block.kind for block in paper.blocks]
            totals["sections"] += _count_sections(paper.sections)
            totals["paragraphs"] += kinds.count("paragraph")
            totals["tables"] += kinds.count("table")
            totals["captions"] += kinds.count("caption")
            totals["chunks"] += len(paper_chunks)
            totals["characters"] += len(paper.canonical_text)
    return ReportRow(
        "pmcqa",
        files=len(files),
        failures=failures,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        chunk_cpu_seconds=chunk_cpu,
        **totals,
    )


def pubmed_parser_row(files: Sequence[Path]) -> ReportRow:
    from pubmed_parser import parse_pubmed_paragraph  # an optional extra (`pmcqa[report]`): see installed()

    row = ReportRow("pubmed_parser", files=len(files))
    started, cpu_started = time.perf_counter(), time.process_time()
    for path in files:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its own errors on stdout
                paragraphs = parse_pubmed_paragraph(str(path), all_paragraph=True)
        except Exception:
            row.failures += 1
            continue
        row.paragraphs += len(paragraphs)
        row.characters += sum(len(p["text"]) for p in paragraphs)
    row.seconds = time.perf_counter() - started
    row.cpu_seconds = time.process_time() - cpu_started
    return row


def pubmed_parser_installed() -> bool:
    try:
        import pubmed_parser  # noqa: F401  (an optional extra: `pmcqa[report]`)
    except ImportError:
        return False
    return True


def corpus_report(files: Sequence[Path], settings: Settings | None = None) -> list[ReportRow]:
    """Both tools over the same files; pubmed_parser's row only when it is installed (`pmcqa[report]`)."""
    rows = [pmcqa_row(files, settings or Settings())]
    if pubmed_parser_installed():
        rows.append(pubmed_parser_row(files))
    return rows


def render(rows: Sequence[ReportRow], title: str) -> Table:
    splits = [
        f"{r.tool}: parse {r.cpu_seconds - r.chunk_cpu_seconds:.1f} + chunk {r.chunk_cpu_seconds:.1f} cpu s"
        for r in rows
        if r.chunk_cpu_seconds is not None
    ]
    table = Table(title=title, caption="; ".join(splits) or None)
    columns = ["files", "sections", "paragraphs", "tables", "captions", "chunks", "characters", "failures"]
    table.add_column("tool")
    for column in [*columns, "seconds", "cpu s"]:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [("—" if getattr(row, c) is None else f"{getattr(row, c):,}") for c in columns]
        table.add_row(row.tool, *cells, f"{row.seconds:.1f}", f"{row.cpu_seconds:.1f}")
    return table


def report(folder: Path, console: Console | None = None) -> int:
    """Print the report for a folder; 2 (with a message on stderr) when it is not a folder."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: no terminal width to respect, keep the numbers whole
            console = Console(width=160)
    if not folder.is_dir():
        Console(stderr=True).print(f"error: not a folder: {folder}", markup=False, highlight=False)
        return 2
    files = corpus_files(folder)
    console.print(render(corpus_report(files), f"JATS corpus report: {folder} ({len(files)} files)"))
    if not pubmed_parser_installed():
        console.print(PUBMED_PARSER_MISSING, markup=False, highlight=False)
    return 0
