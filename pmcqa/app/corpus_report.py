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
  excluded), and cpu ms/file. CPU time is the fairer figure on a shared machine. The two tools take turns file
  by file (pmcqa, then pubmed_parser, on the same file), so a change in the machine's load hits both alike;
  the caption splits pmcqa's time into parse/chunk and gives the ratio of CPU time per file.
- the row "lxml parse only" (with pubmed_parser installed) times what both tools must do first, building the
  lxml tree of each file (`etree.parse(path)`, as pubmed_parser does): the floor under any lxml-based parser,
  and most of pubmed_parser's own time. The caption says how much of each tool's time lies above it.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lxml import etree
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


LXML_ROW = "lxml parse only"


def corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _count_sections(sections: list[Section]) -> int:
    return sum(1 + _count_sections(s.children) for s in sections)


def _paper_id(paper_pmcid: str | None, paper_doi: str | None) -> str:
    paper_id = own_paper_id(paper_pmcid, paper_doi)
    if paper_id is None:
        raise ValueError(NO_OWN_ID)
    return paper_id


class _Pmcqa:
    """pmcqa's parse + chunk, file by file, into its row."""

    def __init__(self, settings: Settings, files: int) -> None:
        self.chunker = Chunker(settings)
        _ = self.chunker.counter  # loaded before the clock starts: a one-off cost
        self.row = ReportRow(
            "pmcqa", files=files, sections=0, tables=0, captions=0, chunks=0, chunk_cpu_seconds=0.0
        )

    def add(self, path: Path) -> None:
        row = self.row
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            papers = parse_jats(path.read_bytes())
            if not papers:
                raise ValueError("no article")
            chunk_started = time.process_time()
            chunks = [self.chunker.chunk(p, _paper_id(p.pmcid, p.doi))[1] for p in papers]
            assert row.chunk_cpu_seconds is not None
            row.chunk_cpu_seconds += time.process_time() - chunk_started
        except Exception:  # a report counts failures instead of stopping at the first
            row.failures += 1
            papers, chunks = [], []
        row.seconds += time.perf_counter() - started
        row.cpu_seconds += time.process_time() - cpu_started
        for paper, paper_chunks in zip(papers, chunks, strict=True):
            kinds = [block.kind for block in paper.blocks]
            row.sections = (row.sections or 0) + _count_sections(paper.sections)
            row.paragraphs += kinds.count("paragraph")
            row.tables = (row.tables or 0) + kinds.count("table")
            row.captions = (row.captions or 0) + kinds.count("caption")
            row.chunks = (row.chunks or 0) + len(paper_chunks)
            row.characters += len(paper.canonical_text)


class _PubmedParser:
    """pubmed_parser's `parse_pubmed_paragraph(path, all_paragraph=True)`, file by file, into its row."""

    def __init__(self, files: int) -> None:
        # An optional extra (`pmcqa[report]`): see installed().
        from pubmed_parser import parse_pubmed_paragraph

        self.parse = parse_pubmed_paragraph
        self.row = ReportRow("pubmed_parser", files=files)

    def add(self, path: Path) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its own errors on stdout
                paragraphs = self.parse(str(path), all_paragraph=True)
        except Exception:
            self.row.failures += 1
            paragraphs = []
        self.row.seconds += time.perf_counter() - started
        self.row.cpu_seconds += time.process_time() - cpu_started
        self.row.paragraphs += len(paragraphs)
        self.row.characters += sum(len(p["text"]) for p in paragraphs)


class _LxmlParse:
    """lxml's tree building alone (`etree.parse(path)`, as pubmed_parser calls it), file by file."""

    def __init__(self, files: int) -> None:
        self.row = ReportRow(LXML_ROW, files=files)

    def add(self, path: Path) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            etree.parse(str(path))
        except etree.LxmlError:
            self.row.failures += 1
        self.row.seconds += time.perf_counter() - started
        self.row.cpu_seconds += time.process_time() - cpu_started


def pubmed_parser_installed() -> bool:
    try:
        import pubmed_parser  # noqa: F401  (an optional extra: `pmcqa[report]`)
    except ImportError:
        return False
    return True


def corpus_report(files: Sequence[Path], settings: Settings | None = None) -> list[ReportRow]:
    """Both tools over the same files, taking turns file by file; pubmed_parser's row, and the lxml floor
    beside it, only when it is installed (`pmcqa[report]`)."""
    ours = _Pmcqa(settings or Settings(), len(files))
    theirs = _PubmedParser(len(files)) if pubmed_parser_installed() else None
    floor = _LxmlParse(len(files)) if theirs is not None else None
    for path in files:
        ours.add(path)
        if theirs is not None and floor is not None:
            theirs.add(path)
            floor.add(path)
    if theirs is None or floor is None:
        return [ours.row]
    return [ours.row, theirs.row, floor.row]


def cpu_ratio(rows: Sequence[ReportRow]) -> float | None:
    """pmcqa's CPU time per file over pubmed_parser's (None without both rows)."""
    by_tool = {row.tool: row for row in rows}
    ours, theirs = by_tool.get("pmcqa"), by_tool.get("pubmed_parser")
    if ours is None or theirs is None or not theirs.cpu_seconds or not ours.files or not theirs.files:
        return None
    return (ours.cpu_seconds / ours.files) / (theirs.cpu_seconds / theirs.files)


def render(rows: Sequence[ReportRow], title: str) -> Table:
    notes = [
        f"{r.tool}: parse {r.cpu_seconds - r.chunk_cpu_seconds:.2f} + chunk {r.chunk_cpu_seconds:.2f} cpu s"
        for r in rows
        if r.chunk_cpu_seconds is not None
    ]
    ratio = cpu_ratio(rows)
    if ratio is not None:
        notes.append(f"pmcqa parse + chunk / pubmed_parser, CPU time per file: {ratio:.2f}x")
    by_tool = {row.tool: row for row in rows}
    floor = by_tool.get(LXML_ROW)
    if floor is not None and floor.files:
        floor_ms = 1000 * floor.cpu_seconds / floor.files
        above = [
            f"{tool} {1000 * by_tool[tool].cpu_seconds / by_tool[tool].files - floor_ms:.1f}"
            for tool in ("pmcqa", "pubmed_parser")
            if tool in by_tool and by_tool[tool].files
        ]
        notes.append(f"cpu ms/file above the lxml parse: {', '.join(above)}")
    table = Table(title=title, caption="; ".join(notes) or None)
    columns = ["files", "sections", "paragraphs", "tables", "captions", "chunks", "characters", "failures"]
    table.add_column("tool")
    for column in [*columns, "seconds", "cpu s", "cpu ms/file"]:
        table.add_column(column, justify="right")
    for row in rows:
        floor = row.tool == LXML_ROW  # counts nothing: its only figures are the times
        cells = [
            (
                "—"
                if getattr(row, c) is None or (floor and c not in ("files", "failures"))
                else f"{getattr(row, c):,}"
            )
            for c in columns
        ]
        per_file = 1000 * row.cpu_seconds / row.files if row.files else 0.0
        table.add_row(row.tool, *cells, f"{row.seconds:.1f}", f"{row.cpu_seconds:.2f}", f"{per_file:.1f}")
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
    if not files:
        message = f"error: no JATS files ({', '.join(sorted(SUFFIXES))}) in {folder}"
        Console(stderr=True).print(message, markup=False, highlight=False)
        return 2
    console.print(render(corpus_report(files), f"JATS corpus report: {folder} ({len(files)} files)"))
    if not pubmed_parser_installed():
        console.print(PUBMED_PARSER_MISSING, markup=False, highlight=False)
    return 0
