"""Hybrid retrieval inside one paper (dense + BM25 + structure, fused by reciprocal rank), and library search.

Design, in short:

* **dense** — the question's embedding · the paper's own chunk vectors (`store.get_vectors`): exact cosine
  over a few hundred rows, no whole-index scan, so a paper's ranking never depends on the rest of the library.
* **lexical** — BM25 (`bm25s`) over the paper's chunks, each read with the heading right above it first
  (`lexical_text`), tokenized by `pmcqa.core.text.tokenize`, plus that heading's Snowball stems as marked
  terms only a question's own stems meet (`heading_stem_terms`: "Who funded this work?" meets "Funding",
  body text matches as before). An index is built per paper on first use and kept in a small LRU keyed by
  ``(paper_id, hash of the chunk set)``, so a re-ingested paper never reuses a stale one.
* **structure** — questions that name a cited work ("according to Wu et al.", "Wu and Chen (2019)", "in
  Smith's study") or a float ("Table 2", "Fig. 3", "Supplementary Table S1") add one more ranked list: the
  chunks citing a reference whose first author matches, or the caption/table chunk with that label. A
  question asking only what the paper found or set out to do ("What did the authors find?", "What was the aim
  of this study?": `asks_for_findings`, `asks_for_aim`) names the main abstract, where a paper states both.
* **fusion** — reciprocal rank fusion, ``sum(w / (k + rank))``; by default ``k = 10``, dense weight 1 and
  BM25 weight 2 (chosen on COVID-QA dev, see ``DEFAULT_RRF_K``).
  Every structural match shares rank 1 of the structure list, whose weight defaults to the sum of the
  other two: a structural match then outranks every chunk without one (``(w_dense + w_lexical)/(k+1)`` is
  the most the plain lists can give together) while dense + BM25 still order the matches among
  themselves.
* **neighbours** — after the top-k are chosen, adjacent chunks (ordinal ±1, same section) are attached to
  ``Passage.neighbours`` in rank order while the token budget (``settings.context_tokens``) allows; the
  top-k passages themselves always count first against that budget.

Tokens are counted approximately as ``ceil(words × 1.3)`` (`approx_tokens`): budgets are soft limits for a
prompt, so a tokenizer-free count that runs in microseconds is worth more than exactness (MiniLM's WordPiece
gives ~1.2–1.4 tokens per word on biomedical English).

Modes ``dense`` and ``lexical`` are single-signal baselines (no structure list) used by the evaluation;
``hybrid`` is what the service uses.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import cachetools
import numpy as np
import Stemmer

from pmcqa.core.text import tokenize
from pmcqa.index.models import Chunk, PaperRecord, Passage, ReferenceInfo

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")

# Chosen on COVID-QA dev only (bench/bench_retrieval.py; README "Retrieval"): a small k and BM25 counted
# twice beat the textbook k=60 / equal weights on MRR and hit@512 there, and held on train.
DEFAULT_RRF_K = 10
DEFAULT_DENSE_WEIGHT = 1.0
DEFAULT_LEXICAL_WEIGHT = 2.0
TOKENS_PER_WORD = 1.3


class StoreLike(Protocol):
    """The part of `index.store.PaperStore` the retriever reads."""

    def get_paper(self, paper_id: str) -> PaperRecord | None: ...

    def get_chunks(self, paper_id: str) -> list[Chunk]: ...

    def get_vectors(self, paper_id: str) -> tuple[list[str], np.ndarray]: ...

    def search_library(self, query_vector: np.ndarray, k: int) -> list[tuple[Chunk, float]]: ...


class EmbedderLike(Protocol):
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...


def approx_tokens(text: str) -> int:
    """Approximate model tokens: words × 1.3, rounded up (see the module docstring for why)."""
    words = len(text.split())
    return math.ceil(words * TOKENS_PER_WORD) if words else 0


# --- lexical ---------------------------------------------------------------------------------------------


class LexicalIndex:
    """BM25 over one paper's chunks, given as their tokens (in the order given); a query is read by
    ``query_tokens``, which must speak the documents' vocabulary."""

    def __init__(
        self, documents: Sequence[list[str]], query_tokens: Callable[[str], list[str]] = tokenize
    ) -> None:
        import bm25s  # ~0.7 s (scipy): loaded by the first lexical ranking, not by every import

        # bm25s sets its logger to DEBUG when imported, so its "Building index from tokens" got through at any
        # configured level: it follows the configured (root) level instead.
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
        self.size = len(documents)
        self._query_tokens = query_tokens
        self._bm25 = bm25s.BM25()
        # bm25s needs at least one token per document; an empty chunk gets a placeholder that never matches.
        self._bm25.index([list(tokens) or ["\u2400"] for tokens in documents], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        tokens = self._query_tokens(query)
        if not tokens or not self.size:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)


