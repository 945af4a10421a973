"""How fast could pmcqa's parse + chunk be in Python at all? The floor under it, beside pubmed_parser.

.venv/bin/python bench/parse_floor.py [FOLDER]      # default: ../shared/data/jats; needs pmcqa[report]

Issue 10 asks for pmcqa's parse + chunk to be as fast per file as pubmed_parser's
`parse_pubmed_paragraph(path, all_paragraph=True)`. This script measures, file by file and taking turns (so a
change in the machine's load hits every row alike), what any implementation that returns pmcqa's output as
today's Python objects must spend even if walking the XML and gathering its text cost nothing:

- lxml parse: building the tree (`etree.parse`), which both tools do first;
- objects: building the paper's models from plain values (Block, Section, ReferenceInfo, Paper, Chunk and
  PaperRecord), validated as pmcqa builds them, and without validation (`model_construct`, the cheapest way
  pydantic offers);
- counting: the chunker's token counts with the word table already warm (split each block into words, one
  dictionary lookup per word), and one sha1 per chunk id.

Rows "floor" add lxml parse + objects + counting; the last column compares each row with pubmed_parser.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Callable
from functools import partial
from itertools import repeat
from pathlib import Path

from lxml import etree
from rich.console import Console
from rich.table import Table

from pmcqa.app.corpus_report import _paper_id, corpus_files, pubmed_parser_installed
from pmcqa.core.settings import Settings
from pmcqa.index.models import Chunk, PaperRecord, ReferenceInfo
from pmcqa.ingest.chunking import Chunker, chunk_id
from pmcqa.ingest.jats import parse_jats
from pmcqa.ingest.models import Block, Paper, Section

DEFAULT_FOLDER = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "jats"


def _section_dump(section: Section) -> dict[str, object]:
    dumped = section.model_dump(exclude={"children"})
    dumped["children"] = [_section_dump(child) for child in section.children]
    return dumped


def _section_construct(values: dict[str, object]) -> Section:
    children = [_section_construct(child) for child in values["children"]]  # type: ignore[attr-defined]
    return Section.model_construct(**{**values, "children": children})


class _Values:
    """One file's output as plain values, to build again under the clock."""

    def __init__(self, paper: Paper, record: PaperRecord, chunks: list[Chunk], chunker: Chunker) -> None:
        self.paper = paper.model_dump(exclude={"blocks", "sections", "references"})
        self.blocks = [block.model_dump() for block in paper.blocks]
        self.sections = [_section_dump(section) for section in paper.sections]
        self.references = [ref.model_dump() for ref in paper.references]
        self.record = record.model_dump(exclude={"outline", "references", "chunking"})
        self.outline = record.outline
        self.chunking = record.chunking
        self.chunks = [chunk.model_dump() for chunk in chunks]
        self.params = chunker.params
        self.word_tokens = chunker.counter.word_tokens

    def build(self, construct: bool) -> None:
        make: Callable[..., object]
        if construct:
            blocks = [Block.model_construct(**b) for b in self.blocks]
            sections = [_section_construct(s) for s in self.sections]
            refs = [ReferenceInfo.model_construct(**r) for r in self.references]
            Paper.model_construct(**self.paper, blocks=blocks, sections=sections, references=refs)
            make = Chunk.model_construct
            PaperRecord.model_construct(
                **self.record, outline=self.outline, references=refs, chunking=self.chunking
            )
        else:
            blocks = [Block(**b) for b in self.blocks]
            sections = [Section.model_validate(s) for s in self.sections]
            refs = [ReferenceInfo(**r) for r in self.references]
            Paper(**self.paper, blocks=blocks, sections=sections, references=refs)
            make = Chunk
            PaperRecord(**self.record, outline=self.outline, references=refs, chunking=self.chunking)
        for chunk in self.chunks:
            make(**chunk)

    def count(self) -> None:
        tokens = self.word_tokens
        for block in self.blocks:
            sum(map(tokens.get, block["text"].split(), repeat(1)))
        for chunk in self.chunks:
            chunk_id(chunk["paper_id"], self.params, chunk["start"], chunk["end"], chunk["text"])


def _cpu(action: Callable[[], object]) -> float:
    started = time.process_time()
    action()
    return time.process_time() - started


def _parse_and_chunk(data: bytes, chunker: Chunker) -> None:
    for paper in parse_jats(data):
        chunker.chunk(paper, _paper_id(paper.pmcid, paper.doi))


def _build_all(values: list[_Values], construct: bool) -> None:
    for value in values:
        value.build(construct)


def _count_all(values: list[_Values]) -> None:
    for value in values:
        value.count()


def main(folder: Path) -> int:
    if not pubmed_parser_installed():
        print("needs pubmed_parser: pip install 'pmcqa[report]'", file=sys.stderr)
        return 2
    from pubmed_parser import parse_pubmed_paragraph  # an optional extra (`pmcqa[report]`)

    chunker = Chunker(Settings())
    files = corpus_files(folder)
    totals = dict.fromkeys(
        ["pmcqa parse + chunk", "pubmed_parser", "lxml parse", "objects, validated", "objects, constructed",
         "counting"],
        0.0,
    )  # fmt: skip
    used = 0
    for path in files:
        data = path.read_bytes()
        try:
            papers = parse_jats(data)
            outputs = [chunker.chunk(paper, _paper_id(paper.pmcid, paper.doi)) for paper in papers]
        except Exception:  # the same file the corpus report counts as pmcqa's failure
            continue
        used += 1
        values = [_Values(p, rec, chunks, chunker) for p, (rec, chunks) in zip(papers, outputs, strict=True)]
        totals["pmcqa parse + chunk"] += _cpu(partial(_parse_and_chunk, data, chunker))
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own errors on stdout
            totals["pubmed_parser"] += _cpu(partial(parse_pubmed_paragraph, str(path), all_paragraph=True))
        totals["lxml parse"] += _cpu(partial(etree.parse, str(path)))
        totals["objects, validated"] += _cpu(partial(_build_all, values, False))
        totals["objects, constructed"] += _cpu(partial(_build_all, values, True))
        totals["counting"] += _cpu(partial(_count_all, values))
    per_file = {name: 1000 * seconds / max(used, 1) for name, seconds in totals.items()}
    for objects in ("validated", "constructed"):
        floor = per_file["lxml parse"] + per_file[f"objects, {objects}"] + per_file["counting"]
        per_file[f"floor, {objects}"] = floor
    theirs = per_file["pubmed_parser"]
    table = Table(title=f"Parse + chunk floor: {folder} ({used} files; CPU ms per file)")
    for column in ("row", "cpu ms/file", "/ pubmed_parser"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for name, ms in per_file.items():
        table.add_row(name, f"{ms:.2f}", f"{ms / theirs:.2f}x")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER))
