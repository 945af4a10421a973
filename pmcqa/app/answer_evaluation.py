"""Answer evaluation: how good are the answers a backend gives, end to end, through the /ask code path?

Each question is asked through the service facade exactly as `POST /ask` asks it (`Library.prepare` →
the backend's `generate` → `Library.answer`, which verifies citations, checks claims and decides nothing
else), once of its own paper and once of a different paper (the next paper of the set, in file order), which
should make the backend abstain. Inputs are those of the retrieval evaluation (`app.evaluation`): a
SQuAD-format file (its articles become papers of a temporary store, never the user's library; an article
without a PMCID is stored under a reserved one, ``PMC99`` + its document id, since /ask accepts only real id
forms) or a JSONL of ``{"paper_id", "question", "answers"}`` asked of papers already in the library.

Metrics (own-paper questions unless said otherwise):

* ``f1`` / ``exact_match`` — SQuAD-normalised token F1 / exact match against the best gold answer (lower
  case, punctuation and articles removed); an abstention scores 0. ``f1_answered`` — the same over answered
  questions only.
* ``contains_gold`` — share of questions whose answer contains a gold answer (normalised as above).
* ``answered`` — share not abstained; ``selective_accuracy`` — ``contains_gold`` among the answered.
* ``wrong_paper_abstained`` — share of the same questions, asked of a different paper, that abstain.
* ``citations_valid`` — share of all citations (own and wrong paper) whose quote equals the paper's canonical
  text at its offsets and lies inside a retrieved chunk (a passage or a neighbour merged into it). Must be 1.
* ``claims_supported`` — share of answer claims the claim check supports (LLM backends; extractive quotes
  pass by construction).
* ``latency_p50_s`` / ``latency_p95_s`` — wall time of one own-paper question (retrieval included).
* calibration, where answers carry ``confidence``: expected calibration error (10 equal-width bins) and a
  reliability table of mean confidence vs the share containing gold, over answered own-paper questions
  (run with ``--min-confidence 0`` to see every question).
"""

from __future__ import annotations

import re
import string
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmcqa.app.answering.base import Answer
from pmcqa.app.answering.citations import retrieved_chunks
from pmcqa.app.answering.extractive import ExtractiveBackend, find_answer_model
from pmcqa.app.errors import ServiceError
from pmcqa.app.evaluation import EvalQuestion, fill_store, load_eval_set, reserved_pmcid
from pmcqa.app.service import Library
from pmcqa.core.logs import quiet_backend_status
from pmcqa.index.embedding import Embedder
from pmcqa.index.library import open_library
from pmcqa.index.models import PaperRecord, Passage

RELIABILITY_BINS = 10
# In a kept evaluation store (`store_dir`): the extractive backend's sentence vectors, so a rerun does not
# encode every sentence again.
SENTENCE_VECTORS = "extractive-sentence-vectors.npz"

# --- SQuAD answer normalisation (the official evaluation script's rules) -----------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD v1.1 `normalize_answer`)."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if not predicted or not expected or overlap == 0:
        return float(predicted == expected)
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def contains_gold(prediction: str, answers: Sequence[str]) -> bool:
    """Whether a gold answer appears, whole words, inside the normalised prediction."""
    padded = f" {normalize_answer(prediction)} "
    return any(f" {gold} " in padded for gold in (normalize_answer(answer) for answer in answers) if gold)


# --- per question -------------------------------------------------------------------------------------------


@dataclass
class CitationCheck:
    total: int = 0
    valid: int = 0
    problems: list[str] = field(default_factory=list)


def check_citations(answer: Answer, paper: PaperRecord, passages: list[Passage]) -> CitationCheck:
    """Each citation's quote is the canonical text at its offsets, inside a chunk that was retrieved."""
    allowed = retrieved_chunks(passages)
    check = CitationCheck(total=len(answer.citations))
    for citation in answer.citations:
        chunk = allowed.get(citation.chunk_id)
        if paper.text[citation.start : citation.end] != citation.quote:
            check.problems.append(f"{citation.chunk_id}: quote differs from the text at its offsets")
        elif chunk is None:
            check.problems.append(f"{citation.chunk_id}: not a retrieved chunk")
        elif not chunk.start <= citation.start < citation.end <= chunk.end:
            check.problems.append(f"{citation.chunk_id}: offsets outside the chunk")
        else:
            check.valid += 1
    return check


@dataclass
class Asked:
    """One question asked of one paper."""

    paper_id: str
    answer: str = ""
    abstained: bool = True
    confidence: float | None = None
    citations: int = 0
    citations_valid: int = 0
    claims: int = 0
    claims_supported: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class AnswerRecord:
    qid: str
    question: str
    answers: list[str]
    own: Asked
    other: Asked | None = None
    f1: float = 0.0
    exact_match: float = 0.0
    contains_gold: bool = False

    def score(self) -> None:
        if self.own.abstained or self.own.error:
            self.f1, self.exact_match, self.contains_gold = 0.0, 0.0, False
            return
        self.f1 = max((token_f1(self.own.answer, gold) for gold in self.answers), default=0.0)
        self.exact_match = max((exact_match(self.own.answer, gold) for gold in self.answers), default=0.0)
        self.contains_gold = contains_gold(self.own.answer, self.answers)