def lexical_text(chunk: Chunk) -> str:
    """What BM25 reads of a chunk: the heading right above it, then its text. "Do the authors declare
    competing interests?" shares no word with "University College London holds patents ...", only with its
    heading "Competing interests". The innermost heading alone: the outer ones ("Author notes", which
    pmcqa files competing interests and contributions under) would pull those chunks up for every question
    that says "the authors" (bench/bench_section_questions.py; README "Retrieval"). A chunk without a section
    (flat text, COVID-QA) reads as its text alone."""
    if not chunk.section_path:
        return chunk.text
    return f"{chunk.section_path[-1]}\n{chunk.text}"


_stemmers = threading.local()  # a PyStemmer Stemmer is not safe to share between threads


def stemmed_tokens(text: str) -> list[str]:
    """Snowball English stems of `tokenize`'s tokens, in order: "funded" and "Funding" both read "fund"."""
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    return stemmer.stemWords(tokenize(text))


# Marks a heading-stem term: `tokenize` yields runs of word characters, so no body token can start with it.
HEADING_STEM_MARK = "\u00a7"


def heading_stem_terms(text: str) -> list[str]:
    """`stemmed_tokens` of a text, marked as heading terms: a chunk under "Funding" gets "§fund", and
    "Who funded this work?" asks for it, while body text still matches on `tokenize`'s tokens alone."""
    return [HEADING_STEM_MARK + stem for stem in stemmed_tokens(text)]


def query_tokens_with_heading_stems(query: str) -> list[str]:
    """A query's `tokenize` tokens, then its heading-stem terms (`heading_stem_terms`)."""
    return tokenize(query) + heading_stem_terms(query)


def _stems(text: str) -> set[str]:
    """Snowball stems of a text's tokens, so "funded" meets "Funding" and "contribute" "contributions"."""
    return set(stemmed_tokens(text))


# How a question names the paper itself ("What did the authors find?", "this study"): not a subject it asks
# about. Boilerplate back matter says them too ("The authors declare no competing interests").
_REFERENT_STEMS = frozenset(_stems("author authors paper study studies work article manuscript research"))


def _subject_stems(question: str) -> set[str]:
    """The stems of what a question asks about: its words beside those naming the paper itself."""
    return _stems(question) - _REFERENT_STEMS


def asks_about(question: str, back_matter: Sequence[Chunk]) -> list[bool]:
    """For each back-matter chunk (acknowledgements, funding, author notes), whether the question shares a
    word with its heading or text beyond the words naming the paper itself: "Who funded this work?" asks about
    "Funding", "What did the authors find?" asks about none of them."""
    subject = _subject_stems(question)
    return [
        bool(subject & _stems(f"{' '.join(chunk.section_path[-1:])} {chunk.text}")) for chunk in back_matter
    ]


def names_heading(question: str, chunk: Chunk) -> bool:
    """Whether the question names the heading right above `chunk` by a word beyond those naming the paper
    itself: "Who funded this work?" names "Funding", "Are the data publicly available?" names "Data
    availability"; any chunk without a heading is named by no question."""
    if not chunk.section_path:
        return False
    return bool(_subject_stems(question) & _stems(chunk.section_path[-1]))


