"""Paper → Chunks: section-aware, token-budgeted, verbatim slices of the paper's canonical text.

Rules (see the README section "Chunking"):
- A chunk never spans two sections, two parts (front/body/back/floats/sub-article) or two sub-articles.
- Titles, captions, tables and supplementary items (and any labelled block but a numbered formula) are
  chunks of their own and keep their label.
- A block over the token budget splits: tables by rows, text at sentence boundaries (the shared splitter,
  `pmcqa.core.text.split_sentences`), an over-long sentence at word boundaries. Split pieces never merge
  with neighbouring blocks.
- Short neighbouring text blocks of one section merge while the chunk is under `min_tokens`, or while the
  next block is (a tiny trailing paragraph joins the chunk before it), and the merged chunk stays within
  `max_tokens`. Paragraphs, lists and display formulas merge with each other (a formula reads as part of the
  paragraph around it); abstracts, back matter, boxed text and sub-article blocks merge only with blocks of
  their own kind. A split block's last piece may stay small: the piece before it is full, and it does not
  merge with the next block, so no chunk starts inside one block and ends inside another.
- A chunk's `ref_ids` are the references cited inside it: a split piece gets those whose citation lies in
  its span (plus any whose place in the block is unknown, e.g. inside a formula), not the whole block's.
- Offsets point into `Paper.canonical_text` and ``canonical_text[start:end] == chunk.text`` exactly: merged
  blocks keep the blank-line separator between them, whitespace is trimmed by moving offsets only.
- `chunk_id` is a hash of (paper id, chunking params key, offsets, text): the same input gives the same ids.

`Chunker(settings).chunk(paper, paper_id) -> (PaperRecord, chunks)` is the entry point every caller uses (the
ingest pipeline, `pmcqa parse`, evaluation, the corpus report, the benches).
"""

from __future__ import annotations

import copy
import hashlib
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import accumulate, chain, islice
from pathlib import Path
from typing import Any, NamedTuple

from tokenizers import Tokenizer

from pmcqa.core.settings import Settings
from pmcqa.core.status import Status
from pmcqa.core.text import Span, split_sentences, strip_span
from pmcqa.index.embedding import resolve_model_path
from pmcqa.index.models import Chunk, ChunkingParams, ChunkKind, OutlineEntry, PaperRecord
from pmcqa.ingest.models import Block, Paper, Section

# Bump whenever the rules below change what chunks come out: stored papers record it and get re-chunked.
CHUNKER_VERSION = 10  # 10: MathML without the source's indentation between elements ("(d M)/(d t)" →
# "dM/dt"); funding awards' award-name and award-desc written in their sentence
# 9: section headings without the period or colon typeset after them ("PCR." → "PCR")
# 8: an award whose funder the funding statement names by acronym (NIH) is left out
# 7: float labels without the punctuation typeset after them ("Figure 11." → "Figure 11")
# 6: funding awards (funding-group/award-group) as sentences after the funding statement
# 5: header rows right below a table head go under it (the head's labels kept),
# MathML fractions, roots, limits and fences keep their structure, footnote labels written as their markers
# 4: front author notes, funding, footnotes named by kind, image-only tables' footnotes, MathML spacing
# 3: faithful sup/sub, table group headers, subtitles, piece ref ids, backward merging

# Never merged with anything: each is a retrieval target of its own ("what does Table 2 show?").
STANDALONE_KINDS: frozenset[str] = frozenset({"title", "caption", "table", "supplementary"})
# Kinds that read as one running text inside a section; every other kind merges only with itself.
_TEXT_GROUP: frozenset[str] = frozenset({"paragraph", "list", "formula"})

Splitter = Callable[[str, int, int], Iterable[Span]]


# --- token counting ----------------------------------------------------------------------------------------


# Longest slice handed to the tokenizer in one call. A fast tokenizer's `encode` allocates offsets, token
# strings and masks for every token (~150 bytes of memory per character of input), so a multi-megabyte block
# tokenized whole costs gigabytes; in windows it costs a few megabytes, whatever the block's size.
TOKENIZE_WINDOW_CHARS = 32_768
# Greedy up to the last whitespace character of the searched range: the window ends just after it.
_UP_TO_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