def ask(library: Any, paper_id: str, question: str, backend: str | None = None) -> Asked:
    """`question` of `paper_id` through the /ask path; a refusal (no such paper, ...) is recorded."""
    started = time.perf_counter()
    try:
        prepared = library.prepare(paper_id, question, None, backend)
        draft = prepared.backend.generate(prepared.question, prepared.passages, prepared.paper)
        answer: Answer = library.answer(prepared, draft)
    except ServiceError as error:
        return Asked(paper_id, error=f"{error.code}: {error.detail}", seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    check = check_citations(answer, prepared.paper, prepared.passages)
    return Asked(
        paper_id=answer.paper_id,
        answer=answer.answer,
        abstained=answer.abstained,
        confidence=answer.confidence,
        citations=check.total,
        citations_valid=check.valid,
        claims=len(answer.claims),
        claims_supported=sum(claim.supported for claim in answer.claims),
        seconds=seconds,
    )


# --- the report ---------------------------------------------------------------------------------------------


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = RELIABILITY_BINS) -> Any:
    """(expected calibration error, rows of {bin, count, mean_confidence, accuracy}) over equal-width bins."""
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.size == 0:
        return None, []
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows, error = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        mean_conf, accuracy = float(conf[mask].mean()), float(hit[mask].mean())
        error += mask.sum() / conf.size * abs(mean_conf - accuracy)
        rows.append(
            {
                "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                "count": int(mask.sum()),
                "mean_confidence": round(mean_conf, 3),
                "accuracy": round(accuracy, 3),
            }
        )
    return round(error, 4), rows


def _share(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


@dataclass
class AnswerReport:
    name: str
    backend: str
    records: list[AnswerRecord]
    papers: int
    setup_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        records = self.records
        n = len(records)
        answered = [r for r in records if not r.own.abstained and not r.own.error]
        others = [r.other for r in records if r.other is not None and not r.other.error]
        asked = [r.own for r in records] + others
        citations = sum(a.citations for a in asked)
        claims = sum(a.claims for a in asked)
        seconds = np.array([r.own.seconds for r in records if not r.own.error]) if records else np.zeros(0)
        return {
            "questions": n,
            "errors": sum(r.own.error is not None for r in records),
            "f1": _share(sum(r.f1 for r in records), n),
            "exact_match": _share(sum(r.exact_match for r in records), n),
            "contains_gold": _share(sum(r.contains_gold for r in records), n),
            "answered": _share(len(answered), n),
            "selective_accuracy": _share(sum(r.contains_gold for r in answered), len(answered)),
            "f1_answered": _share(sum(r.f1 for r in answered), len(answered)),
            "wrong_paper_questions": len(others),
            "wrong_paper_abstained": _share(sum(a.abstained for a in others), len(others)),
            "citations": citations,
            "citations_valid": _share(sum(a.citations_valid for a in asked), citations),
            "claims": claims,
            "claims_supported": _share(sum(a.claims_supported for a in asked), claims),
            "latency_p50_s": round(float(np.percentile(seconds, 50)), 4) if seconds.size else None,
            "latency_p95_s": round(float(np.percentile(seconds, 95)), 4) if seconds.size else None,
        }

    def calibration(self) -> dict[str, Any]:
        scored = [r for r in self.records if not r.own.abstained and r.own.confidence is not None]
        ece, rows = reliability([r.own.confidence for r in scored], [r.contains_gold for r in scored])  # type: ignore[misc]
        return {"questions": len(scored), "ece": ece, "reliability": rows}

    def as_dict(self, details: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "papers": self.papers,
            "setup_seconds": round(self.setup_seconds, 2),
            "params": self.params,
            "metrics": self.metrics(),
            "calibration": self.calibration(),
        }
        if details:
            data["questions"] = [asdict(r) for r in self.records]
        return data


def other_papers(questions: Sequence[EvalQuestion]) -> dict[str, str]:
    """Each paper's "wrong paper": the next distinct paper in file order (the first for the last)."""
    order = list(dict.fromkeys(q.paper_id for q in questions))
    if len(order) < 2:
        return {}
    return {paper: order[(i + 1) % len(order)] for i, paper in enumerate(order)}


def evaluate_answers(
    library: Any,
    questions: Sequence[EvalQuestion],
    *,
    name: str = "eval",
    backend: str | None = None,
    wrong_paper: bool = True,
    progress: Any = None,
) -> AnswerReport:
    """Ask every question of its own paper (and of a different one) through `library`; score the answers."""
    chosen = backend or library.settings.answer_backend
    other_of = other_papers(questions) if wrong_paper else {}
    records: list[AnswerRecord] = []
    for number, question in enumerate(questions, start=1):
        own = ask(library, question.paper_id, question.question, chosen)
        record = AnswerRecord(question.qid, question.question, question.answers, own)
        other = other_of.get(question.paper_id)
        if other is not None:
            record.other = ask(library, other, question.question, chosen)
        record.score()
        records.append(record)
        if progress is not None:
            progress(number, len(questions))
    return AnswerReport(name, chosen, records, len({q.paper_id for q in questions}))


def run_answer_evaluation(
    path: Path,
    settings: Any,
    *,
    name: str | None = None,
    backend: str | None = None,
    limit: int | None = None,
    store_dir: Path | None = None,
    embedder: Any = None,
    wrong_paper: bool = True,
    progress: Any = None,
) -> AnswerReport:
    """Load a file, build (or reuse) the store it needs, open a `Library` over it and evaluate the answers.

    SQuAD files get a store of their own (`store_dir` keeps it); JSONL questions use the user's library.
    """
    # The /ask path accepts only real id forms: articles without a PMCID get a reserved one.
    eval_set = load_eval_set(path, name, limit, fallback_id=reserved_pmcid)
    if backend is not None:  # the evaluated backend is this run's own, whatever a request may choose
        settings = settings.model_copy(update={"answer_backend": backend})
    started = time.perf_counter()
    embedder = embedder or Embedder(settings)
    with ExitStack() as stack:
        if eval_set.papers:
            data_dir = store_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="pmcqa-eval-"))
            )
            # A store of its own, whatever the user's library is on (evals never write the library); the
            # answer model stays the one the user's settings find (`auto` looks under the data dir).
            answer_model = find_answer_model(settings)
            pinned = str(answer_model.scorer) if answer_model.scorer is not None else "hand-set"
            settings = settings.model_copy(
                update={"data_dir": data_dir, "database_url": None, "answer_model": pinned}
            )
        parts = open_library(settings, writable=True, embedder=embedder)
        library = Library(settings, parts.store, parts.embedder, parts.retriever, None)
        stack.callback(library.close)
        if eval_set.papers:
            fill_store(parts.store, eval_set, settings, embedder, f"squad:{path.name}")
        # A backend that failed to load or cannot answer stops the run: the error raised says why, so the log
        # does not say it first. A server lost mid-run is still logged: the report counts errors, not why.
        with quiet_backend_status():
            extractive = None
            if (
                store_dir is not None
                and eval_set.papers
                and (backend or settings.answer_backend) == "extractive"
            ):
                extractive = library.load_backend("extractive")
                if isinstance(extractive, ExtractiveBackend):
                    extractive.load_vectors(store_dir / SENTENCE_VECTORS)
            library.wait_for_backend(backend)  # e.g. a trained scorer loading in the background
            library.backend(backend)
        setup = time.perf_counter() - started
        report = evaluate_answers(
            library,
            eval_set.questions,
            name=eval_set.name,
            backend=backend,
            wrong_paper=wrong_paper,
            progress=progress,
        )
        if isinstance(extractive, ExtractiveBackend) and store_dir is not None:
            extractive.save_vectors(store_dir / SENTENCE_VECTORS)
        chosen = library.backends.get(report.backend)
        report.params = {
            "model": getattr(chosen, "model", None),
            "top_k": settings.top_k,
            "context_tokens": settings.context_tokens,
            # The threshold in force: the setting, else the backend's own default (extractive).
            "min_confidence": getattr(chosen, "min_confidence", settings.min_confidence),
            "embedding_model": settings.embedding_model,
        }
    report.setup_seconds = setup
    return report