# What a question says when it asks what the paper found or concluded as a whole and nothing more specific:
# "What did the authors find?", "What is the main conclusion?", "What are the key results of this study?".
_FINDINGS_STEMS = frozenset(
    _stems(
        "find finding findings found conclude conclusion conclusions main key major principal primary "
        "overall result results show shows shown showed demonstrate demonstrated significance implications "
        "message"
    )
)


def asks_for_findings(question: str) -> bool:
    """Whether the question asks only what the paper found or concluded ("What did the authors find?"),
    beside the words naming the paper itself; "What did the authors find about IL-6?" asks about IL-6."""
    subject = _subject_stems(question)
    return bool(subject) and subject <= _FINDINGS_STEMS


# What a question says when it asks only what the paper set out to do: "What was the aim of this study?",
# "What is the purpose of this research?", "What are the objectives of the study?".
_AIM_STEMS = frozenset(_stems("aim aims goal goals purpose objective objectives main primary"))
_AIM_ONLY_STEMS = _AIM_STEMS - _FINDINGS_STEMS  # "main" and "primary" ask for the findings as well


def asks_for_aim(question: str) -> bool:
    """Whether the question asks only what the paper set out to do ("What was the purpose of this study?"),
    beside the words naming the paper itself."""
    subject = _subject_stems(question)
    return bool(subject & _AIM_ONLY_STEMS) and subject <= _AIM_STEMS


def is_main_abstract(chunk: Chunk) -> bool:
    """A chunk of the paper's own abstract (structured or not), not of a summary beside it ("Abstract
    (executive-summary)", eLife's digest; PLOS's author and editors' summaries)."""
    return chunk.kind == "abstract" and chunk.section_path[:1] == ["Abstract"]


def _chunk_text(chunk: Chunk) -> str:
    return chunk.text


def chunk_set_hash(chunks: Sequence[Chunk]) -> str:
    digest = hashlib.sha1()
    for chunk in chunks:
        digest.update(f"{chunk.chunk_id}\x00{chunk.start}\x00{chunk.end}\x00".encode())
        digest.update("\x00".join(chunk.section_path).encode())  # BM25 reads a heading too
        digest.update(chunk.text.encode())
    return digest.hexdigest()


# --- structure: cited authors ----------------------------------------------------------------------------

_NAME = r"((?:(?:van|von|de|der|den|la|le|da|di|del|du|dos|ten|ter)\s+)*[A-Z][\w'\-]*[^\W\d_])"
_YEAR = r"((?:19|20)\d\d)"
_WORK_NOUN = (
    r"(?:study|studies|work|paper|group|lab|laboratory|team|report|analysis|findings|results|data|trial|"
    r"model|review|survey|experiments?|cohort|method|approach|hypothesis|observations?|article|research)"
)
_AUTHOR_PATTERNS = [
    # Wu et al. / Wu et al (2019) / Wu et al., 2019
    re.compile(_NAME + r"\s+et\s+al\.?,?\s*\(?" + _YEAR + r"?", re.UNICODE),
    # Wu and Chen (2019) / Wu & Chen, 2019
    re.compile(_NAME + r"\s+(?:and|&)\s+" + _NAME + r",?\s*\(?" + _YEAR, re.UNICODE),
    # Wu (2019) / (Wu, 2019)
    re.compile(_NAME + r",?\s*\(?" + _YEAR + r"\)", re.UNICODE),
    # Smith's study / Smith's 2019 trial
    re.compile(_NAME + r"['’]s\s+(?:\w+\s+){0,2}?" + _WORK_NOUN + r"\b", re.UNICODE),
    # Smith and colleagues / Smith and co-workers
    re.compile(_NAME + r"\s+and\s+(?:colleagues|co-?workers|coauthors|co-authors)\b", re.UNICODE),
    # according to Smith
    re.compile(r"\b(?:[Aa]ccording\s+to|[Aa]s\s+reported\s+by|[Aa]s\s+shown\s+by)\s+" + _NAME, re.UNICODE),
]
_NOT_NAMES = frozenset({"the", "a", "an", "this", "these", "table", "figure", "fig", "in", "what", "how"})


