"""The parsed paper: plain typed data produced by `ingest.jats` and consumed by `ingest.chunking`.

A Paper's content is a flat list of `Block`s in document order (title, abstracts, body, back matter, floats,
sub-articles). The canonical text of the paper is the block texts joined by a blank line; `Paper.block_spans`
gives each block's offsets in it, so chunk offsets (and later citations) can be checked verbatim.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pmcqa.index.models import ChunkKind, ReferenceInfo

BLOCK_SEPARATOR = "\n\n"

Part = Literal["front", "body", "back", "floats", "sub-article"]


class Block(BaseModel):
    """One unit of text: a paragraph, list, caption, linearized table, formula, ..."""

    kind: ChunkKind
    text: str
    section_path: list[str] = Field(default_factory=list, description='e.g. ["Results", "Kidney organoids"]')
    part: Part = "body"
    ref_ids: list[str] = Field(default_factory=list, description="bibr xref targets, IDREFS split.")
    ref_mentions: list[tuple[int, str]] = Field(
        default_factory=list,
        description="(offset in `text`, reference id) of each bibr citation whose place is known; a table "
        "row's citations sit at the start of its line. `ref_ids` also holds the others (e.g. in formulas).",
    )
    label: str | None = Field(None, description='"Table 2", "Figure 3", "(1)".')
    xml_id: str | None = None
    sub_article: str | None = Field(None, description="id or type of the sub-article it belongs to.")


class Section(BaseModel):
    """A node of the body's section tree."""

    label: str | None = None
    title: str | None = None
    sec_type: str | None = None
    path: list[str] = Field(default_factory=list)
    children: list[Section] = Field(default_factory=list)


class Paper(BaseModel):
    pmcid: str | None = None
    pmid: str | None = None
    doi: str | None = None
    title: str = ""
    journal: str | None = None
    year: str | None = None
    license: str | None = None
    article_type: str | None = None
    full_text: bool = Field(True, description="False when the body is missing or the publisher restricts it.")
    restricted: bool = Field(
        False, description="The 'publisher does not allow downloading' comment is present."
    )
    sections: list[Section] = Field(default_factory=list, description="Body section tree.")
    blocks: list[Block] = Field(default_factory=list)
    references: list[ReferenceInfo] = Field(default_factory=list)

    @property
    def canonical_text(self) -> str:
        return BLOCK_SEPARATOR.join(block.text for block in self.blocks)

    @property
    def block_spans(self) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        offset = 0
        for block in self.blocks:
            spans.append((offset, offset + len(block.text)))
            offset += len(block.text) + len(BLOCK_SEPARATOR)
        return spans
