"""Turn a backend's claimed spans into verified citations.

Every backend (extractive or LLM) hands back `CitedSpan`s; none of them is trusted. A span survives only if it
points into a chunk that was actually retrieved (a passage or one of its neighbours) and its quote is
verbatim text of the paper at ``paper.text[start:end]``. A quote without offsets is located inside its
chunk: exactly first, then ignoring whitespace (LLMs re-flow line breaks and double spaces) and mapped back
to exact offsets of the canonical text. Anything else is dropped, never repaired into something the paper
does not say.
"""

from __future__ import annotations

import logging

from pmcqa.app.answering.base import Citation, CitedSpan, Draft
from pmcqa.index.models import Chunk, PaperRecord, Passage

log = logging.getLogger(__name__)


def retrieved_chunks(passages: list[Passage]) -> dict[str, Chunk]:
    """Chunks a backend may cite: the retrieved passages and the neighbours merged into their context."""
    chunks: dict[str, Chunk] = {}
    for passage in passages:
        chunks.setdefault(passage.chunk.chunk_id, passage.chunk)
        for neighbour in passage.neighbours:
            chunks.setdefault(neighbour.chunk_id, neighbour)
    return chunks


def _compact(text: str) -> tuple[str, list[int]]:
    """`text` without whitespace, and for each kept character its index in `text`."""
    kept: list[str] = []
    index: list[int] = []
    for i, char in enumerate(text):
        if not char.isspace():
            kept.append(char)
            index.append(i)
    return "".join(kept), index


def locate_quote(quote: str, chunk: Chunk) -> tuple[int, int] | None:
    """Paper offsets of `quote` inside `chunk`: exact match first, then whitespace-insensitive."""
    quote = quote.strip()
    if not quote:
        return None
    at = chunk.text.find(quote)
    if at >= 0:
        return chunk.start + at, chunk.start + at + len(quote)
    compact_quote, _ = _compact(quote)
    compact_text, index = _compact(chunk.text)
    if not compact_quote:
        return None
    at = compact_text.find(compact_quote)
    if at < 0:
        return None
    # Map the first and last matched characters back; the slice between them is the paper's own text.
    return chunk.start + index[at], chunk.start + index[at + len(compact_quote) - 1] + 1


def _resolve(span: CitedSpan, chunk: Chunk, paper: PaperRecord) -> tuple[int, int] | None:
    text = paper.text
    if span.start is not None and span.end is not None:
        start, end = span.start, span.end
        inside = chunk.start <= start < end <= chunk.end
        if inside and (span.quote is None or text[start:end] == span.quote):
            return start, end
        # Offsets that disagree with the quote: trust neither blindly, try to find the quote instead.
        if span.quote is None:
            return None
    if span.quote is not None:
        return locate_quote(span.quote, chunk)
    return chunk.start, chunk.end  # no quote, no offsets: the whole chunk


def finalize(draft: Draft, paper: PaperRecord, passages: list[Passage]) -> list[Citation]:
    """Verified citations for `draft`, in the order claimed; invented or unretrieved spans are dropped."""
    if draft.abstained:
        return []
    allowed = retrieved_chunks(passages)
    citations: list[Citation] = []
    seen: set[tuple[int, int]] = set()
    for span in draft.cited:
        chunk = allowed.get(span.chunk_id)
        if chunk is None:
            log.info("dropping citation of %s: chunk was not retrieved", span.chunk_id)
            continue
        located = _resolve(span, chunk, paper)
        if located is None:
            log.info("dropping citation of %s: quote not found verbatim in the chunk", span.chunk_id)
            continue
        start, end = located
        quote = paper.text[start:end]
        # The contract, checked right before the citation leaves: the paper's canonical text at [start, end)
        # is the chunk's own text there (a stale chunk whose offsets drifted from paper.text fails here).
        if not quote.strip() or chunk.text[start - chunk.start : end - chunk.start] != quote:
            log.warning("dropping citation of %s: chunk text disagrees with the paper text", span.chunk_id)
            continue
        if (start, end) in seen:
            continue
        seen.add((start, end))
        citations.append(
            Citation(
                chunk_id=chunk.chunk_id,
                section=chunk.section,
                label=chunk.label,
                quote=quote,
                start=start,
                end=end,
            )
        )
    return citations