# --- output -------------------------------------------------------------------------------------------------


def answer_table(report: AnswerReport) -> Any:
    from rich.table import Table

    m = report.metrics()
    table = Table(title=f"Answers — {report.name} ({report.backend})")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def cell(value: Any) -> str:
        return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    rows = [
        ("questions (papers)", f"{m['questions']} ({report.papers})"),
        ("token F1", cell(m["f1"])),
        ("exact match", cell(m["exact_match"])),
        ("answer contains gold", cell(m["contains_gold"])),
        ("answered (own paper)", cell(m["answered"])),
        ("selective accuracy (gold among answered)", cell(m["selective_accuracy"])),
        ("token F1 of answered", cell(m["f1_answered"])),
        (f"abstained on wrong paper ({m['wrong_paper_questions']} q)", cell(m["wrong_paper_abstained"])),
        (f"citations valid ({m['citations']})", cell(m["citations_valid"])),
        (f"claims supported ({m['claims']})", cell(m["claims_supported"])),
        ("latency p50 / p95 (s)", f"{cell(m['latency_p50_s'])} / {cell(m['latency_p95_s'])}"),
        ("errors", str(m["errors"])),
    ]
    calibration = report.calibration()
    if calibration["ece"] is not None:
        rows.append((f"calibration ECE ({calibration['questions']} answered)", cell(calibration["ece"])))
    for label, value in rows:
        table.add_row(label, value)
    return table


def reliability_table(report: AnswerReport) -> Any:
    from rich.table import Table

    calibration = report.calibration()
    table = Table(title="Reliability of confidence (answered own-paper questions)")
    for column in ("confidence", "questions", "mean confidence", "contains gold"):
        table.add_column(column, justify="right")
    for row in calibration["reliability"]:
        cells = [str(row["count"]), f"{row['mean_confidence']:.3f}", f"{row['accuracy']:.3f}"]
        table.add_row(row["bin"], *cells)
    return table
