"""The nouns shared by ingest, index and app: what a stored paper and its chunks look like.

`index` owns these because both sides of it (ingest writes, app reads) depend on index, never on each other.
Invariant: for every chunk, ``paper.text[chunk.start:chunk.end] == chunk.text`` — the canonical text is what
citations are checked against, verbatim.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pmcqa.core.status import PaperStatus, Status

ChunkKind = Literal[
    "title",
    "abstract",
    "paragraph",
    "list",
    "boxed-text",
    "caption",
    "table",
    "formula",
    "supplementary",
    "back",  # acknowledgements, notes (data availability, ...), appendices
    "sub-article",  # peer reviews, decision letters, translations: never the paper's own claims
]


class ReferenceInfo(BaseModel):
    """One entry of the reference list, enough to match "according to Wu et al." to citing passages."""

    id: str
    label: str | None = None
    authors: list[str] = Field(default_factory=list, description="Surnames in order.")
    year: str | None = None
    title: str | None = None
    source: str | None = None
    doi: str | None = None
    pmid: str | None = None


class OutlineEntry(BaseModel):
    """One section of the paper's outline, in document order."""

    path: list[str]
    sec_type: str | None = None
    depth: int = 0


class ChunkingParams(BaseModel):
    """Recorded with every paper so a changed chunker (or tokenizer) is detected."""

    version: int
    tokenizer: str
    max_tokens: int
    min_tokens: int

    def key(self) -> str:
        return f"v{self.version}:{self.tokenizer}:{self.max_tokens}:{self.min_tokens}"


class Chunk(BaseModel):
    chunk_id: str = Field(description="Stable: the same input always gives the same ids.")
    paper_id: str = Field(description="Canonical PMCID, e.g. PMC8026465.")
    ordinal: int = Field(description="Position in the paper, 0-based, document order.")
    section_path: list[str] = Field(default_factory=list)
    kind: ChunkKind
    text: str
    start: int = Field(description="Offset of `text` in the paper's canonical text.")
    end: int = Field(description="End offset (exclusive).")
    ref_ids: list[str] = Field(default_factory=list, description="Reference ids cited inside the chunk.")
    label: str | None = Field(None, description='Label of a caption/table chunk, e.g. "Table 2".')

    @property
    def section(self) -> str:
        path = " > ".join(part for part in self.section_path if part)
        # The title has no section; naming it keeps citations of it readable.
        return path or ("Title" if self.kind == "title" else "")


class PaperRecord(BaseModel):
    """What the index stores about a paper (the parsed Paper, flattened for storage and answering)."""

    paper_id: str
    pmid: str | None = None
    doi: str | None = None
    title: str = ""
    journal: str | None = None
    year: str | None = None
    license: str | None = None
    article_type: str | None = None
    status: PaperStatus = Status.INGESTED
    text: str = Field("", description="Canonical text; chunk spans point into it.")
    outline: list[OutlineEntry] = Field(default_factory=list)
    references: list[ReferenceInfo] = Field(default_factory=list)
    chunking: ChunkingParams | None = None
    source: str | None = Field(
        None, description="Where it came from: 'efetch', 'upload' (POST /papers) or a file path."
    )


class Passage(BaseModel):
    """A retrieved chunk with its score (and the neighbours merged into its context, if any)."""

    chunk: Chunk
    score: float
    rank: int
    dense_score: float | None = None
    lexical_score: float | None = None
    neighbours: list[Chunk] = Field(default_factory=list, description="Adjacent chunks added for context.")
