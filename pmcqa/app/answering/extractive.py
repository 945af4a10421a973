"""The CPU default backend: answer with the paper's own sentences, no LLM.

Retrieved passages are split into sentences (exact offsets into ``paper.text``), each sentence is scored
against the question by embedding similarity (the Embedder's query vs document encoders) plus an idf-weighted
term coverage, and the best 1-3 sentences, contiguous where possible and in paper order, become the answer.
When even the best sentence scores under the abstention threshold the backend says the paper does not
appear to answer the question, rather than quoting something loosely related.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from cachetools import LRUCache

from pmcqa.app.answering.base import (
    ABSTAIN_ANSWER,
    AnswerDelta,
    BackendEvent,
    CitedSpan,
    Draft,
    DraftDone,
    StepEvent,
)
from pmcqa.core.settings import Settings
from pmcqa.core.text import split_sentences, tokenize
from pmcqa.index.embedding import Embedder
from pmcqa.index.models import Chunk, PaperRecord, Passage

# Evidence score (DENSE_WEIGHT * cosine + LEXICAL_WEIGHT * idf-weighted term coverage of the best sentence)
# under which the backend abstains. Calibrated with bench/calibrate_abstention.py on COVID-QA dev (203
# questions, 21 papers; each asked of its own paper and of a different paper; pmcqa.core.text tokens and
# sentences, chunker v2): 0.40 maximises balanced accuracy (0.931) — it answers 92.6% of own-paper questions
# and abstains on 93.6% of other-paper ones (medians 0.65 vs 0.23; at 0.45 it would answer 87.2% / abstain
# 96.6%). settings.abstain_threshold overrides.
DEFAULT_ABSTAIN_THRESHOLD = 0.40
DENSE_WEIGHT = 0.5
LEXICAL_WEIGHT = 0.5
MAX_SENTENCES = 3
# A neighbour of the best sentence joins the answer when it scores at least this share of the best.
ADJACENT_RATIO = 0.8
# A non-adjacent sentence joins only when it is nearly as strong as the best one.
SEPARATE_RATIO = 0.92
# Cache sizes: sentence vectors of a few dozen papers, and the idf tables of the papers asked about recently.
SENTENCE_VECTOR_CACHE = 50_000
IDF_CACHE = 64


class _Embedder(Protocol):
    model_name: str

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Sentence:
    chunk: Chunk
    start: int  # offsets into paper.text
    end: int
    text: str
    index: int  # position within its chunk


def place_of(chunk: Chunk) -> str:
    """A chunk's place for the steps: its section path, else its kind ("abstract", "body text", ...)."""
    return chunk.section or ("body text" if chunk.kind == "paragraph" else chunk.kind)


def chunk_sentences(chunk: Chunk) -> list[Sentence]:
    """Sentences of `chunk` (the shared splitter) with exact offsets into the paper's canonical text."""
    return [
        Sentence(chunk, chunk.start + start, chunk.start + end, chunk.text[start:end], index)
        for index, (start, end) in enumerate(split_sentences(chunk.text))
    ]


