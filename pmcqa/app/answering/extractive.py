"""The CPU default backend: answer with the paper's own sentences, no LLM.

Retrieved passages (and the neighbours merged into them) are split into sentences with exact offsets into
``paper.text``. Each sentence gets a row of `FEATURES` (embedding cosine with the question, idf-weighted
coverage of the question's terms, the retrieval rank of its passage, how much it says beyond the question,
whether it holds the kind of token the question asks for, where it sits), and a linear sentence ranker scores
them. The best sentence, with contiguous neighbours that score nearly as well, becomes the answer, in paper
order, cited verbatim.

`confidence` — the estimated probability that the answer contains the right information — comes from a
second logistic model over the answer's evidence (`ANSWER_FEATURES`, fitted on COVID-QA train with each
question asked of its own paper and of a different one, checked for calibration on dev). Under
``settings.min_confidence`` (default: the answer model's, chosen on dev) the backend says the paper does not
appear to answer the question, rather than quoting something loosely related.

A question that names the back-matter section of its best passage ("Who funded this work?" of "Funding",
"Are there any conflicts of interest?" of "Competing interests") is answered from that section alone: its
opening sentences, short statements such as "None declared." included, at `NAMED_SECTION_CONFIDENCE`
(`named_section`); the confidence model, fitted on COVID-QA's questions about what a paper reports, abstained
on most of these. A question asking only what the paper found ("What did the authors find?", "What is the main
conclusion?") is answered with the closing sentences of its abstract, where a paper states its conclusion, at
`FINDINGS_CONFIDENCE`, and one asking only what it set out to do with the sentence of its abstract that states
its aim, at `AIM_CONFIDENCE` (`abstract_passages`): a question with no subject gave the ranker nothing to go
on.

Ranker, confidence model and threshold make an `AnswerModel`. The hand-set one is this module's constants
(`RANKER_WEIGHTS`: 0.5 cosine with the retrieval encoder + 0.5 term coverage; `CONFIDENCE_WEIGHTS`, fitted
offline by ``bench/fit_answer_models.py``). `pmcqa train-answerer` (`app/answer_training.py`) makes a trained
one: the embedding model fine-tuned to score answer sentences (the cosine), with the ranker weight, confidence
model and threshold fitted for it, in a folder `find_answer_model` picks up (`settings.answer_model`).
Answering needs no scikit-learn, and on CPU no torch (the scorer runs on ONNX Runtime like the encoder).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from cachetools import LRUCache

from pmcqa.app.answering import span_reader
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
from pmcqa.index import onnx_backend
from pmcqa.index.embedding import Embedder
from pmcqa.index.models import Chunk, PaperRecord, Passage
from pmcqa.index.retrieval import asks_for_aim, asks_for_findings, is_main_abstract, names_heading

# --- the fitted models (bench/fit_answer_models.py prints these constants) --------------------------------

# The features of a candidate sentence, in `feature_rows` column order.
FEATURES: tuple[str, ...] = (
    "dense",  # cosine of question and sentence vectors
    "lexical",  # idf-weighted share of the question's terms present
    "inverse_rank",  # 1 / retrieval rank of the passage holding the sentence
    "neighbour",  # the sentence comes from a neighbour merged into a passage, not the passage itself
    "novelty",  # share of the sentence's terms not in the question (a restatement scores low)
    "log_length",  # log(1 + terms)
    "number_match",  # a how-many / what-percentage question, and the sentence holds a number
    "time_match",  # a when / what-year question, and the sentence holds a year, date or duration
    "abstract",
    "front_matter",  # title or header lines: rarely an answer
    "first_in_chunk",
)
# Sentence ranker: logit = RANKER_BIAS + sum(weight * feature). The hand-set score (0.5 dense + 0.5 lexical):
# logistic rankers fitted on COVID-QA train did not beat it on dev (best sentence overlaps gold: 0.611 vs
# 0.616 with dense + lexical, 0.611 with all FEATURES; bench/fit_answer_models.py, 2026-11-30).
RANKER_WEIGHTS: dict[str, float] = {"dense": 0.5, "lexical": 0.5}
RANKER_BIAS = 0.0
# A neighbour of the best sentence joins the answer when its ranker probability is at least this share of the
# best one's; at most MAX_SENTENCES sentences in all. Chosen on dev: gold contained 0.655, token F1 0.293.
ADJACENT_RATIO = 0.9
MAX_SENTENCES = 3

# The features of an answer, in `answer_features` order.
ANSWER_FEATURES: tuple[str, ...] = (
    "best_logit",  # the ranker's logit of the best sentence
    "margin",  # best logit minus the second best
    "best_dense",
    "best_lexical",
    "evidence",  # 0.5 * dense + 0.5 * lexical of the best sentence (the former abstention score)
    "max_lexical",  # the best term coverage among all candidates
    "sentences",  # sentences in the answer
)
# Confidence: P(answer contains the gold answer) = sigmoid(CONFIDENCE_BIAS + sum(weight * feature)), a
# logistic regression fitted on COVID-QA train (all 1,417 questions, own- and wrong-paper answers, with the
# default onnx-int8 vectors); on dev its expected calibration error is 0.124 over own-paper answers, 0.065
# with the wrong-paper ones (train: 0.095 / 0.049). bench/fit_answer_models.out.txt, 2026-12-01.
CONFIDENCE_WEIGHTS: dict[str, float] = {
    "best_logit": 2.1424,
    "margin": 5.9631,
    "best_dense": 1.5128,
    "best_lexical": 1.5958,
    "evidence": 2.1424,
    "max_lexical": -0.7971,
    "sentences": 0.1471,
}
CONFIDENCE_BIAS = -5.1246
# Answer only at or above this confidence (settings.min_confidence overrides). Chosen on dev as the highest
# threshold (in steps of 0.05) answering >= 80% of own-paper questions: 0.20 answers 86.7% and abstains on
# 96.6% of wrong-paper ones (0.25 would answer 78.8%).
DEFAULT_MIN_CONFIDENCE = 0.2

# `pmcqa train-answerer` writes a fine-tuned sentence scorer (a sentence-transformers model) with the ranker,
# confidence model and threshold fitted for it into this folder of `settings.models_dir`; `answer_model`
# "auto" uses it when present.
ANSWER_MODEL_DIR = "answer-scorer"
ANSWER_MODEL_FILE = "answer-model.json"

# Cache sizes: sentence vectors of a few dozen papers, and the idf tables of the papers asked about recently.
SENTENCE_VECTOR_CACHE = 50_000
IDF_CACHE = 64

# The confidence of an answer from the back-matter section a question names (`named_section`). Over the
# 1,116 section questions of bench/bench_section_questions.py --answers (2026-12-02), 729 of the 730 such
# answers quoted the section asked about; 0.95, not 1, because the section is not always the whole answer (an
# acknowledgements section past `NAMED_SECTION_CHARS`, funding also thanked elsewhere).
NAMED_SECTION_CONFIDENCE = 0.95
# How much of that section the answer quotes: its opening sentences up to this many characters.
NAMED_SECTION_CHARS = 800
# A question asking only what the paper found ("What did the authors find?", `retrieval.asks_for_findings`) is
# answered with the closing sentences of its abstract, up to this many characters, where a paper states its
# conclusion. Its confidence (2026-12-02): bench/bench_section_questions.py --answers asked 114 such questions
# of the 38 JATS papers with a structured abstract, and every answer quoted its Conclusions part; on COVID-QA
# train's 18 such questions, 4 answers contain the annotated span, and about 15 of 18 state the paper's
# conclusion, read by hand (the annotators picked one sentence of several that say it).
FINDINGS_CHARS = 500
FINDINGS_CONFIDENCE = 0.85
# The closing parts of a structured abstract that state no finding.
_NOT_FINDINGS = re.compile(r"registration|funding|keywords|abbreviations|availability", re.IGNORECASE)
# A question asking only what the paper set out to do ("What was the aim of this study?",
# `retrieval.asks_for_aim`) is answered with the sentence of its abstract that states it: the first of its
# Objective / Aim / Purpose part, else its first sentence saying "aim", "objective", "purpose" or "goal", or
# "we sought / investigated / examined ...", else the first in which the authors speak of their own work
# ("Here we ...", "In this study ..."), which in an abstract follows the background. Its confidence
# (2026-12-02): of COVID-QA's 11 such questions (dev and train), 9 were answered so, 5 of them containing the
# annotated span; read by hand, about 7 of the 9 state the paper's aim (2 answered and 1 right before).
AIM_CONFIDENCE = 0.55
_AIM_PART = re.compile(r"\b(?:objectives?|aims?|purpose|goals?)\b", re.IGNORECASE)
_AIM_SENTENCE = re.compile(
    r"\b(?:aims?|aimed|objectives?|purpose|goals?)\b"
    r"|\b(?:we|this study|this paper|this work|the present study)\s+(?:sought|set out|aimed|investigated|"
    r"examined|assessed|evaluated|explored|tested|determined|studied|asked|compared|analy[sz]ed)\b",
    re.IGNORECASE,
)
_OWN_WORK = re.compile(r"\b(?:we|here|this (?:study|paper|work|report)|the present study)\b", re.IGNORECASE)

FRONT_MATTER = frozenset({"Title", "Metadata"})
_NUMBER_QUESTION = re.compile(
    r"\bhow (?:many|much|large|big|high|low|often|old)\b|\b(?:what|which) (?:is the |was the |are the )?"
    r"(?:percentage|percent|proportion|fraction|number|rate|ratio|amount|dose|size|level|concentration|"
    r"frequency|prevalence|incidence|mortality|r0|titer|titre)\b",
    re.IGNORECASE,
)
_TIME_QUESTION = re.compile(
    r"\bwhen\b|\bhow long\b|\b(?:what|which) (?:year|date|month|day|time|period|season|decade)\b"
    r"|\bincubation period\b|\bduration\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d")
_TIME = re.compile(
    r"\b(?:1[89]\d\d|20\d\d)\b|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d"
    r"|\b\d+(?:\.\d+)?\s*(?:-\s*\d+\s*)?(?:days?|weeks?|months?|years?|hours?|h|min(?:utes)?)\b",
    re.IGNORECASE,
)


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


def candidates(passages: Sequence[Passage], min_terms: int = 3) -> list[Sentence]:
    """Sentences of the retrieved chunks (and their neighbours) with at least `min_terms` terms (shorter
    ones are fragments: "Results.", "(A)"), each chunk once, in paper order."""
    chunks: dict[str, Chunk] = {}
    for passage in passages:
        for chunk in [passage.chunk, *passage.neighbours]:
            chunks.setdefault(chunk.chunk_id, chunk)
    sentences: list[Sentence] = []
    for chunk in sorted(chunks.values(), key=lambda c: c.start):
        sentences.extend(s for s in chunk_sentences(chunk) if len(tokenize(s.text)) >= min_terms)
    return sentences


def _within(sentences: Sequence[Sentence], order: Sequence[int], chars: int) -> list[int]:
    """The sentences taken in `order` while their text fits in `chars` (the first always), in paper order."""
    chosen, used = [order[0]], len(sentences[order[0]].text)
    for i in order[1:]:
        used += len(sentences[i].text)
        if used > chars:
            break
        chosen.append(i)
    return sorted(chosen)


def section_opening(sentences: Sequence[Sentence]) -> list[int]:
    """The first sentences of a section, in paper order, within `NAMED_SECTION_CHARS` (at least one): what
    a section says is its answer ("Who funded this work?" lists every funder, "Do the authors declare any
    competing interests?" is answered by each author's statement), not the one sentence the ranker likes."""
    return _within(sentences, range(len(sentences)), NAMED_SECTION_CHARS)


def _states_no_finding(chunk: Chunk) -> bool:
    """A part of a structured abstract such as "Trial Registration" or "Funding"."""
    return len(chunk.section_path) > 1 and bool(_NOT_FINDINGS.search(chunk.section_path[-1]))


def closing_sentences(sentences: Sequence[Sentence]) -> list[int]:
    """The last sentences of an abstract, in paper order, within `FINDINGS_CHARS` (at least one), leaving
    out a closing part of a structured abstract that states no finding ("Trial Registration")."""
    usable = [i for i, sentence in enumerate(sentences) if not _states_no_finding(sentence.chunk)]
    return _within(sentences, usable[::-1], FINDINGS_CHARS) if usable else []


def aim_sentence(sentences: Sequence[Sentence]) -> list[int]:
    """The sentence of an abstract that states the paper's aim: the first of its Objective / Aim / Purpose
    part, else the first that says so (`_AIM_SENTENCE`), else the first in which the authors speak of their
    own work (`_OWN_WORK`); [] when none does."""
    for i, sentence in enumerate(sentences):
        path = sentence.chunk.section_path
        if len(path) > 1 and _AIM_PART.search(path[-1]):
            return [i]
    for pattern in (_AIM_SENTENCE, _OWN_WORK):
        for i, sentence in enumerate(sentences):
            if pattern.search(sentence.text):
                return [i]
    return []


def _restricted(passages: Sequence[Passage], keep: Callable[[Chunk], bool]) -> list[Passage]:
    """The passages whose chunk `keep` accepts, each with only the neighbours it accepts too."""
    return [
        passage.model_copy(update={"neighbours": [c for c in passage.neighbours if keep(c)]})
        for passage in passages
        if keep(passage.chunk)
    ]


def abstract_passages(passages: Sequence[Passage]) -> list[Passage] | None:
    """The passages of the paper's main abstract (retrieval ranks them first for a question asking for the
    findings or the aim), with only their main-abstract neighbours; None when there are none."""
    return _restricted(passages, is_main_abstract) or None


def named_section(question: str, passages: Sequence[Passage]) -> list[Passage] | None:
    """When the best passage is back matter (funding, competing interests, author contributions,
    acknowledgements) whose own heading the question names ("Who funded this work?" of "Funding"), the
    passages and neighbours under that heading: the answer is that section's, whatever the confidence model
    (fitted on COVID-QA's questions about what a paper reports) makes of a statement such as "The authors have
    declared that no competing interests exist." Else None. Only the best passage counts: "What genes of
    interest were studied?" names "Competing interests" too, but retrieval ranks the body first."""
    best = min(passages, key=lambda p: p.rank, default=None)
    if best is None or best.chunk.kind != "back" or not names_heading(question, best.chunk):
        return None
    path = best.chunk.section_path
    return _restricted(passages, lambda chunk: chunk.section_path == path)


# --- features -----------------------------------------------------------------------------------------------

IdfTable = tuple[dict[str, float], float]


def paper_idf(text: str) -> IdfTable:
    """BM25-style idf of each term over the paper's paragraphs, and the idf of an unseen term."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()] or [text]
    df: dict[str, int] = {}
    for paragraph in paragraphs:
        for token in set(tokenize(paragraph)):
            df[token] = df.get(token, 0) + 1
    n = len(paragraphs)
    idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    return idf, math.log(1 + (n + 0.5) / 0.5)


def question_kind(question: str) -> str:
    """ "number", "time" or "other": the kind of token the answer should hold."""
    if _NUMBER_QUESTION.search(question):
        return "number"
    if _TIME_QUESTION.search(question):
        return "time"
    return "other"


def feature_rows(
    question: str,
    sentences: Sequence[Sentence],
    dense: np.ndarray,
    idf_table: IdfTable,
    passages: Sequence[Passage],
) -> np.ndarray:
    """One row of `FEATURES` per sentence, given each sentence's cosine with the question (`dense`)."""
    idf, unseen = idf_table
    terms = set(tokenize(question))
    weights = {t: idf.get(t, unseen) for t in terms}
    total = sum(weights.values()) or 1.0
    rank_of: dict[str, tuple[int, bool]] = {}
    for passage in passages:
        rank_of.setdefault(passage.chunk.chunk_id, (passage.rank, False))
        for neighbour in passage.neighbours:
            rank_of.setdefault(neighbour.chunk_id, (passage.rank, True))
    kind = question_kind(question)
    rows = np.zeros((len(sentences), len(FEATURES)), dtype=np.float32)
    for i, sentence in enumerate(sentences):
        tokens = tokenize(sentence.text)
        present = terms.intersection(tokens)
        rank, neighbour = rank_of.get(sentence.chunk.chunk_id, (len(passages) + 1, True))
        novel = [t for t in tokens if t not in terms]
        rows[i] = (
            dense[i],
            sum(weights[t] for t in present) / total,
            1.0 / rank,
            float(neighbour),
            len(novel) / max(len(tokens), 1),
            math.log1p(len(tokens)),
            float(kind == "number" and bool(_NUMBER.search(sentence.text))),
            float(kind == "time" and bool(_TIME.search(sentence.text))),
            float(sentence.chunk.kind == "abstract"),
            float(sentence.chunk.kind == "title" or sentence.chunk.section in FRONT_MATTER),
            float(sentence.index == 0),
        )
    return rows


# --- the answer model: hand-set constants, or trained ------------------------------------------------------


@dataclass(frozen=True)
class AnswerModel:
    """What turns sentence features into an answer: the ranker, the confidence model and its threshold, and
    the encoder behind the `dense` feature (a fine-tuned scorer, or None: the retrieval embedder)."""

    ranker_weights: dict[str, float]
    ranker_bias: float
    confidence_weights: dict[str, float]
    confidence_bias: float
    min_confidence: float
    scorer: Path | None = None
    name: str = "hand-set"
    reader: Path | None = None  # the span reader's folder (`span_reader`), if trained
    about: dict[str, object] = field(default_factory=dict)  # how it was trained (the training's record)


def hand_set_model() -> AnswerModel:
    """The module's constants (read now, so `bench/fit_answer_models.py` can try others)."""
    return AnswerModel(
        ranker_weights=dict(RANKER_WEIGHTS),
        ranker_bias=RANKER_BIAS,
        confidence_weights=dict(CONFIDENCE_WEIGHTS),
        confidence_bias=CONFIDENCE_BIAS,
        min_confidence=DEFAULT_MIN_CONFIDENCE,
    )


def read_answer_model(directory: Path) -> AnswerModel:
    """The trained answer model in `directory` (its `ANSWER_MODEL_FILE`, and the scorer's files beside it)."""
    path = directory / ANSWER_MODEL_FILE
    reader = directory / span_reader.READER_DIR
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ranker, confidence = data["ranker"], data["confidence"]
        model = AnswerModel(
            ranker_weights={str(k): float(v) for k, v in ranker["weights"].items()},
            ranker_bias=float(ranker["bias"]),
            confidence_weights={str(k): float(v) for k, v in confidence["weights"].items()},
            confidence_bias=float(confidence["bias"]),
            min_confidence=float(data["min_confidence"]),
            scorer=directory,
            name=f"trained:{directory.name}",
            about=dict(data.get("training", {})),
            reader=reader if (reader / span_reader.HEAD_FILE).is_file() else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable answer model ({error}); train it again") from error
    unknown = (set(model.ranker_weights) - set(FEATURES)) | (
        set(model.confidence_weights) - set(ANSWER_FEATURES)
    )
    if unknown:
        raise ValueError(f"{path} names features this version does not compute: {sorted(unknown)}")
    if not 0.0 <= model.min_confidence <= 1.0:
        raise ValueError(f"{path}: min_confidence {model.min_confidence} is not a probability")
    return model


def find_answer_model(settings: Settings) -> AnswerModel:
    """`settings.answer_model`: "hand-set"; a trained model's folder; or "auto" (the trained model under
    `settings.models_dir` when there is one, else hand-set)."""
    setting = settings.answer_model
    if setting == "hand-set":
        return hand_set_model()
    directory = settings.models_dir / ANSWER_MODEL_DIR if setting == "auto" else Path(setting)
    if (directory / ANSWER_MODEL_FILE).is_file():
        return read_answer_model(directory)
    if setting == "auto":
        return hand_set_model()
    raise ValueError(
        f"answer model {str(directory)!r} has no {ANSWER_MODEL_FILE}; train one with `pmcqa train-answerer`, "
        "or set PMCQA_ANSWER_MODEL=auto or hand-set"
    )


def scorer_settings(settings: Settings, scorer: Path) -> Settings:
    """Settings whose embedder is the fine-tuned scorer (symmetric: no query model, no prefixes), on the
    configured runtime (ONNX int8 on CPU by default, exported once into `models_dir`)."""
    return settings.model_copy(
        update={
            "embedding_model": str(scorer),
            "embedding_query_model": None,
            "embedding_query_prefix": "",
            "embedding_document_prefix": "",
        }
    )


def _linear(weights: dict[str, float], bias: float, names: Sequence[str], rows: np.ndarray) -> np.ndarray:
    vector = np.array([weights.get(name, 0.0) for name in names], dtype=np.float64)
    return np.asarray(rows, dtype=np.float64) @ vector + bias


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def rank_logits(rows: np.ndarray, model: AnswerModel | None = None) -> np.ndarray:
    """The sentence ranker's logit of each feature row (`model` None: the module's constants)."""
    model = model or hand_set_model()
    return _linear(model.ranker_weights, model.ranker_bias, FEATURES, rows)


def follows(first: Sentence, second: Sentence) -> bool:
    """`second` is the sentence right after `first` in the same chunk."""
    return first.chunk.chunk_id == second.chunk.chunk_id and first.index + 1 == second.index


def select(sentences: Sequence[Sentence], logits: np.ndarray) -> list[int]:
    """Indices of the best sentence plus contiguous neighbours that score nearly as well, in paper order."""
    probabilities = sigmoid(logits)
    best = int(np.argmax(logits))
    floor = ADJACENT_RATIO * float(probabilities[best])
    chosen = [best]

    def adjacent(i: int, j: int) -> bool:
        return follows(sentences[i], sentences[j]) or follows(sentences[j], sentences[i])

    while len(chosen) < MAX_SENTENCES:
        edge = [
            j
            for j in range(len(sentences))
            if j not in chosen and any(adjacent(i, j) for i in chosen) and probabilities[j] >= floor
        ]
        if not edge:
            break
        chosen.append(max(edge, key=lambda j: probabilities[j]))
    return sorted(chosen, key=lambda i: sentences[i].start)


def answer_features(rows: np.ndarray, logits: np.ndarray, chosen: Sequence[int]) -> np.ndarray:
    """The `ANSWER_FEATURES` of an answer made of sentences `chosen` (rows and logits of all candidates)."""
    column = {name: i for i, name in enumerate(FEATURES)}
    best = int(np.argmax(logits))
    ordered = np.sort(logits)[::-1]
    # A lone candidate has no runner-up: that is no evidence it stands out (a wide margin made one
    # unrelated sentence certain), so its margin is the narrowest there is.
    margin = float(ordered[0] - ordered[1]) if len(ordered) > 1 else 0.0
    dense, lexical = float(rows[best, column["dense"]]), float(rows[best, column["lexical"]])
    return np.array(
        [
            float(logits[best]),
            margin,
            dense,
            lexical,
            0.5 * dense + 0.5 * lexical,
            float(rows[:, column["lexical"]].max()),
            float(len(chosen)),
        ]
    )


def confidence_of(features: np.ndarray, model: AnswerModel | None = None) -> float:
    model = model or hand_set_model()
    weights, bias = model.confidence_weights, model.confidence_bias
    return float(sigmoid(_linear(weights, bias, ANSWER_FEATURES, features[None, :]))[0])


def compose(sentences: Sequence[Sentence]) -> list[tuple[str, bool]]:
    """The answer's pieces in order: (text to append, whether it continues the previous sentence)."""
    pieces: list[tuple[str, bool]] = []
    previous: Sentence | None = None
    for sentence in sentences:
        contiguous = previous is not None and follows(previous, sentence)
        lead = "" if previous is None else " " if contiguous else " … "
        pieces.append((lead + sentence.text, contiguous))
        previous = sentence
    return pieces


@dataclass(frozen=True)
class Decision:
    """What the backend makes of one question: the candidates, their scores, the answer and its confidence."""

    sentences: list[Sentence]
    rows: np.ndarray
    logits: np.ndarray
    chosen: list[int]
    features: np.ndarray  # the answer's `ANSWER_FEATURES`
    confidence: float
    section: str | None = None  # where an answer rule chose the answer
    rule: str | None = None  # which: "section" (named section), "findings" or "aim" (from the abstract)

    @property
    def text(self) -> str:
        """The answer as the backend words it (the chosen sentences, in paper order)."""
        return "".join(piece for piece, _ in compose([self.sentences[i] for i in self.chosen]))


def phrase_of(decision: Decision, start: int, end: int) -> str | None:
    """The characters [start, end) of the decision's answer text as a phrase (trimmed of edge punctuation);
    None when empty or not inside one chosen sentence (the joins between sentences are the answer's, not the
    paper's text, and an answer stays verbatim paper text)."""
    text = decision.text[start:end].strip(" ,;:")
    if not text or not any(text in decision.sentences[i].text for i in decision.chosen):
        return None
    return text


def decide_on(sentences: list[Sentence], rows: np.ndarray, model: AnswerModel) -> Decision:
    """Rank `sentences` by their feature `rows`, choose the answer and estimate its confidence."""
    logits = rank_logits(rows, model)
    chosen = select(sentences, logits)
    features = answer_features(rows, logits, chosen)
    return Decision(sentences, rows, logits, chosen, features, confidence_of(features, model))


class ExtractiveBackend:
    """Answers with the paper's best sentences; abstains under a calibrated confidence."""

    name = "extractive"

    def __init__(
        self,
        settings: Settings,
        embedder: _Embedder | None = None,
        answer_model: AnswerModel | None = None,
        named_sections: bool = True,
        findings_abstract: bool = True,
    ) -> None:
        self.settings = settings
        self.named_sections = named_sections  # answer a question naming a back-matter section from it
        self.findings_abstract = findings_abstract  # answer findings and aim questions from the abstract
        self._embedder = embedder
        self.answer_model = answer_model or find_answer_model(settings)
        self._scorer: _Embedder | None = None  # the trained model's sentence scorer, loaded on first use
        self._load_lock = threading.Lock()
        self._reader: span_reader.SpanReader | None = None  # its span reader, likewise
        self.min_confidence = (
            settings.min_confidence
            if settings.min_confidence is not None
            else self.answer_model.min_confidence
        )
        # Sentence vectors are reused across questions about the same paper (keyed by paper and offsets).
        # Request threads share the backend: every cache access holds the lock.
        self._vectors: LRUCache[tuple[str, int, int], np.ndarray] = LRUCache(maxsize=SENTENCE_VECTOR_CACHE)
        self._idf: LRUCache[str, IdfTable] = LRUCache(maxsize=IDF_CACHE)
        self._lock = threading.Lock()

    @property
    def embedder(self) -> _Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.settings)
        return self._embedder

    @property
    def scorer(self) -> _Embedder:
        """The encoder behind the `dense` feature: the trained scorer, else the retrieval embedder."""
        if self.answer_model.scorer is None:
            return self.embedder
        with self._load_lock:  # request threads and the background load: one load
            if self._scorer is None:
                self._scorer = Embedder(scorer_settings(self.settings, self.answer_model.scorer))
        return self._scorer

    @property
    def model(self) -> str:
        if self.answer_model.scorer is not None:
            return f"extractive/{self.answer_model.name}"
        return f"extractive/{getattr(self.embedder, 'model_name', 'embedder')}"

    def _reader_folder(self) -> Path | None:
        """The trained model's span reader folder when answers are spans (`settings.answer_form`)."""
        return self.answer_model.reader if self.settings.answer_form == "span" else None

    @property
    def reader(self) -> span_reader.SpanReader | None:
        """The trained model's span reader when answers are spans (`settings.answer_form`), else None."""
        folder = self._reader_folder()
        if folder is None:
            return None
        with self._load_lock:
            if self._reader is None:
                # Always ONNX on the CPU: one short pass per answer, and no torch in the API process.
                encoder = onnx_backend.load_onnx_model(
                    str(folder), str(folder), span_reader.READER_VARIANT, self.settings.models_dir
                )
                self._reader = span_reader.SpanReader(encoder, *span_reader.read_head(folder))
        return self._reader

    def is_ready(self) -> bool:
        scorer_ready = self.answer_model.scorer is None or self._scorer is not None
        return scorer_ready and (self._reader_folder() is None or self._reader is not None)

    def load(self) -> None:
        """Load the trained scorer and span reader (the service calls this in the background: a first ONNX
        export takes a minute); without them there is nothing to load."""
        _ = self.scorer
        _ = self.reader

    def shorten(self, question: str, decision: Decision) -> tuple[str, float] | None:
        """The phrase of the decision's answer that answers `question`, with the reader's probability; None
        without a reader, under its minimum probability, or for a span across sentences (the answer stays
        verbatim paper text)."""
        reader = self.reader
        if reader is None:
            return None
        span = reader.read(question, decision.text)
        if span is None or span.probability < self.settings.span_min_probability:
            return None
        text = phrase_of(decision, span.start, span.end)
        return None if text is None else (text, span.probability)

    # --- scoring -------------------------------------------------------------------------------------------
    def _paper_idf(self, paper: PaperRecord) -> IdfTable:
        with self._lock:
            cached = self._idf.get(paper.paper_id)
        if cached is None:
            cached = paper_idf(paper.text)
            with self._lock:
                self._idf[paper.paper_id] = cached
        return cached

    def _sentence_vectors(self, paper_id: str, sentences: Sequence[Sentence]) -> np.ndarray:
        keys = [(paper_id, s.start, s.end) for s in sentences]
        with self._lock:
            vectors = [self._vectors.get(key) for key in keys]
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        if missing:
            # Encoded outside the lock; kept from here rather than re-read, which eviction could have undone.
            fresh = self.scorer.embed_documents([sentences[i].text for i in missing])
            with self._lock:
                for i, vector in zip(missing, fresh, strict=True):
                    vectors[i] = self._vectors[keys[i]] = np.asarray(vector, dtype=np.float32)
        return np.stack(vectors)  # type: ignore[arg-type]

    def save_vectors(self, path: Path) -> int:
        """Write the cached sentence vectors (with the model's name) to `path` (.npz); returns how many.

        For evaluations that ask many questions of one store (`pmcqa eval --answers --store-dir`): a rerun
        loads them (`load_vectors`) instead of encoding every sentence again."""
        with self._lock:
            items = list(self._vectors.items())
        if not items:
            return 0
        keys = np.array([f"{paper_id}\t{start}\t{end}" for (paper_id, start, end), _ in items])
        vectors = np.stack([vector for _, vector in items])
        model = np.array(self._vectors_identity())
        np.savez(path, keys=keys, vectors=vectors, model=model)
        return len(items)

    def _vectors_identity(self) -> str:
        """What made the cached vectors: the scorer's name, and when it was trained (a retrained scorer
        lives in the same folder, under the same name)."""
        trained = self.answer_model.about.get("finished", "")
        return f"{getattr(self.scorer, 'model_name', '')}|{trained}"

    def load_vectors(self, path: Path) -> int:
        """Cache the sentence vectors saved by `save_vectors` (only if the same model made them)."""
        if not path.is_file():
            return 0
        with np.load(path) as saved:
            if str(saved["model"]) != self._vectors_identity():
                return 0
            keys, vectors = saved["keys"], saved["vectors"]
        with self._lock:
            for key, vector in zip(keys, vectors, strict=True):
                paper_id, start, end = str(key).split("\t")
                self._vectors[(paper_id, int(start), int(end))] = vector
        return len(keys)

    def dense_scores(self, question: str, sentences: Sequence[Sentence], paper: PaperRecord) -> np.ndarray:
        """Cosine of the question's vector (query encoder) with each sentence's (document encoder)."""
        query = np.asarray(self.scorer.embed_queries([question]), dtype=np.float32)[0]
        return self._sentence_vectors(paper.paper_id, sentences) @ query

    def sentence_features(
        self, question: str, sentences: Sequence[Sentence], paper: PaperRecord, passages: Sequence[Passage]
    ) -> np.ndarray:
        """One row of `FEATURES` per sentence: what the ranker and the confidence model read."""
        dense = self.dense_scores(question, sentences, paper)
        return feature_rows(question, sentences, dense, self._paper_idf(paper), passages)

    def decide(self, question: str, passages: list[Passage], paper: PaperRecord) -> Decision | None:
        """Rank the candidate sentences, choose the answer, estimate its confidence (None: no candidates).
        Three answer rules come first, each at the confidence measured for it: a question naming the
        back-matter section of the best passage is answered with that section's opening (`named_section`,
        "None declared." included), one asking only what the paper found with the closing sentences of its
        abstract, and one asking only for its aim with the abstract's sentence stating it
        (`abstract_passages`)."""
        section = named_section(question, passages) if self.named_sections else None
        if section and (sentences := candidates(section, min_terms=1)):
            chosen = section_opening(sentences)
            where = section[0].chunk.section
            return self._quote(
                question, sentences, section, paper, chosen, NAMED_SECTION_CONFIDENCE, "section", where
            )
        findings, aim = asks_for_findings(question), asks_for_aim(question)
        abstract = abstract_passages(passages) if self.findings_abstract and (findings or aim) else None
        if abstract and (sentences := candidates(abstract)):
            if findings and (closing := closing_sentences(sentences)):
                return self._quote(
                    question, sentences, abstract, paper, closing, FINDINGS_CONFIDENCE, "findings"
                )
            if aim and (stated := aim_sentence(sentences)):
                return self._quote(question, sentences, abstract, paper, stated, AIM_CONFIDENCE, "aim")
        sentences = candidates(passages)
        if not sentences:
            return None
        return decide_on(
            sentences, self.sentence_features(question, sentences, paper, passages), self.answer_model
        )

    def _quote(
        self,
        question: str,
        sentences: list[Sentence],
        passages: list[Passage],
        paper: PaperRecord,
        chosen: list[int],
        confidence: float,
        rule: str,
        section: str = "Abstract",
    ) -> Decision:
        """The decision of an answer `rule`: the sentences `chosen` by the rule, not by the ranker, at least
        `confidence` confident (the rule's measured share), from `section`."""
        rows = self.sentence_features(question, sentences, paper, passages)
        ranked = decide_on(sentences, rows, self.answer_model)
        return replace(
            ranked,
            chosen=chosen,
            features=answer_features(rows, ranked.logits, chosen),
            confidence=max(ranked.confidence, confidence),
            section=section,
            rule=rule,
        )

    # --- the backend protocol ------------------------------------------------------------------------------
    def _run(self, question: str, passages: list[Passage], paper: PaperRecord) -> Iterator[BackendEvent]:
        sections = list(dict.fromkeys(place_of(p.chunk) for p in passages))
        title = f" ({paper.title})" if paper.title else ""
        yield StepEvent(
            data=f'1) Searched {len(passages)} passages of {paper.paper_id}{title} for "{question}".',
        )
        if passages:
            yield StepEvent(data=f"2) Most relevant sections: {'; '.join(sections[:4])}.")
        decision = self.decide(question, passages, paper)
        if decision is None:
            yield StepEvent(data="3) No retrieved passage contains a usable sentence; abstaining.")
            yield from self._abstain(None)
            return
        count = len(decision.sentences)
        if decision.confidence < self.min_confidence:
            yield StepEvent(
                data=f"3) The best of {count} sentences would answer with an estimated "
                f"{decision.confidence:.0%} chance of holding the right information, under the minimum "
                f"{self.min_confidence:.0%}; the paper does not appear to answer this.",
            )
            yield from self._abstain(decision.confidence)
            return
        chosen = [decision.sentences[i] for i in decision.chosen]
        where = "; ".join(dict.fromkeys(place_of(s.chunk) for s in chosen))
        if decision.rule == "findings":
            yield StepEvent(
                data=f"3) The question asks what the paper found: quoting the closing {len(chosen)} of the "
                f"{count} sentences of its abstract, where a paper states its conclusion; estimated "
                f"{decision.confidence:.0%} chance that they hold the right information.",
            )
        elif decision.rule == "aim":
            yield StepEvent(
                data="3) The question asks what the paper set out to do: quoting the sentence of its "
                f"abstract that states its aim; estimated {decision.confidence:.0%} chance that it holds the "
                "right information.",
            )
        elif decision.rule == "section":
            yield StepEvent(
                data=f'3) The question asks for the paper\'s "{decision.section}" section, the best '
                f"passage; quoting {len(chosen)} of its {count} sentences; estimated "
                f"{decision.confidence:.0%} chance that they hold the right information.",
            )
        else:
            yield StepEvent(
                data=f"3) Selected {len(chosen)} of {count} sentences from {where}; estimated "
                f"{decision.confidence:.0%} chance that they hold the right information "
                f"(answering at {self.min_confidence:.0%} or more).",
            )
        short = self.shorten(question, decision)
        if short is not None:
            yield StepEvent(
                data=f"4) The answer is the phrase of the quoted text that answers the question (span "
                f"reader: {short[1]:.0%} probability); the sentences are cited whole."
            )
        cited: list[CitedSpan] = []
        for sentence, (delta, contiguous) in zip(chosen, compose(chosen), strict=True):
            if short is None:
                yield AnswerDelta(data=delta)
            if contiguous and cited and cited[-1].start is not None:
                # Merge contiguous sentences into one span; the text between them is the paper's own.
                start = cited[-1].start
                cited[-1] = CitedSpan(
                    chunk_id=cited[-1].chunk_id,
                    start=start,
                    end=sentence.end,
                    quote=paper.text[start : sentence.end],
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
        if short is not None:
            yield AnswerDelta(data=short[0])
        draft = Draft(
            answer=decision.text if short is None else short[0],
            cited=cited,
            model=self.model,
            confidence=round(decision.confidence, 4),
            verbatim=True,
        )
        yield DraftDone(data=draft)

    def _abstain(self, confidence: float | None) -> Iterator[BackendEvent]:
        yield AnswerDelta(data=ABSTAIN_ANSWER)
        rounded = None if confidence is None else round(confidence, 4)
        yield DraftDone(
            data=Draft(
                answer=ABSTAIN_ANSWER, abstained=True, model=self.model, confidence=rounded, verbatim=True
            )
        )

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
