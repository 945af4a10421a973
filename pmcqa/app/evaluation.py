"""Retrieval evaluation: does the retriever put the gold answer in front of the answerer?

Inputs:

* SQuAD-format files (COVID-QA's ``dev.json`` / ``train.json``): each context is a whole article as flat
  text. It becomes a `Paper` (title block, header lines, "Abstract:" → section Abstract, "Text:" and every
  later paragraph → section Body; one block per blank-line-separated paragraph, so the canonical text equals
  the context exactly), is chunked by the production chunker and stored with `Store.put_papers` in a
  temporary data dir (``store_dir`` keeps and reuses one; the store's content-hash cache then skips
  re-embedding). Paper ids are the PMCID of the header URL, else ``COVIDQA-<document_id>``.
* JSONL of ``{"paper_id", "question", "answers"}`` against papers already in the user's library.

Metrics, per mode (dense, lexical, hybrid):

* ``hit@<budget>`` — share of questions whose gold answer lies wholly inside one retrieved passage's text,
  taking passages in rank order while their text fits the token budget (512 / 1024 / 2048 tokens, counted
  like the retriever does: `approx_tokens`).
* ``mrr`` — mean reciprocal rank of the first passage holding the answer (0 when none does);
  ``r@1`` / ``r@5`` — the same at fixed depths.
* ``in_a_chunk`` — questions whose answer lies inside at least one chunk at all: the ceiling of every metric
  (the rest cross chunk boundaries).

Matching normalises whitespace (and case): COVID-QA answers carry stray spaces and line breaks.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pmcqa.core.ids import parse_id
from pmcqa.index.embedding import Embedder
from pmcqa.index.library import open_library
from pmcqa.index.models import Chunk
from pmcqa.index.retrieval import MODES, Mode, Retriever, approx_tokens
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.models import BLOCK_SEPARATOR, Block, Paper

BUDGETS: tuple[int, ...] = (512, 1024, 2048)
DEPTHS: tuple[int, ...] = (1, 5)

_PMCID = re.compile(r"/pmc/articles/(PMC\d+)", re.IGNORECASE)
_HEADER = re.compile(r"^(https?://|SHA:|Authors:|Date:|DOI:|License:|Keywords:)")


@dataclass
class EvalQuestion:
    qid: str
    paper_id: str
    question: str
    answers: list[str]
    # Gold answer offsets [start, end) into the paper's canonical text (SQuAD files only; JSONL has none).
    spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class EvalSet:
    name: str
    questions: list[EvalQuestion]
    papers: list[tuple[str, Paper]] = field(default_factory=list)  # empty for JSONL input


# --- loading ---------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def context_to_paper(context: str) -> Paper:
    """A COVID-QA context as a Paper whose canonical text is the context, character for character."""
    parts = context.split(BLOCK_SEPARATOR)
    texts: list[str] = []
    for part in parts:
        # Runs of blank lines give empty parts; fold them into the previous block to keep offsets exact.
        if texts and not part.strip():
            texts[-1] += BLOCK_SEPARATOR + part
        else:
            texts.append(part)
    blocks: list[Block] = []
    section: list[str] = []  # [] = still in the header (URL, SHA, authors, ...)
    for index, text in enumerate(texts):
        stripped = text.strip()
        if index == 0:
            blocks.append(Block(kind="title", text=text, section_path=["Title"], part="front"))
            continue
        if stripped.startswith("Abstract:"):
            section = ["Abstract"]
        elif stripped.startswith("Text:") or (not section and not _HEADER.match(stripped)):
            section = ["Body"]
        if not section:
            blocks.append(Block(kind="paragraph", text=text, section_path=["Metadata"], part="front"))
        elif section == ["Abstract"]:
            blocks.append(Block(kind="abstract", text=text, section_path=section, part="front"))
        else:
            blocks.append(Block(kind="paragraph", text=text, section_path=section, part="body"))
    title = texts[0].strip() if texts else ""
    pmcid = _PMCID.search(context[:2000])
    return Paper(pmcid=pmcid.group(1).upper() if pmcid else None, title=title, blocks=blocks)


def _answer_texts(raw: Iterable[Any]) -> list[str]:
    answers = [a["text"] if isinstance(a, dict) else a for a in raw]
    return [a for a in answers if isinstance(a, str) and a.strip()]


def _answer_spans(raw: Iterable[Any]) -> list[tuple[int, int]]:
    # context_to_paper keeps the context as the canonical text, so SQuAD's offsets are the paper's.
    return [
        (a["answer_start"], a["answer_start"] + len(a["text"]))
        for a in raw
        if isinstance(a, dict) and isinstance(a.get("answer_start"), int) and a.get("text")
    ]


def covidqa_id(document_id: str, position: int) -> str:
    """The retrieval evaluation's id for an article without a PMCID of its own."""
    return f"COVIDQA-{document_id}"