class ExtractiveBackend:
    """Picks the paper's best-supported sentences; abstains below a calibrated evidence score."""

    name = "extractive"

    def __init__(self, settings: Settings, embedder: _Embedder | None = None) -> None:
        self.settings = settings
        self._embedder = embedder
        self.threshold = (
            settings.abstain_threshold
            if settings.abstain_threshold is not None
            else DEFAULT_ABSTAIN_THRESHOLD
        )
        # Sentence vectors are reused across questions about the same paper (keyed by paper and offsets).
        # Request threads share the backend: every cache access holds the lock.
        self._vectors: LRUCache[tuple[str, int, int], np.ndarray] = LRUCache(maxsize=SENTENCE_VECTOR_CACHE)
        self._idf: LRUCache[str, tuple[dict[str, float], float]] = LRUCache(maxsize=IDF_CACHE)
        self._lock = threading.Lock()

    @property
    def embedder(self) -> _Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.settings)
        return self._embedder

    @property
    def model(self) -> str:
        return f"extractive/{getattr(self.embedder, 'model_name', 'embedder')}"

    def is_ready(self) -> bool:
        return True

    # --- scoring -------------------------------------------------------------------------------------------
    def _paper_idf(self, paper: PaperRecord) -> tuple[dict[str, float], float]:
        """BM25-style idf of each term over the paper's paragraphs, and the idf of an unseen term."""
        with self._lock:
            cached = self._idf.get(paper.paper_id)
            if cached is not None:
                return cached
        paragraphs = [p for p in paper.text.split("\n\n") if p.strip()] or [paper.text]
        df: dict[str, int] = {}
        for paragraph in paragraphs:
            for token in set(tokenize(paragraph)):
                df[token] = df.get(token, 0) + 1
        n = len(paragraphs)
        idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        result = (idf, math.log(1 + (n + 0.5) / 0.5))
        with self._lock:
            self._idf[paper.paper_id] = result
        return result

    def _sentence_vectors(self, paper_id: str, sentences: list[Sentence]) -> np.ndarray:
        keys = [(paper_id, s.start, s.end) for s in sentences]
        with self._lock:
            vectors = [self._vectors.get(key) for key in keys]
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        if missing:
            # Encoded outside the lock; kept from here rather than re-read, which eviction could have undone.
            fresh = self.embedder.embed_documents([sentences[i].text for i in missing])
            with self._lock:
                for i, vector in zip(missing, fresh, strict=True):
                    vectors[i] = self._vectors[keys[i]] = np.asarray(vector, dtype=np.float32)
        return np.stack(vectors)

    def score(self, question: str, sentences: list[Sentence], paper: PaperRecord) -> np.ndarray:
        """Evidence score of each sentence: weighted cosine similarity plus idf-weighted term coverage."""
        query = np.asarray(self.embedder.embed_queries([question]), dtype=np.float32)[0]
        dense = self._sentence_vectors(paper.paper_id, sentences) @ query
        idf, unseen = self._paper_idf(paper)
        terms = set(tokenize(question))
        weights = {t: idf.get(t, unseen) for t in terms}
        total = sum(weights.values())
        lexical = np.zeros(len(sentences), dtype=np.float32)
        if total > 0:
            for i, sentence in enumerate(sentences):
                present = terms.intersection(tokenize(sentence.text))
                lexical[i] = sum(weights[t] for t in present) / total
        return DENSE_WEIGHT * dense + LEXICAL_WEIGHT * lexical

    # --- selection -----------------------------------------------------------------------------------------
    @staticmethod
    def candidates(passages: list[Passage]) -> list[Sentence]:
        """Sentences of the retrieved chunks (and their neighbours), each chunk once, in paper order."""
        chunks: dict[str, Chunk] = {}
        for passage in passages:
            for chunk in [passage.chunk, *passage.neighbours]:
                chunks.setdefault(chunk.chunk_id, chunk)
        sentences: list[Sentence] = []
        for chunk in sorted(chunks.values(), key=lambda c: c.start):
            sentences.extend(s for s in chunk_sentences(chunk) if len(tokenize(s.text)) >= 3)
        return sentences

    def select(self, sentences: list[Sentence], scores: np.ndarray) -> list[int]:
        """Indices of the best sentence plus up to two more: contiguous neighbours first, in paper order."""
        best = int(np.argmax(scores))
        top = float(scores[best])
        chosen = [best]

        def adjacent(i: int, j: int) -> bool:
            a, b = sentences[i], sentences[j]
            return a.chunk.chunk_id == b.chunk.chunk_id and abs(a.index - b.index) == 1

        while len(chosen) < MAX_SENTENCES:
            edge = [
                j
                for j in range(len(sentences))
                if j not in chosen
                and any(adjacent(i, j) for i in chosen)
                and scores[j] >= max(self.threshold, ADJACENT_RATIO * top)
            ]
            if not edge:
                break
            chosen.append(max(edge, key=lambda j: scores[j]))
        for j in np.argsort(-scores):
            if len(chosen) >= MAX_SENTENCES:
                break
            j = int(j)
            if j not in chosen and scores[j] >= SEPARATE_RATIO * top:
                chosen.append(j)
        return sorted(chosen, key=lambda i: sentences[i].start)

    # --- the backend protocol ------------------------------------------------------------------------------
    def _run(self, question: str, passages: list[Passage], paper: PaperRecord) -> Iterator[BackendEvent]:
        sections = list(dict.fromkeys(place_of(p.chunk) for p in passages))
        title = f" ({paper.title})" if paper.title else ""
        yield StepEvent(
            data=f'1) Searched {len(passages)} passages of {paper.paper_id}{title} for "{question}".',
        )
        if passages:
            yield StepEvent(data=f"2) Most relevant sections: {'; '.join(sections[:4])}.")
        sentences = self.candidates(passages)
        if not sentences:
            yield StepEvent(data="3) No retrieved passage contains a usable sentence; abstaining.")
            yield from self._abstain()
            return
        scores = self.score(question, sentences, paper)
        best = float(scores.max())
        if best < self.threshold:
            yield StepEvent(
                data=f"3) The best of {len(sentences)} sentences scored {best:.2f}, under the evidence "
                f"threshold {self.threshold:.2f}; the paper does not appear to answer this.",
            )
            yield from self._abstain()
            return
        chosen = self.select(sentences, scores)
        where = "; ".join(dict.fromkeys(place_of(sentences[i].chunk) for i in chosen))
        yield StepEvent(
            data=f"3) Selected {len(chosen)} of {len(sentences)} sentences from {where} "
            f"(score {best:.2f}; threshold {self.threshold:.2f}).",
        )
        parts: list[str] = []
        cited: list[CitedSpan] = []
        previous: Sentence | None = None
        for i in chosen:
            sentence = sentences[i]
            contiguous = (
                previous is not None
                and previous.chunk.chunk_id == sentence.chunk.chunk_id
                and (previous.index + 1 == sentence.index)
            )
            delta = sentence.text if previous is None else (" " if contiguous else " … ") + sentence.text
            parts.append(delta)
            yield AnswerDelta(data=delta)
            if contiguous and cited:
                # Merge contiguous sentences into one span; the text between them is the paper's own.
                last = cited[-1]
                cited[-1] = CitedSpan(
                    chunk_id=last.chunk_id,
                    start=last.start,
                    end=sentence.end,
                    quote=paper.text[last.start : sentence.end] if last.start is not None else None,
                )
            else:
                cited.append(
                    CitedSpan(
                        chunk_id=sentence.chunk.chunk_id,
                        quote=sentence.text,
                        start=sentence.start,
                        end=sentence.end,
                    )
                )
            previous = sentence
        yield DraftDone(data=Draft(answer="".join(parts), cited=cited, model=self.model))

    def _abstain(self) -> Iterator[BackendEvent]:
        yield AnswerDelta(data=ABSTAIN_ANSWER)
        yield DraftDone(data=Draft(answer=ABSTAIN_ANSWER, abstained=True, model=self.model))

    def stream(
        self,
        question: str,
        passages: list[Passage],
        paper: PaperRecord,
        cancelled: threading.Event | None = None,
    ) -> Iterator[BackendEvent]:
        steps: list[str] = []
        for event in self._run(question, passages, paper):
            if cancelled is not None and cancelled.is_set():
                return
            if isinstance(event, StepEvent):
                steps.append(event.data)
            if isinstance(event, DraftDone):
                event = DraftDone(data=event.data.model_copy(update={"steps": steps}))
            yield event

    def generate(self, question: str, passages: list[Passage], paper: PaperRecord) -> Draft:
        draft: Draft | None = None
        for event in self.stream(question, passages, paper):
            if isinstance(event, DraftDone):
                draft = event.data
        assert draft is not None
        return draft

    def best_score(self, question: str, passages: list[Passage], paper: PaperRecord) -> float:
        """The evidence score abstention is decided on (used by the calibration script)."""
        sentences = self.candidates(passages)
        if not sentences:
            return float("-inf")
        return float(self.score(question, sentences, paper).max())