@dataclass(frozen=True)
class AuthorMention:
    surname: str
    second: str | None = None
    year: str | None = None


def _fold_name(name: str) -> str:
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"[^a-z]", "", text.casefold())


def _surname_keys(surname: str) -> set[str]:
    """A surname matches as a whole or by its last word ("van der Berg" ~ "Berg")."""
    words = surname.replace("-", " ").split()
    keys = {_fold_name(surname)}
    if words:
        keys.add(_fold_name(words[-1]))
    keys.discard("")
    return keys


def author_mentions(question: str) -> list[AuthorMention]:
    """Cited works named in a question, by first author (and second author / year when given)."""
    mentions: list[AuthorMention] = []
    claimed: list[tuple[int, int]] = []  # spans already read by an earlier (more specific) pattern
    for index, pattern in enumerate(_AUTHOR_PATTERNS):
        for match in pattern.finditer(question):
            groups = match.groups()
            surname = groups[0]
            start, end = match.span()
            if _fold_name(surname) in _NOT_NAMES or any(s < end and start < e for s, e in claimed):
                continue
            claimed.append((start, end))
            second = groups[1] if index == 1 else None
            year = next((g for g in groups[1:] if g and re.fullmatch(_YEAR, g)), None)
            mentions.append(AuthorMention(surname, second, year))
    return mentions


def matching_references(mentions: Iterable[AuthorMention], references: Sequence[ReferenceInfo]) -> set[str]:
    """Ids of references whose first author is a mentioned surname (narrowed by year/second author if that
    still leaves a match — a wrong year in the question should not lose the reference altogether)."""
    found: set[str] = set()
    for mention in mentions:
        wanted = _surname_keys(mention.surname)
        candidates = [ref for ref in references if ref.authors and _surname_keys(ref.authors[0]) & wanted]
        if mention.year:
            candidates = [r for r in candidates if r.year and r.year[:4] == mention.year] or candidates
        if mention.second:
            second = _surname_keys(mention.second)
            candidates = [
                r for r in candidates if len(r.authors) > 1 and _surname_keys(r.authors[1]) & second
            ] or candidates
        found.update(ref.id for ref in candidates)
    return found


# --- structure: figure/table labels ----------------------------------------------------------------------