def reserved_pmcid(document_id: str, position: int) -> str:
    """An id the service accepts (a PMCID) for an article without one: ``PMC99`` + 8 digits of its document
    id (else its position in the file), far above real PMCIDs. Used only inside an evaluation's own store."""
    number = int(document_id) if str(document_id).isdigit() else position
    return f"PMC99{number:08d}"


def load_squad(
    path: Path,
    name: str | None = None,
    limit: int | None = None,
    fallback_id: Callable[[str, int], str] = covidqa_id,
) -> EvalSet:
    """Articles (as Papers) and their answerable questions; `limit` keeps the first N questions.

    An article is stored under the PMCID of its header URL, else ``fallback_id(document_id, position)``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    papers: list[tuple[str, Paper]] = []
    questions: list[EvalQuestion] = []
    seen: set[str] = set()
    position = 0
    for article_index, article in enumerate(data["data"]):
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            position += 1
            paper = context_to_paper(paragraph["context"])
            document_id = paragraph.get("document_id", f"{article_index}-{paragraph_index}")
            paper_id = paper.pmcid or fallback_id(str(document_id), position)
            if paper_id in seen:  # one article, two document ids: keep the ids apart
                paper_id = fallback_id(str(document_id), position)
            seen.add(paper_id)
            qas = [
                EvalQuestion(
                    str(qa["id"]),
                    paper_id,
                    qa["question"],
                    _answer_texts(qa["answers"]),
                    _answer_spans(qa["answers"]),
                )
                for qa in paragraph["qas"]
                if not qa.get("is_impossible") and _answer_texts(qa["answers"])
            ]
            if limit is not None:
                qas = qas[: max(0, limit - len(questions))]
            if qas:
                papers.append((paper_id, paper))
                questions.extend(qas)
    return EvalSet(name or path.stem, questions, papers)


def load_jsonl(path: Path, name: str | None = None, limit: int | None = None) -> EvalSet:
    """Questions on papers already in the library: one ``{"paper_id", "question", "answers"}`` a line.

    `answers` is a list of strings (or SQuAD answer objects), or one string; `paper_id` any id form the
    service accepts, kept canonical (``pmc123`` and ``PMC123`` are one paper). A malformed line is a
    ValueError naming the file and line."""
    questions: list[EvalQuestion] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            questions.append(_jsonl_question(json.loads(line), number))
        except ValueError as exc:  # bad JSON, a bad field, or `InvalidPaperId` (a ValueError)
            raise ValueError(f"{path.name} line {number}: {exc}") from None
        if limit is not None and len(questions) >= limit:
            break
    return EvalSet(name or path.stem, questions)


def _jsonl_question(item: Any, number: int) -> EvalQuestion:
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    for key in ("paper_id", "question"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string")
    answers = item.get("answers", item.get("answer", []))
    if isinstance(answers, str):  # one answer (iterated, each character would count as a gold answer)
        answers = [answers]
    if not isinstance(answers, list):
        raise ValueError("'answers' must be a list of strings (or one string)")
    paper_id = str(parse_id(item["paper_id"]))
    return EvalQuestion(str(item.get("id", number)), paper_id, item["question"], _answer_texts(answers))


def is_jsonl(path: Path) -> bool:
    """Whether `path` holds a question per line (asked of the user's library), not a SQuAD file."""
    return path.suffix.lower() in (".jsonl", ".ndjson")


def load_eval_set(
    path: Path,
    name: str | None = None,
    limit: int | None = None,
    fallback_id: Callable[[str, int], str] = covidqa_id,
) -> EvalSet:
    if is_jsonl(path):
        return load_jsonl(path, name, limit)
    try:
        return load_squad(path, name, limit, fallback_id)
    except (TypeError, AttributeError, KeyError) as exc:  # JSON, but not SQuAD's {"data": [{"paragraphs"...
        kind = type(exc).__name__
        raise ValueError(f"not a SQuAD file ({kind}: {exc}); a question per line needs .jsonl") from None


# --- metrics ---------------------------------------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    questions: int = 0
    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(BUDGETS, 0))
    depth_hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(DEPTHS, 0))
    reciprocal_ranks: float = 0.0
    seconds: float = 0.0

    def add(self, first_rank: int | None, budget_hit: dict[int, bool]) -> None:
        self.questions += 1
        for budget, hit in budget_hit.items():
            self.hits[budget] += hit
        if first_rank is not None:
            self.reciprocal_ranks += 1.0 / first_rank
            for depth in self.depth_hits:
                self.depth_hits[depth] += first_rank <= depth

    def as_dict(self) -> dict[str, Any]:
        n = max(self.questions, 1)
        return {
            "questions": self.questions,
            **{f"hit@{b}": round(h / n, 4) for b, h in self.hits.items()},
            "mrr": round(self.reciprocal_ranks / n, 4),
            **{f"r@{d}": round(h / n, 4) for d, h in self.depth_hits.items()},
            "seconds": round(self.seconds, 2),
        }