def token_windows(text: str, start: int = 0, end: int | None = None) -> Iterator[Span]:
    """Consecutive slices of text[start:end], each at most `TOKENIZE_WINDOW_CHARS` long, cut just after a
    whitespace character so every word lies whole in one window; a run without whitespace longer than a
    window (one absurd "word") is cut hard."""
    end = len(text) if end is None else end
    while end - start > TOKENIZE_WINDOW_CHARS:
        limit = start + TOKENIZE_WINDOW_CHARS
        match = _UP_TO_LAST_SPACE.match(text, start, limit)
        cut = match.end() if match is not None else limit
        yield start, cut
        start = cut
    yield start, end


# Words whose token counts a counter keeps (about 100 bytes each): a paper brings a few thousand new ones at
# first, ever fewer as the vocabulary of the literature fills the cache; when full it starts over.
WORD_CACHE_SIZE = 200_000
# Characters Python splits words at but a BERT normaliser deletes (controls), so a word split there would
# not be a word of the tokenizer: text holding one is tokenized whole, the exact way.
_NOT_BOTH_WHITESPACE = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
# Longest word counted through the cache; longer runs without whitespace are tokenized in windows.
_LONGEST_CACHED_WORD = 256


class TokenCounter:
    """Counts tokens as the embedding model sees them (no special tokens), so the budget is the model's.

    `spans` (token character offsets) and `additive` are an optimisation: when the tokenizer splits on
    whitespace before anything else (BERT's WordPiece and friends), a slice cut at whitespace has exactly the
    tokens whose offsets fall inside it, so a block is tokenized once however it is split or merged.

    `count_words` goes further for such tokenizers: a text's count is the sum of its whitespace-separated
    words' counts, and each distinct word is tokenized once (many words in one call) and remembered
    (`learn`), so a paper costs a dictionary lookup per word rather than a tokenizer pass over its whole
    text. Exact, and checked against whole-text tokenization on the shared corpus. The counter is shared by
    the threads of a process: a full cache is replaced, never emptied under a reader's feet.

    Texts longer than `TOKENIZE_WINDOW_CHARS` are tokenized in windows cut at whitespace (`token_windows`),
    so memory stays bounded whatever the input: exact for additive tokenizers; for others a long text's
    count is the sum of its windows' counts (within a token or so per window), which only ever decides
    whether a text needs splitting, never the size of a chunk.
    """

    def __init__(
        self,
        name: str,
        count: Callable[[str], int],
        spans: Callable[[str], list[Span]] | None = None,
        additive: bool = False,
        count_words: Callable[[list[str]], list[int]] | None = None,
    ) -> None:
        self.name = name
        self._count = count
        self.spans = spans
        self.additive = additive and spans is not None
        self._count_words = count_words if self.additive else None
        self.word_tokens: dict[str, int] = {}  # word -> its token count: the current cache

    @property
    def counts_words(self) -> bool:
        return self._count_words is not None

    def learn(self, words: Iterable[str]) -> dict[str, int] | None:
        """The token count of every word in `words` (whitespace-free strings), tokenizing only the words not
        cached yet: a table holding them all, to count with. None (nothing cached) when the counter cannot
        count by words or the words would not fit the cache."""
        if self._count_words is None:
            return None
        known = self.word_tokens
        distinct = set(words)
        missing = distinct.difference(known)
        if not missing:
            return known
        if len(missing) > WORD_CACHE_SIZE // 2 or any(len(word) > _LONGEST_CACHED_WORD for word in missing):
            return None
        if len(known) + len(missing) > WORD_CACHE_SIZE:
            # Start over with this text's words. A new table, not clear(): another thread may be counting
            # with the old one.
            known = self.word_tokens = {}
            missing = distinct
        batch: list[str] = []
        size = 0
        for word in missing:
            if batch and size + len(word) >= TOKENIZE_WINDOW_CHARS:
                known.update(zip(batch, self._count_words(batch), strict=True))
                batch, size = [], 0
            batch.append(word)
            size += len(word) + 1
        known.update(zip(batch, self._count_words(batch), strict=True))
        return known

    def words_of(self, text: str) -> list[str] | None:
        """The words `text` counts by (its whitespace-separated parts), None when it must be tokenized whole
        (a character Python splits at but the tokenizer deletes)."""
        if _NOT_BOTH_WHITESPACE.search(text):
            return None
        return text.split()

    @classmethod
    def from_tokenizer(cls, name: str, tokenizer: Any) -> TokenCounter:
        """A counter over a transformers tokenizer (its Rust tokenizer, when it has one), or a
        `tokenizers.Tokenizer` itself."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None and type(tokenizer).__module__.startswith("tokenizers"):
            backend = tokenizer
        if backend is None:

            def count_slow(text: str) -> int:
                # verbose=False: long texts are only counted, never embedded; the length warning is noise.
                encoded = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)
                return len(encoded["input_ids"])

            return cls(name, count_slow)
        return cls.from_rust_tokenizer(name, backend)

    @classmethod
    def from_rust_tokenizer(cls, name: str, backend: Tokenizer) -> TokenCounter:
        """A counter over a `tokenizers.Tokenizer`: ~10x less overhead per call than the Python wrapper."""
        # A copy, because sentence-transformers' tokenizer.json truncates (and pads) to the model's length.
        backend = copy.deepcopy(backend)
        backend.no_truncation()
        backend.no_padding()

        def count(text: str) -> int:
            return len(backend.encode(text, add_special_tokens=False).ids)

        def spans(text: str) -> list[Span]:
            return list(backend.encode(text, add_special_tokens=False).offsets)

        def count_joined(words: list[str]) -> list[int]:
            # One call for many words: joined by spaces, which no token crosses, each word's count is the
            # number of tokens starting inside it.
            ends = list(accumulate(len(word) + 1 for word in words))
            counts = [0] * len(words)
            index = 0
            for token_start, _ in backend.encode(" ".join(words), add_special_tokens=False).offsets:
                while token_start >= ends[index]:
                    index += 1
                counts[index] += 1
            return counts

        pre_tokenizer = type(backend.pre_tokenizer).__name__ if backend.pre_tokenizer else ""
        additive = pre_tokenizer in _WHITESPACE_PRE_TOKENIZERS
        count_words = _wordpiece_word_counter(backend, count_joined) or count_joined
        return cls(name, count, spans, additive=additive, count_words=count_words)

    def count(self, text: str) -> int:
        if len(text) <= TOKENIZE_WINDOW_CHARS:
            return self._count(text)
        return sum(self._count(text[start:end]) for start, end in token_windows(text))

    def offsets(self, text: str, start: int, end: int) -> Iterator[Span]:
        """(start, end) of every token of text[start:end], as offsets into `text`, tokenized in windows."""
        if self.spans is None:
            raise TypeError(f"token counter {self.name!r} gives no token offsets")
        for window_start, window_end in token_windows(text, start, end):
            for token_start, token_end in self.spans(text[window_start:window_end]):
                yield window_start + token_start, window_start + token_end


# Pre-tokenizers that cut at every whitespace first, so counts add up over whitespace-separated slices.
_WHITESPACE_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})

# What BERT's pre-tokenizer keeps together in printable ASCII: runs of letters and digits. Every other
# printable ASCII character is punctuation to it, a word piece (one token) of its own.
_ASCII_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")


def _wordpiece_word_counter(
    backend: Tokenizer, count_joined: Callable[[list[str]], list[int]]
) -> Callable[[list[str]], list[int]] | None:
    """`count_words` for a BERT WordPiece tokenizer that runs the model on each distinct pre-token once.

    WordPiece tokenizes each pre-token on its own, so a word's count is the sum of its pre-tokens' counts,
    and a pre-token ("cells" of "Cells," "(cells)" "cells.") is tokenized once, by the model alone: about a
    third of the characters the whole pipeline would see, at a fraction of the cost per character (the
    pipeline's offset tracking is most of it). For a printable ASCII word the BERT normaliser only
    lowercases (when set to) and the pre-tokenizer cuts it into runs of letters and digits and single
    punctuation characters, so a regular expression does both; other words go through the tokenizer's own
    normaliser and pre-tokenizer. A word holding an added token ("[MASK]", matched before normalising) is
    tokenized whole. Exact: `tests/ingest/test_chunking.py` compares it with the tokenizer on every distinct
    word of the shared corpus. None when the tokenizer is not of that make.
    """
    # Read from the tokenizer's own objects (a JSON dump of it would cost ~30 ms at every start).
    added_tokens = list(backend.get_added_tokens_decoder().values())
    if (
        type(backend.normalizer).__name__ != "BertNormalizer"
        or type(backend.pre_tokenizer).__name__ != "BertPreTokenizer"
        or type(backend.model).__name__ != "WordPiece"
        or any(token.lstrip or token.rstrip for token in added_tokens)
    ):
        return None
    lowercase = bool(backend.normalizer.lowercase)
    added = [token.content for token in added_tokens if token.content]
    holds_added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE).search if added else None
    normalize, pre_tokenize = backend.normalizer.normalize_str, backend.pre_tokenizer.pre_tokenize_str
    wordpiece = backend.model
    piece_tokens: dict[str, int] = {}  # pre-token -> its WordPiece count; bounded like the word cache

    def count_words(words: list[str]) -> list[int]:
        counts = [0] * len(words)
        whole: list[int] = []  # indexes of the words tokenized whole
        for index, word in enumerate(words):
            if holds_added and holds_added(word):
                whole.append(index)
                continue
            if word.isascii() and word.isprintable():
                if lowercase:
                    word = word.lower()
                pieces = _ASCII_ALNUM_RUN.findall(word)
                tokens = len(word) - sum(map(len, pieces))  # punctuation: one token a character
            else:
                pieces = [piece for piece, _ in pre_tokenize(normalize(word))]
                tokens = 0
            for piece in pieces:
                piece_count = piece_tokens.get(piece)
                if piece_count is None:
                    piece_count = piece_tokens[piece] = len(wordpiece.tokenize(piece))
                tokens += piece_count
            counts[index] = tokens
        if whole:
            for index, tokens in zip(whole, count_joined([words[i] for i in whole]), strict=True):
                counts[index] = tokens
        if len(piece_tokens) > WORD_CACHE_SIZE:
            piece_tokens.clear()  # a reader that misses an entry tokenizes the piece again: no harm
        return counts

    return count_words


@lru_cache(maxsize=4)
def _cached_counter(model_name: str) -> TokenCounter:
    location = resolve_model_path(model_name)
    tokenizer_file = Path(location) / "tokenizer.json"
    if tokenizer_file.is_file():  # a local model with a fast tokenizer: read it without transformers
        return TokenCounter.from_rust_tokenizer(model_name, Tokenizer.from_file(str(tokenizer_file)))
    # Heavy (seconds): only for a hub id or a model without a tokenizer.json.
    from transformers import AutoTokenizer

    return TokenCounter.from_tokenizer(model_name, AutoTokenizer.from_pretrained(location))


def load_token_counter(settings: Settings) -> TokenCounter:
    """The embedding model's tokenizer as a counter, loaded once per process and model."""
    return _cached_counter(settings.embedding_model)


def chunking_params(settings: Settings) -> ChunkingParams:
    # The tokenizer is recorded by its setting name, not the resolved path, so ids agree across machines.
    return ChunkingParams(
        version=CHUNKER_VERSION,
        tokenizer=settings.embedding_model,
        max_tokens=settings.chunk_max_tokens,
        min_tokens=settings.chunk_min_tokens,
    )


# --- splitting ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")
_LINE = re.compile(r"[^\n]+")


def split_words(text: str, start: int, end: int) -> Iterator[Span]:
    """Word spans, lazily: a block of millions of words is packed without a list of them all."""
    return (m.span() for m in _WORD.finditer(text, start, end))


def split_lines(text: str, start: int, end: int) -> list[Span]:
    spans = (strip_span(text, *m.span()) for m in _LINE.finditer(text, start, end))
    return [span for span in spans if span[0] < span[1]]


class Counted(NamedTuple):
    """A span of the text with its token count."""

    start: int
    end: int
    tokens: int


class Measure:
    """Token counts of sub-spans of one block of `text`.

    With an additive counter the block is tokenized once (in windows) and a sub-span's count is the number of
    tokens inside it (exact, since every cut is at whitespace); the token offsets are kept in two compact
    arrays (16 bytes a token). Counting by words (`words`: the block's words, their counts learned) needs no
    tokenizer at all: the block's count is the sum of its words' counts, and only a block that must be split
    gets its words' offsets and running counts (16 bytes a word) for its sub-spans. Otherwise each sub-span
    is tokenized for real.
    """

    def __init__(
        self,
        text: str,
        start: int,
        end: int,
        counter: TokenCounter,
        words: list[str] | None = None,
        word_tokens: dict[str, int] | None = None,
    ) -> None:
        self.text = text
        self.counter = counter
        self._span = (start, end)
        self._starts: array[int] | None = None
        self._ends: array[int] = array("q")
        self._running: array[int] | None = None  # tokens of the words before each word, when by words
        self._total: int | None = None
        self._word_tokens = word_tokens or {}  # `learn`'s table for `words`
        if words is not None and word_tokens is not None:
            self._total = sum(map(word_tokens.__getitem__, words))
        elif counter.additive:
            self._starts = array("q")
            for token_start, token_end in counter.offsets(text, start, end):
                self._starts.append(token_start)
                self._ends.append(token_end)

    @property
    def exact(self) -> bool:
        return self._starts is not None or self._total is not None

    def count(self, start: int, end: int) -> int:
        if self._total is not None:
            if (start, end) == self._span:
                return self._total
            return self._count_by_words(start, end)
        if self._starts is None:
            return self.counter.count(self.text[start:end])
        return bisect_right(self._ends, end) - bisect_left(self._starts, start)

    def _count_by_words(self, start: int, end: int) -> int:
        text = self.text
        span_start, span_end = self._span
        whole_words = (start <= span_start or text[start - 1].isspace() or text[start].isspace()) and (
            end >= span_end or text[end].isspace() or text[end - 1].isspace()
        )
        if whole_words:  # the usual case: cut at whitespace, so the slice's words are words of the block
            return sum(map(self._word_tokens.__getitem__, text[start:end].split()))
        if self._running is None:  # a cut inside a word: count the words wholly inside, as tokens would be
            self._starts, self._running = array("q"), array("q", [0])
            tokens = self._word_tokens
            running = 0
            for match in _WORD.finditer(text, span_start, span_end):
                self._starts.append(match.start())
                self._ends.append(match.end())
                running += tokens[match.group()]
                self._running.append(running)
        assert self._starts is not None
        return self._running[bisect_right(self._ends, end)] - self._running[bisect_left(self._starts, start)]


def _pack_exact(measure: Measure, units: list[Counted], max_tokens: int) -> list[Counted]:
    """Greedy packing that counts every candidate slice: exact for any tokenizer, but O(units) counts."""
    packed: list[Counted] = []
    current = units[0]
    for unit in units[1:]:
        tokens = measure.count(current.start, unit.end)
        if tokens <= max_tokens:
            current = Counted(current.start, unit.end, tokens)
        else:
            packed.append(current)
            current = unit
    packed.append(current)
    return packed


def _close(measure: Measure, group: list[Counted], max_tokens: int) -> list[Counted]:
    if len(group) == 1:
        return group
    tokens = measure.count(group[0].start, group[-1].end)
    if tokens <= max_tokens:
        return [Counted(group[0].start, group[-1].end, tokens)]
    return _pack_exact(measure, group, max_tokens)  # the tokenizer is not additive over whitespace


def _pack(measure: Measure, units: Iterable[Counted], max_tokens: int) -> list[Counted]:
    """Greedily join consecutive units into spans within the budget.

    Groups are formed on the sum of the unit counts (exact for whitespace-pre-tokenizing tokenizers) and each
    group is then measured, so the budget holds for any tokenizer. `units` is consumed lazily: only the
    open group and the packed spans are held.
    """
    packed: list[Counted] = []
    group: list[Counted] = []
    estimate = 0
    for unit in units:
        if group and estimate + unit.tokens > max_tokens:
            packed.extend(_close(measure, group, max_tokens))
            group, estimate = [], 0
        group.append(unit)
        estimate += unit.tokens
    if group:
        packed.extend(_close(measure, group, max_tokens))
    return packed


def split_span(
    measure: Measure, start: int, end: int, max_tokens: int, splitters: list[Splitter]
) -> list[Counted]:
    """Split a span into budgeted spans, trying each splitter from coarse (rows) to fine (words).

    Only a single unsplittable unit (one huge "word") can stay over the budget. Recursion goes one level
    per splitter (at most three); the units of each level stream into the packing, never listed whole.
    """
    tokens = measure.count(start, end)
    if not splitters or tokens <= max_tokens:
        return [Counted(start, end, tokens)]
    units = iter(splitters[0](measure.text, start, end))
    first = list(islice(units, 2))
    finer = splitters[1:]
    if len(first) <= 1:
        return split_span(measure, start, end, max_tokens, finer)
    pieces = (piece for s, e in chain(first, units) for piece in split_span(measure, s, e, max_tokens, finer))
    return _pack(measure, pieces, max_tokens)


# --- chunking ----------------------------------------------------------------------------------------------


def is_standalone(block: Block) -> bool:
    """Titles, captions, tables, supplementary items, and any other labelled block but a formula.

    The label rule catches floats whose kind the parser forces, e.g. "Author response table 1" of kind
    "sub-article"; a numbered formula "(1)" still reads as part of its paragraph.
    """
    return block.kind in STANDALONE_KINDS or (block.label is not None and block.kind != "formula")


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    tokens: int
    blocks: tuple[Block, ...]
    mergeable: bool
    block_start: int = 0  # offset of the first block's text in the paper's text

    @property
    def key(self) -> tuple[object, ...]:
        """Pieces merge only when their keys match: same part, sub-article, section and kind group."""
        block = self.blocks[0]
        group = "text" if block.kind in _TEXT_GROUP else block.kind
        return block.part, block.sub_article, tuple(block.section_path), group


def _block_pieces(
    block: Block,
    text: str,
    span: Span,
    counter: TokenCounter,
    params: ChunkingParams,
    words: list[str] | None,  # the block's words, when their counts are in `word_tokens`
    word_tokens: dict[str, int] | None,
) -> list[_Piece]:
    start, end = strip_span(text, *span)
    if start >= end:
        return []
    measure = Measure(text, start, end, counter, words, word_tokens)
    tokens = measure.count(start, end)
    if tokens <= params.max_tokens:
        return [_Piece(start, end, tokens, (block,), not is_standalone(block), span[0])]
    splitters: list[Splitter] = [split_sentences, split_words]
    if block.kind == "table":
        splitters.insert(0, split_lines)  # one linearized row per line: split between rows first
    spans = split_span(measure, start, end, params.max_tokens, splitters)
    # Split pieces stay apart from neighbouring blocks: merging a tail with the next paragraph would blur
    # the block boundary for little gain.
    return [_Piece(s, e, n, (block,), False, span[0]) for s, e, n in spans]


def _merge(pieces: list[_Piece], text: str, counter: TokenCounter, params: ChunkingParams) -> list[_Piece]:
    merged: list[_Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.mergeable
            and piece.mergeable
            and last.key == piece.key
            and (last.tokens < params.min_tokens or piece.tokens < params.min_tokens)
            and last.tokens + piece.tokens <= params.max_tokens  # exact when additive, a cheap pre-check else
        ):
            # The blank line between blocks adds no token to an additive (whitespace-splitting) tokenizer.
            tokens = (
                last.tokens + piece.tokens
                if counter.additive
                else counter.count(text[last.start : piece.end])
            )
            if tokens <= params.max_tokens:
                merged[-1] = replace(last, end=piece.end, tokens=tokens, blocks=last.blocks + piece.blocks)
                continue
        merged.append(piece)
    return merged


def _chunk_kind(blocks: tuple[Block, ...]) -> ChunkKind:
    kinds = {block.kind for block in blocks}
    if len(kinds) == 1:
        return blocks[0].kind
    return "paragraph"  # a mixed text-group chunk (paragraph + list/formula) reads as a paragraph


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Mentions:
    """A block's placed citations sorted by offset, so a piece finds those inside it by bisection (a table
    with hundreds of citations splits into dozens of pieces)."""

    __slots__ = ("offsets", "placed", "rids")

    def __init__(self, block: Block) -> None:
        ordered = sorted(block.ref_mentions)
        self.offsets = [at for at, _ in ordered]
        self.rids = [rid for _, rid in ordered]
        self.placed = set(self.rids)

    def inside(self, start: int, end: int) -> set[str]:
        """Reference ids cited at offsets in [start, end) of the block's text."""
        return set(self.rids[bisect_left(self.offsets, start) : bisect_left(self.offsets, end)])


def _piece_refs(piece: _Piece, mentions: dict[int, _Mentions]) -> list[str]:
    """References cited inside the piece: whole blocks give all theirs; a split piece those whose citation
    lies in its span, and those whose place in the block is unknown. `mentions`: each block's sorted
    citations, by `id(block)`, filled as needed."""
    block = piece.blocks[0]
    if len(piece.blocks) > 1 or not block.ref_mentions:
        return _unique(ref for block in piece.blocks for ref in block.ref_ids)
    known = mentions.get(id(block))
    if known is None:
        known = mentions[id(block)] = _Mentions(block)
    inside = known.inside(piece.start - piece.block_start, piece.end - piece.block_start)
    return [rid for rid in block.ref_ids if rid in inside or rid not in known.placed]


def chunk_id(paper_id: str, params: ChunkingParams, start: int, end: int, text: str) -> str:
    digest = hashlib.sha1(f"{paper_id}\x1f{params.key()}\x1f{start}\x1f{end}\x1f{text}".encode())
    return digest.hexdigest()[:20]


def chunk_paper(paper: Paper, paper_id: str, counter: TokenCounter, params: ChunkingParams) -> list[Chunk]:
    """Cut a paper into chunks; every chunk's text is ``paper.canonical_text[start:end]``."""
    text = paper.canonical_text
    # Counting by words: every distinct word of the paper tokenized once, before any block needs it.
    words: list[list[str] | None] = [None] * len(paper.blocks)
    word_tokens = None
    if counter.counts_words:
        words = [counter.words_of(block.text) for block in paper.blocks]
        word_tokens = counter.learn(chain.from_iterable(w for w in words if w is not None))
    pieces: list[_Piece] = []
    for block, span, block_words in zip(paper.blocks, paper.block_spans, words, strict=True):
        pieces.extend(_block_pieces(block, text, span, counter, params, block_words, word_tokens))
    chunks: list[Chunk] = []
    mentions: dict[int, _Mentions] = {}
    for ordinal, piece in enumerate(_merge(pieces, text, counter, params)):
        first = piece.blocks[0]
        piece_text = text[piece.start : piece.end]
        chunks.append(
            Chunk(
                chunk_id=chunk_id(paper_id, params, piece.start, piece.end, piece_text),
                paper_id=paper_id,
                ordinal=ordinal,
                section_path=list(first.section_path),
                kind=_chunk_kind(piece.blocks),
                text=piece_text,
                start=piece.start,
                end=piece.end,
                ref_ids=_piece_refs(piece, mentions),
                label=first.label if len(piece.blocks) == 1 else None,
            )
        )
    return chunks


def rekeyed(
    record: PaperRecord, chunks: list[Chunk], paper_id: str, params: ChunkingParams
) -> tuple[PaperRecord, list[Chunk]]:
    """A stored paper (chunked with `params`, its `record.chunking`) under another id: its chunks with the
    ids chunking it under `paper_id` would give them (ids hash the paper id), everything else as stored."""
    moved = [
        chunk.model_copy(
            update={
                "paper_id": paper_id,
                "chunk_id": chunk_id(paper_id, params, chunk.start, chunk.end, chunk.text),
            }
        )
        for chunk in chunks
    ]
    return record.model_copy(update={"paper_id": paper_id}), moved


# --- record ------------------------------------------------------------------------------------------------


def _outline(sections: list[Section], depth: int = 0) -> Iterator[OutlineEntry]:
    for section in sections:
        yield OutlineEntry(path=list(section.path), sec_type=section.sec_type, depth=depth)
        yield from _outline(section.children, depth + 1)


def to_record(paper: Paper, paper_id: str, params: ChunkingParams, source: str | None) -> PaperRecord:
    """Flatten a parsed Paper into what the index stores."""
    return PaperRecord(
        paper_id=paper_id,
        pmid=paper.pmid,
        doi=paper.doi,
        title=paper.title,
        journal=paper.journal,
        year=paper.year,
        license=paper.license,
        article_type=paper.article_type,
        status=Status.INGESTED if paper.full_text else Status.NO_FULL_TEXT,
        text=paper.canonical_text,
        outline=list(_outline(paper.sections)),
        references=list(paper.references),
        chunking=params,
        source=source,
    )


# --- entry point -------------------------------------------------------------------------------------------


class Chunker:
    """The one way to turn a parsed paper into what the index stores: ``chunk(paper, paper_id)`` gives the
    `PaperRecord` and its chunks. Params come from the settings once; the embedding tokenizer is loaded on the
    first chunk (or given, e.g. a word counter in tests), so checking `params` against a stored paper is free.
    """

    def __init__(self, settings: Settings, counter: TokenCounter | None = None) -> None:
        self.settings = settings
        self.params = chunking_params(settings)
        self._counter = counter

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = load_token_counter(self.settings)
        return self._counter

    def chunk(
        self, paper: Paper, paper_id: str, source: str | None = None
    ) -> tuple[PaperRecord, list[Chunk]]:
        """The record (`source`: "efetch" or the file it came from) and the chunks of one paper."""
        chunks = chunk_paper(paper, paper_id, self.counter, self.params)
        return to_record(paper, paper_id, self.params, source), chunks