_LABEL_KINDS = {
    "fig": "figure",
    "figs": "figure",
    "figure": "figure",
    "figures": "figure",
    "table": "table",
    "tables": "table",
    "tab": "table",
    "box": "box",
    "scheme": "scheme",
    "appendix": "appendix",
    "file": "file",
}
_LABEL = re.compile(
    r"\b(supplementary|supplemental|suppl\.?|additional|extended\s+data)?\s*"
    r"(figs?|figures?|tables?|tab|box|scheme|appendix|file)\.?\s*(S?\d+)([A-Za-z])?\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LabelKey:
    kind: str
    supplementary: bool
    number: str


def _label_key(match: re.Match[str]) -> LabelKey:
    prefix, kind, number, _panel = match.groups()
    supplementary = bool(prefix) or number.upper().startswith("S")
    return LabelKey(_LABEL_KINDS[kind.casefold()], supplementary, number.upper().lstrip("S"))


def label_keys(text: str) -> set[LabelKey]:
    """Normalised float labels in a text: "Fig. 3B" and "Figure 3" → figure/3; "Supplementary Table S1",
    "Table S1" and "Supplementary Table 1" → supplementary table/1."""
    return {_label_key(match) for match in _LABEL.finditer(text)}


def chunk_label_key(chunk: Chunk) -> LabelKey | None:
    if chunk.label:
        match = _LABEL.search(chunk.label)
        if match:
            return _label_key(match)
    if chunk.kind in ("caption", "table"):
        # Fallback for captions stored without a label: "Table 2. Patient characteristics ..."
        match = _LABEL.match(chunk.text.strip()[:60])
        if match:
            return _label_key(match)
    return None


# --- fusion ----------------------------------------------------------------------------------------------


def rank_order(scores: np.ndarray, *, positive_only: bool = False) -> list[int]:
    """Indexes by descending score (stable on ties); optionally only those with a positive score."""
    order = np.argsort(-scores, kind="stable")
    if positive_only:
        order = order[scores[order] > 0]
    return [int(i) for i in order]


def reciprocal_rank_fusion(
    size: int, ranked_lists: Sequence[tuple[Sequence[int], float]], k: int = DEFAULT_RRF_K
) -> np.ndarray:
    """``score[i] = sum(weight / (k + rank))`` over the lists that rank item ``i`` (ranks are 1-based)."""
    fused = np.zeros(size, dtype=np.float64)
    for ranking, weight in ranked_lists:
        for rank, item in enumerate(ranking, start=1):
            fused[item] += weight / (k + rank)
    return fused


@dataclass
class Ranking:
    """A paper's chunks ranked for one question (the full list; `retrieve` cuts it to top-k)."""

    chunks: list[Chunk]
    order: list[int]
    scores: np.ndarray
    dense: np.ndarray | None = None
    lexical: np.ndarray | None = None
    structural: set[int] = field(default_factory=set)

    def passages(self, top_k: int | None = None) -> list[Passage]:
        chosen = self.order if top_k is None else self.order[:top_k]
        return [
            Passage(
                chunk=self.chunks[i],
                score=float(self.scores[i]),
                rank=rank,
                dense_score=None if self.dense is None else float(self.dense[i]),
                lexical_score=None if self.lexical is None else float(self.lexical[i]),
            )
            for rank, i in enumerate(chosen, start=1)
        ]


# --- the retriever ---------------------------------------------------------------------------------------


class Retriever:
    def __init__(
        self,
        store: StoreLike,
        embedder: EmbedderLike,
        settings: Any,
        *,
        rrf_k: int = DEFAULT_RRF_K,
        structure_weight: float | None = None,
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
        lexical_weight: float = DEFAULT_LEXICAL_WEIGHT,
        neighbour_offsets: tuple[int, ...] = (1, -1),
        lexical_cache_size: int = 32,
        token_counter: Callable[[str], int] = approx_tokens,
        lexical_heading: bool = True,
        back_matter_last: bool = True,
        lexical_heading_stems: bool = True,
        findings_abstract: bool = True,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.rrf_k = rrf_k
        self.dense_weight = dense_weight
        self.lexical_weight = lexical_weight
        # Default: as much as the plain lists can give together, so a structural match outranks every
        # chunk without one while dense + BM25 still order the matches among themselves.
        self.structure_weight = (
            dense_weight + lexical_weight if structure_weight is None else structure_weight
        )
        self.neighbour_offsets = neighbour_offsets
        self.count_tokens = token_counter
        self._lexical_text: Callable[[Chunk], str] = lexical_text if lexical_heading else _chunk_text
        self.back_matter_last = back_matter_last
        # Heading-stem terms are a way of reading the heading: BM25 over chunk text alone reads neither. Each
        # retriever keeps its own index cache, so the chunk-set key needs no tokenizer setting in it.
        self.lexical_heading_stems = lexical_heading and lexical_heading_stems
        self.findings_abstract = findings_abstract  # a question for the findings or aim names the abstract
        # Shared by the request threads: cachetools caches are not thread-safe, so one lock guards it.
        self._lexical: cachetools.LRUCache[tuple[str, str], LexicalIndex] = cachetools.LRUCache(
            lexical_cache_size
        )
        self._lexical_lock = threading.Lock()

    # public API ------------------------------------------------------------------------------------------

    def retrieve(
        self,
        paper_id: str,
        question: str,
        top_k: int | None = None,
        mode: Mode = "hybrid",
        budget_tokens: int | None = None,
    ) -> list[Passage]:
        """The paper's top-k passages for a question, best first, with neighbours within the token budget.

        An unknown paper (or one without chunks) gives an empty list; the caller decides if that is a 404.
        """
        ranking = self.rank(paper_id, question, mode)
        if ranking is None:
            return []
        passages = ranking.passages(top_k or self.settings.top_k)
        budget = self.settings.context_tokens if budget_tokens is None else budget_tokens
        return self.expand_neighbours(passages, ranking.chunks, budget)

    def search_library(self, question: str, k: int | None = None) -> list[Passage]:
        """Dense search across all stored papers (the store's FAISS index); scores are cosine similarities."""
        query = self._embed_query(question)
        hits = self.store.search_library(query, k or self.settings.top_k)
        return [
            Passage(chunk=chunk, score=float(score), rank=rank, dense_score=float(score))
            for rank, (chunk, score) in enumerate(hits, start=1)
        ]

    def rank(
        self, paper_id: str, question: str, mode: Mode = "hybrid", query_vector: np.ndarray | None = None
    ) -> Ranking | None:
        """Rank all of a paper's chunks. `query_vector` lets batch callers (the evaluation) embed once."""
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; expected one of {', '.join(MODES)}")
        chunks = self.store.get_chunks(paper_id)
        if not chunks:
            return None
        dense = lexical = None
        if mode in ("dense", "hybrid"):
            vector = self._embed_query(question) if query_vector is None else query_vector
            dense = self._dense_scores(paper_id, chunks, vector)
        if mode in ("lexical", "hybrid"):
            lexical = self._lexical_index(paper_id, chunks).scores(question)
        if mode == "dense":
            assert dense is not None
            return Ranking(chunks, rank_order(dense), dense.astype(np.float64), dense=dense)
        if mode == "lexical":
            assert lexical is not None
            return Ranking(chunks, rank_order(lexical), lexical.astype(np.float64), lexical=lexical)
        assert dense is not None and lexical is not None
        return self._fuse(paper_id, question, chunks, dense, lexical)

    # neighbours ------------------------------------------------------------------------------------------

    def expand_neighbours(
        self, passages: list[Passage], chunks: Sequence[Chunk], budget_tokens: int
    ) -> list[Passage]:
        """Attach ordinal ±1 chunks of the same section, best passage first, while the budget lasts.

        The passages' own text is spent first; a neighbour already retrieved (or already attached to a better
        passage) is not repeated. Neighbours are tried in `neighbour_offsets` order (default: the following
        chunk, then the preceding one; chosen on COVID-QA dev, see `bench/bench_retrieval.py`).
        """
        by_ordinal = {chunk.ordinal: chunk for chunk in chunks}
        used = sum(self.count_tokens(p.chunk.text) for p in passages)
        taken = {p.chunk.chunk_id for p in passages}
        for passage in passages:
            added: list[Chunk] = []
            for ordinal in (passage.chunk.ordinal + offset for offset in self.neighbour_offsets):
                neighbour = by_ordinal.get(ordinal)
                if (
                    neighbour is None
                    or neighbour.chunk_id in taken
                    or neighbour.section_path != passage.chunk.section_path
                ):
                    continue
                cost = self.count_tokens(neighbour.text)
                if used + cost > budget_tokens:
                    continue
                used += cost
                taken.add(neighbour.chunk_id)
                added.append(neighbour)
            passage.neighbours = sorted(added, key=lambda c: c.ordinal)
        return passages

    # internals -------------------------------------------------------------------------------------------

    def _embed_query(self, question: str) -> np.ndarray:
        return np.asarray(self.embedder.embed_queries([question])[0], dtype=np.float32)

    def _dense_scores(self, paper_id: str, chunks: Sequence[Chunk], query: np.ndarray) -> np.ndarray:
        chunk_ids, matrix = self.store.get_vectors(paper_id)
        row_of = {chunk_id: row for row, chunk_id in enumerate(chunk_ids)}
        similarities = np.asarray(matrix, dtype=np.float32) @ query
        # Align to the chunk order; a chunk without a vector (should not happen) ranks last.
        return np.array(
            [similarities[row_of[c.chunk_id]] if c.chunk_id in row_of else -1.0 for c in chunks],
            dtype=np.float32,
        )

    def _lexical_index(self, paper_id: str, chunks: Sequence[Chunk]) -> LexicalIndex:
        key = (paper_id, chunk_set_hash(chunks))
        with self._lexical_lock:
            index = self._lexical.get(key)
        if index is None:
            # Built outside the lock: other papers' requests do not wait for it. Two threads missing the same
            # key at once both build it; the second insert just replaces an equal index.
            index = self._build_lexical_index(chunks)
            with self._lexical_lock:
                self._lexical[key] = index
        return index

    def _build_lexical_index(self, chunks: Sequence[Chunk]) -> LexicalIndex:
        documents = [tokenize(self._lexical_text(chunk)) for chunk in chunks]
        if not self.lexical_heading_stems:
            return LexicalIndex(documents)
        for tokens, chunk in zip(documents, chunks, strict=True):
            tokens += heading_stem_terms(" ".join(chunk.section_path[-1:]))  # the heading lexical_text reads
        return LexicalIndex(documents, query_tokens_with_heading_stems)

    def _fuse(
        self, paper_id: str, question: str, chunks: list[Chunk], dense: np.ndarray, lexical: np.ndarray
    ) -> Ranking:
        lists: list[tuple[Sequence[int], float]] = [
            (rank_order(dense), self.dense_weight),
            (rank_order(lexical, positive_only=True), self.lexical_weight),
        ]
        fused = reciprocal_rank_fusion(len(chunks), lists, self.rrf_k)
        structural = self._structural_matches(paper_id, question, chunks)
        # Every structural match shares rank 1 of the structure list: it says "these chunks", and dense + BM25
        # say in what order.
        for index in structural:
            fused[index] += self.structure_weight / (self.rrf_k + 1)
        # Ties (rare with two lists) fall back to the dense score, then document order.
        order = sorted(range(len(chunks)), key=lambda i: (-fused[i], -float(dense[i]), i))
        if self.back_matter_last:
            order = self._back_matter_last(question, chunks, order)
        return Ranking(chunks, order, fused, dense=dense, lexical=lexical, structural=structural)

    @staticmethod
    def _back_matter_last(question: str, chunks: list[Chunk], order: list[int]) -> list[int]:
        """`order` with the back matter the question does not ask about moved after everything else. Short
        boilerplate ("The authors declare that no competing interests exist.", "These authors contributed
        equally to this work") outranked the findings for 77% of generic questions ("What did the authors
        find?") and became the extractive answer; asked about ("Who funded this work?") it keeps its place
        (bench/bench_section_questions.py)."""
        back = [i for i in order if chunks[i].kind == "back"]
        if not back:
            return order
        unasked = {
            i
            for i, asked in zip(back, asks_about(question, [chunks[i] for i in back]), strict=True)
            if not asked
        }
        return [i for i in order if i not in unasked] + [i for i in order if i in unasked]

    def _structural_matches(self, paper_id: str, question: str, chunks: Sequence[Chunk]) -> set[int]:
        matches: set[int] = set()
        if self.findings_abstract and (asks_for_findings(question) or asks_for_aim(question)):
            matches.update(i for i, c in enumerate(chunks) if is_main_abstract(c))
        wanted_labels = label_keys(question)
        if wanted_labels:
            matches.update(i for i, c in enumerate(chunks) if chunk_label_key(c) in wanted_labels)
        mentions = author_mentions(question)
        if mentions:
            record = self.store.get_paper(paper_id)
            ref_ids = matching_references(mentions, record.references) if record else set()
            if ref_ids:
                matches.update(i for i, c in enumerate(chunks) if ref_ids.intersection(c.ref_ids))
        return matches