def contains_answer(passage_text: str, answers: Sequence[str]) -> bool:
    """`passage_text` must already be normalised."""
    return any(normalise(answer) in passage_text for answer in answers)


def score_ranking(
    ranked: Sequence[Chunk],
    answers: Sequence[str],
    normalised: dict[str, str],
    tokens: dict[str, int],
    budgets: Sequence[int] = BUDGETS,
) -> tuple[int | None, dict[int, bool]]:
    """(rank of the first chunk holding an answer, {budget: answer inside the passages that fit})."""
    first_rank = next(
        (rank for rank, c in enumerate(ranked, start=1) if contains_answer(normalised[c.chunk_id], answers)),
        None,
    )
    budget_hit: dict[int, bool] = {}
    for budget in budgets:
        spent, hit = 0, False
        for rank, chunk in enumerate(ranked, start=1):
            spent += tokens[chunk.chunk_id]
            if spent > budget:
                break
            if rank == first_rank:
                hit = True
                break
        budget_hit[budget] = hit
    return first_rank, budget_hit


@dataclass
class EvalReport:
    name: str
    questions: int
    papers: int
    chunks: int
    in_a_chunk: int
    modes: dict[str, ModeResult]
    setup_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # paper ids asked about that the library lacks

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "questions": self.questions,
            "papers": self.papers,
            "missing_papers": self.missing,
            "chunks": self.chunks,
            "answer_in_a_chunk": self.in_a_chunk,
            "answer_crosses_chunks": self.questions - self.in_a_chunk,
            "ceiling": round(self.in_a_chunk / max(self.questions, 1), 4),
            "setup_seconds": round(self.setup_seconds, 2),
            "params": self.params,
            "modes": {mode: result.as_dict() for mode, result in self.modes.items()},
        }


class _ChunkCache:
    """Per-paper chunk texts (normalised) and token counts, read from the store once."""

    def __init__(self, store: Any, count_tokens: Callable[[str], int]) -> None:
        self.store = store
        self.count_tokens = count_tokens
        self.chunks: dict[str, list[Chunk]] = {}
        self.normalised: dict[str, str] = {}
        self.tokens: dict[str, int] = {}

    def get(self, paper_id: str) -> list[Chunk]:
        if paper_id not in self.chunks:
            chunks = self.store.get_chunks(paper_id)
            self.chunks[paper_id] = chunks
            for chunk in chunks:
                self.normalised[chunk.chunk_id] = normalise(chunk.text)
                self.tokens[chunk.chunk_id] = self.count_tokens(chunk.text)
        return self.chunks[paper_id]


def evaluate(
    retriever: Retriever,
    questions: Sequence[EvalQuestion],
    modes: Sequence[Mode] = MODES,
    budgets: Sequence[int] = BUDGETS,
    name: str = "eval",
) -> EvalReport:
    """Rank every question's paper in each mode and score the rankings (see the module docstring)."""
    cache = _ChunkCache(retriever.store, retriever.count_tokens)
    questions = [_stored_under(retriever.store, cache, q) for q in questions]  # a PMID or DOI names one too
    known = [q for q in questions if cache.get(q.paper_id)]
    vectors = (
        retriever.embedder.embed_queries([q.question for q in known])
        if known and set(modes) & {"dense", "hybrid"}
        else np.zeros((len(known), 1), dtype=np.float32)
    )
    in_a_chunk = sum(
        any(contains_answer(cache.normalised[c.chunk_id], q.answers) for c in cache.get(q.paper_id))
        for q in known
    )
    results: dict[str, ModeResult] = {}
    for mode in modes:
        result = results[mode] = ModeResult(mode, hits=dict.fromkeys(budgets, 0))
        started = time.perf_counter()
        for question, vector in zip(known, vectors, strict=True):
            ranking = retriever.rank(question.paper_id, question.question, mode, query_vector=vector)
            ranked = [] if ranking is None else [ranking.chunks[i] for i in ranking.order]
            result.add(*score_ranking(ranked, question.answers, cache.normalised, cache.tokens, budgets))
        result.seconds = time.perf_counter() - started
    # Questions on papers the store lacks count as misses, so the denominators stay honest.
    for result in results.values():
        for _ in range(len(questions) - len(known)):
            result.add(None, dict.fromkeys(budgets, False))
    papers = {q.paper_id for q in known}
    chunks = sum(len(cache.get(p)) for p in papers)
    missing = sorted({q.paper_id for q in questions} - papers)
    return EvalReport(name, len(questions), len(papers), chunks, in_a_chunk, results, missing=missing)


def _stored_under(store: Any, cache: _ChunkCache, question: EvalQuestion) -> EvalQuestion:
    if cache.get(question.paper_id):
        return question
    paper_id = store.resolve_alias(question.paper_id)
    return question if paper_id is None else dataclasses.replace(question, paper_id=paper_id)


# --- building the evaluation store -----------------------------------------------------------------------


def build_store(eval_set: EvalSet, settings: Any, embedder: Any, source: str) -> Any:
    """Chunk the eval set's papers with the production chunker and store them (one transaction)."""
    store = open_library(settings, writable=True, embedder=embedder).store
    fill_store(store, eval_set, settings, embedder, source)
    return store


def fill_store(store: Any, eval_set: EvalSet, settings: Any, embedder: Any, source: str) -> None:
    """Chunk and store the eval set's papers that `store` does not already hold as this chunker cuts them."""
    chunker = Chunker(settings)  # the tokenizer loads only if a paper needs chunking
    items = []
    for paper_id, paper in eval_set.papers:
        stored = store.get_paper(paper_id)
        if stored is not None and stored.chunking == chunker.params and stored.text == paper.canonical_text:
            continue  # a kept store (`store_dir`) already holds this paper as this chunker cuts it
        items.append((*chunker.chunk(paper, paper_id, source), None))
    store.put_papers(items, embedder)


def run_evaluation(
    path: Path,
    settings: Any,
    *,
    name: str | None = None,
    modes: Sequence[Mode] = MODES,
    limit: int | None = None,
    store_dir: Path | None = None,
    retriever_options: dict[str, Any] | None = None,
    embedder: Any = None,
) -> EvalReport:
    """Load a file, build (or reuse) the store it needs, evaluate. SQuAD files never touch the library."""
    eval_set = load_eval_set(path, name, limit)
    started = time.perf_counter()
    embedder = embedder or Embedder(settings)
    with ExitStack() as stack:
        if eval_set.papers:
            data_dir = store_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="pmcqa-eval-"))
            )
            # A local store of its own, also where the library is PostgreSQL: evals never write the library.
            eval_settings = settings.model_copy(update={"data_dir": data_dir, "database_url": None})
            store = build_store(eval_set, eval_settings, embedder, f"squad:{path.name}")
        else:
            store = open_library(settings, writable=True, embedder=embedder).store
        stack.callback(store.close)
        setup = time.perf_counter() - started
        retriever = Retriever(store, embedder, settings, **(retriever_options or {}))
        report = evaluate(retriever, eval_set.questions, modes, name=eval_set.name)
    report.setup_seconds = setup
    report.params = {
        "rrf_k": retriever.rrf_k,
        "dense_weight": retriever.dense_weight,
        "lexical_weight": retriever.lexical_weight,
        "structure_weight": retriever.structure_weight,
        "chunk_max_tokens": settings.chunk_max_tokens,
        "chunk_min_tokens": settings.chunk_min_tokens,
        "embedding_model": settings.embedding_model,
        "token_count": "approx: ceil(words*1.3)" if retriever.count_tokens is approx_tokens else "custom",
    }
    return report


# --- output ----------------------------------------------------------------------------------------------


def report_table(report: EvalReport) -> Table:
    data = report.as_dict()
    caption = (
        f"{data['questions']} questions, {data['papers']} papers, {data['chunks']} chunks; "
        f"answer inside one chunk: {data['answer_in_a_chunk']} (ceiling {data['ceiling']:.3f}), "
        f"crossing chunk boundaries: {data['answer_crosses_chunks']}"
    )
    table = Table(title=f"Retrieval — {report.name}", caption=caption)
    table.add_column("mode")
    budgets = [key for key in next(iter(data["modes"].values()), {}) if key.startswith("hit@")]
    for key in [*budgets, "mrr", "r@1", "r@5", "seconds"]:
        table.add_column(key, justify="right")
    for mode, row in data["modes"].items():
        cells = [f"{row[k]:.3f}" for k in [*budgets, "mrr", "r@1", "r@5"]] + [f"{row['seconds']:.1f}"]
        table.add_row(mode, *cells)
    return table


# --- neighbour expansion, at equal budget ---------------------------------------------------------------


def context_hit_rate(
    retriever: Retriever,
    questions: Sequence[EvalQuestion],
    budget: int,
    neighbour_share: float,
    mode: Mode = "hybrid",
) -> float:
    """Share of questions whose answer lies inside one passage *with its neighbours merged*, when the top
    passages fill ``budget × (1 − neighbour_share)`` tokens and neighbour expansion may use the rest.

    This is what the answerer sees from `Retriever.retrieve`; comparing shares at one budget tells whether
    tokens are better spent on neighbours of good passages or on more passages.
    """
    cache = _ChunkCache(retriever.store, retriever.count_tokens)
    vectors = retriever.embedder.embed_queries([q.question for q in questions])
    hits = 0
    for question, vector in zip(questions, vectors, strict=True):
        ranking = retriever.rank(question.paper_id, question.question, mode, query_vector=vector)
        if ranking is None:
            continue
        cache.get(question.paper_id)
        spent, top_k = 0, 0
        for index in ranking.order:
            spent += cache.tokens[ranking.chunks[index].chunk_id]
            if spent > budget * (1 - neighbour_share) and top_k:
                break
            top_k += 1
        passages = retriever.expand_neighbours(ranking.passages(top_k), ranking.chunks, budget)
        for passage in passages:
            merged = sorted([passage.chunk, *passage.neighbours], key=lambda c: c.ordinal)
            if contains_answer(" ".join(cache.normalised[c.chunk_id] for c in merged), question.answers):
                hits += 1
                break
    return hits / max(len(questions), 1)
