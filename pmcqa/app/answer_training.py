"""`pmcqa train-answerer`: fine-tune the extractive backend's sentence scorer, and fit what reads its scores.

The hand-set extractive answerer scores a candidate sentence by its embedding cosine with the question plus
term coverage. A general-purpose embedding model rewards sentences that *resemble* the question; the answer
is usually the sentence that *answers* it. So the embedding model is fine-tuned, as a bi-encoder, on
questions and the sentences that answer them, the way the extractive backend meets them:

1. The training file's papers go into an evaluation store of their own (`pmcqa eval --answers` builds the
   same one; `store_dir` keeps it). Each question is asked of its own paper as `/ask` does (hybrid
   retrieval, top_k, neighbours); among the candidate sentences, one overlapping a gold answer span is the
   positive and the best term-covering other one the hard negative.
2. The papers are split by a hash of their id: `CALIBRATION_SHARE` of them are held out. The scorer is
   fine-tuned on the rest's (question, answer sentence, hard negative) triples with sentence-transformers'
   MultipleNegativesRankingLoss (every other sentence of the batch is a negative too).
3. On the held-out papers, with the fine-tuned scorer on the runtime the service will use (ONNX int8 on CPU),
   the ranker's dense weight is chosen (`DENSE_WEIGHTS`, best sentence overlapping gold) and the confidence
   model fitted (logistic regression over `ANSWER_FEATURES`, each question asked of its own paper and of
   another). In-sample scores of the fine-tuned papers would be overconfident; held-out ones are not.
4. The minimum confidence is chosen on `dev` when given (else on the held-out papers): the highest step of
   0.05 that still answers `TARGET_ANSWERED` of own-paper questions.
5. The span reader (`answering.span_reader`: a start/end head on the same base model) is trained on the
   answer spans of all the training file's papers, held-out ones included (nothing fitted on the held-out
   papers reads the reader: its phrase changes an answer's wording, not which sentences are chosen or the
   confidence), and saved inside the model folder.
6. Model files and `answer-model.json` are written to a staging folder and renamed into place, so a crash
   never leaves a half-written model where the service looks for one.

Needs torch and sentence-transformers (core dependencies); minutes on a 2-core CPU for COVID-QA train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pmcqa.app.answer_evaluation import contains_gold, other_papers
from pmcqa.app.answering import extractive, span_reader
from pmcqa.app.answering.extractive import (
    ANSWER_FEATURES,
    ANSWER_MODEL_DIR,
    ANSWER_MODEL_FILE,
    FEATURES,
    AnswerModel,
    ExtractiveBackend,
    Sentence,
)
from pmcqa.app.evaluation import EvalQuestion, fill_store, load_squad, reserved_pmcid
from pmcqa.core.settings import Settings
from pmcqa.core.text import split_sentences
from pmcqa.index.embedding import Embedder, resolve_model_path
from pmcqa.index.library import LibraryParts, open_library
from pmcqa.index.models import PaperRecord, Passage
from pmcqa.index.onnx_backend import MANIFEST_FILE, source_fingerprint

# Share of papers held out of fine-tuning, to choose the ranker and fit the confidence model on.
CALIBRATION_SHARE = 0.2
# Dense weights tried in the ranker (lexical gets 1 - weight); the hand-set ranker uses 0.5.
DENSE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# The minimum confidence answers at least this share of own-paper questions (the target).
TARGET_ANSWERED = 0.80
THRESHOLD_STEP = 0.05
# The span reader's training: batch, learning rate, tokens of question + context.
READER_BATCH_SIZE = 16
READER_LEARNING_RATE = 5e-5
READER_MAX_TOKENS = 256


@dataclass(frozen=True)
class TrainingOptions:
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 2e-5
    seed: int = 0
    limit: int | None = None  # the first N questions of the training file only (quick trials, tests)
    reader_epochs: int = 5  # passes of the span reader over its examples (0: no span reader)


@dataclass
class Candidates:
    """One question asked of one paper: the candidate sentences the extractive backend would rank."""

    question: EvalQuestion
    paper: PaperRecord
    passages: list[Passage]
    sentences: list[Sentence]
    labels: np.ndarray  # per sentence: overlaps a gold answer span (own paper only)


Progress = Callable[[str], None]


def is_held_out(paper_id: str) -> bool:
    """The paper is a calibration paper (a stable hash of its id, not the file's order)."""
    digest = hashlib.sha256(paper_id.encode()).digest()
    return digest[0] / 256 < CALIBRATION_SHARE


def ask_all(
    parts: LibraryParts,
    settings: Settings,
    questions: Sequence[EvalQuestion],
    other: dict[str, str] | None = None,
) -> list[Candidates]:
    """Each question asked, as /ask retrieves, of its own paper, or with `other` (paper -> a different one,
    `answer_evaluation.other_papers`) of another paper."""
    own = other is None
    papers: dict[str, PaperRecord] = {}
    asked: list[Candidates] = []
    for question in questions:
        paper_id = question.paper_id if other is None else other[question.paper_id]
        paper = papers.get(paper_id) or parts.store.get_paper(paper_id)
        if paper is None:
            raise ValueError(f"paper {paper_id} is missing from the training store")
        papers[paper_id] = paper
        passages = parts.retriever.retrieve(paper_id, question.question, settings.top_k, "hybrid")
        sentences = extractive.candidates(passages)
        labels = np.array(
            [
                own and any(s.start < end and start < s.end for start, end in question.spans)
                for s in sentences
            ],
            dtype=bool,
        )
        asked.append(Candidates(question, paper, passages, sentences, labels))
    return asked


def triples(asked: Sequence[Candidates]) -> list[tuple[str, str, str]]:
    """(question, gold sentence, hard negative) per question that has a gold candidate and another one.

    The positive is the gold sentence covering most of the question's terms; the negative the best-covering
    sentence that is not gold (found lexically: no encoder needed before the scorer exists)."""
    out: list[tuple[str, str, str]] = []
    idf: dict[str, extractive.IdfTable] = {}  # per paper, not per question
    for item in asked:
        if not item.labels.any() or item.labels.all():
            continue
        if item.paper.paper_id not in idf:
            idf[item.paper.paper_id] = extractive.paper_idf(item.paper.text)
        rows = extractive.feature_rows(
            item.question.question,
            item.sentences,
            np.zeros(len(item.sentences)),
            idf[item.paper.paper_id],
            item.passages,
        )
        lexical = rows[:, FEATURES.index("lexical")]
        positive = max(np.flatnonzero(item.labels), key=lambda i: lexical[i])
        negative = max(np.flatnonzero(~item.labels), key=lambda i: lexical[i])
        out.append((item.question.question, item.sentences[positive].text, item.sentences[negative].text))
    return out


def fine_tune(
    base: str,
    examples: list[tuple[str, str, str]],
    options: TrainingOptions,
    target: Path,
    progress: Progress,
) -> None:
    """Fine-tune the sentence-transformers model `base` on `examples` and save it to `target`."""
    import torch  # heavy: only this command trains
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import batch_to_device
    from transformers import get_linear_schedule_with_warmup

    # A plain loop rather than SentenceTransformerTrainer: that one needs `datasets` and `accelerate`, which
    # the service does not otherwise install, for what is here twenty lines.
    torch.manual_seed(options.seed)
    order = random.Random(options.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(resolve_model_path(base), device=device)
    loss = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    batches_per_epoch = math.ceil(len(examples) / options.batch_size)
    total = options.epochs * batches_per_epoch
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, total // 10), total)
    model.train()
    step, started = 0, time.perf_counter()
    for epoch in range(1, options.epochs + 1):
        shuffled = list(examples)
        order.shuffle(shuffled)
        running = 0.0
        for first in range(0, len(shuffled), options.batch_size):
            batch = shuffled[first : first + options.batch_size]
            columns = [[example[i] for example in batch] for i in range(3)]
            # `tokenize` is deprecated for `preprocess` in newer sentence-transformers; both where present.
            preprocess = getattr(model, "preprocess", None) or model.tokenize
            features = [batch_to_device(preprocess(column), model.device) for column in columns]
            value = loss(features, None)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            running += value.item()
            step += 1
            if step % 10 == 0 or step == total:
                mean = running / (first // options.batch_size + 1)
                elapsed = time.perf_counter() - started
                where = f"epoch {epoch}/{options.epochs} step {step}/{total}"
                progress(f"  {where}: loss {mean:.3f}, {elapsed:.0f}s")
    model.eval()
    model.save(str(target))


ReaderExample = tuple[str, str, int, int]  # question, context, answer start and end in the context


def reader_examples(asked: Sequence[Candidates], seed: int = 0) -> list[ReaderExample]:
    """(question, context, answer start, answer end) per question with an answer span: the sentence holding
    the span's start, extended to the sentence holding its end, and (30% each) with the sentence before or
    after, as the backend hands the reader one to three chosen sentences."""
    order = random.Random(seed)
    sentences: dict[str, list[tuple[int, int]]] = {}  # per paper
    out: list[ReaderExample] = []
    for item in asked:
        text = item.paper.text
        bounds = sentences.setdefault(item.paper.paper_id, split_sentences(text))
        for start, end in item.question.spans[:1]:
            end = start + len(text[start:end].rstrip())
            first = next((i for i, (s, e) in enumerate(bounds) if s <= start < e), None)
            if first is None or end <= start:
                continue
            last = first
            while last + 1 < len(bounds) and bounds[last][1] < end:
                last += 1
            if order.random() < 0.3 and first > 0:
                first -= 1
            if order.random() < 0.3 and last + 1 < len(bounds):
                last += 1
            begin, finish = bounds[first][0], bounds[last][1]
            out.append((item.question.question, text[begin:finish], start - begin, min(end, finish) - begin))
    return out


def train_span_reader(
    base: str, examples: list[ReaderExample], options: TrainingOptions, target: Path, progress: Progress
) -> None:
    """Fine-tune `base` with a start/end head on `examples`; save the encoder as a sentence-transformers
    folder and the head beside it (`span_reader`)."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    torch.manual_seed(options.seed)
    order = random.Random(options.seed)
    source = Path(resolve_model_path(base))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(source)
    # The base checkpoint has a pooler and no QA head: transformers' report of both is expected, not news.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(source)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.to(device)
    # A constant learning rate, as measured on COVID-QA (5 epochs of batch 16 at 5e-5).
    optimizer = torch.optim.AdamW(model.parameters(), lr=READER_LEARNING_RATE)
    model.train()
    started = time.perf_counter()
    for epoch in range(1, options.reader_epochs + 1):
        shuffled = list(examples)
        order.shuffle(shuffled)
        running = 0.0
        for first in range(0, len(shuffled), READER_BATCH_SIZE):
            batch = shuffled[first : first + READER_BATCH_SIZE]
            encoded = tokenizer(
                [example[0] for example in batch],
                [example[1] for example in batch],
                truncation="only_second",
                max_length=READER_MAX_TOKENS,
                padding=True,
                return_offsets_mapping=True,
                return_tensors="pt",
            )
            offsets = encoded.pop("offset_mapping").tolist()
            starts, ends = zip(
                *(
                    _token_positions(offsets[k], encoded.sequence_ids(k), example[2], example[3])
                    for k, example in enumerate(batch)
                ),
                strict=True,
            )
            positions = {
                "start_positions": torch.tensor(starts, device=device),
                "end_positions": torch.tensor(ends, device=device),
            }
            value = model(**encoded.to(device), **positions).loss
            value.backward()
            optimizer.step()
            optimizer.zero_grad()
            running += value.item()
        steps = math.ceil(len(shuffled) / READER_BATCH_SIZE)
        elapsed = time.perf_counter() - started
        progress(
            f"  span reader epoch {epoch}/{options.reader_epochs}: loss {running / steps:.3f}, {elapsed:.0f}s"
        )
    model.eval().to("cpu")
    target.mkdir(parents=True)
    # The base folder's sentence-transformers files (modules, pooling, tokenizer), then the tuned encoder.
    for path in source.iterdir():
        if (
            path.name not in ("model.safetensors", "pytorch_model.bin", "README.md")
            and path.suffix != ".onnx"
        ):
            copy = shutil.copytree if path.is_dir() else shutil.copy2
            copy(path, target / path.name)
    model.base_model.save_pretrained(target)
    head = model.qa_outputs
    span_reader.write_head(target, head.weight.detach().numpy(), head.bias.detach().numpy())


def _token_positions(
    offsets: list[list[int]], sequence_ids: list[int | None], start: int, end: int
) -> tuple[int, int]:
    """The first and last context tokens of the answer characters [start, end) (0, 0: truncated away)."""
    tokens = [i for i, sequence in enumerate(sequence_ids) if sequence == 1 and offsets[i][1] > offsets[i][0]]
    inside = [i for i in tokens if offsets[i][0] < end and start < offsets[i][1]]
    return (inside[0], inside[-1]) if inside else (0, 0)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (scikit-learn's objective, C = `c`) by L-BFGS in torch, on
    standardised features; returns weights on the raw features and the bias.

    torch rather than scikit-learn: the one fit this command makes does not justify another dependency."""
    import torch

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale == 0, 1.0, scale)
    inputs = torch.tensor((x - mean) / scale, dtype=torch.float64)
    targets = torch.tensor(y, dtype=torch.float64)
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=500, line_search_fn="strong_wolfe")

    def objective() -> Any:
        optimizer.zero_grad()
        logits = inputs @ weights + bias
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        value = value + 0.5 * (weights**2).sum() / c
        value.backward()
        return value

    optimizer.step(objective)
    raw = weights.detach().numpy() / scale
    return raw, float(bias.detach()[0] - (raw * mean).sum())


def with_ranker(model: AnswerModel, dense_weight: float) -> AnswerModel:
    """`model` with a ranker of `dense_weight` × cosine + (1 − `dense_weight`) × term coverage."""
    return dataclasses.replace(model, ranker_weights={"dense": dense_weight, "lexical": 1.0 - dense_weight})


def feature_table(backend: ExtractiveBackend, asked: Sequence[Candidates]) -> list[np.ndarray]:
    """Each asked question's sentence feature rows, with the backend's scorer."""
    return [
        backend.sentence_features(a.question.question, a.sentences, a.paper, a.passages)
        if a.sentences
        else np.zeros((0, len(FEATURES)))
        for a in asked
    ]


def answer_of(item: Candidates, rows: np.ndarray, model: AnswerModel) -> extractive.Decision | None:
    return extractive.decide_on(item.sentences, rows, model) if item.sentences else None


def top1(asked: Sequence[Candidates], rows: Sequence[np.ndarray], model: AnswerModel) -> float:
    """Share of questions whose best-ranked sentence overlaps a gold answer."""
    hits = [
        bool(item.labels[int(np.argmax(extractive.rank_logits(r, model)))])
        for item, r in zip(asked, rows, strict=True)
        if item.sentences
    ]
    return float(np.mean(hits)) if hits else 0.0


def confidence_data(
    own: Sequence[Candidates],
    own_rows: Sequence[np.ndarray],
    other: Sequence[Candidates],
    other_rows: Sequence[np.ndarray],
    model: AnswerModel,
) -> tuple[np.ndarray, np.ndarray]:
    """Answer features and whether the answer holds a gold answer (never, for another paper's answer)."""
    x, y = [], []
    for items, rows, own_paper in ((own, own_rows, True), (other, other_rows, False)):
        for item, r in zip(items, rows, strict=True):
            decision = answer_of(item, r, model)
            if decision is None:
                continue
            x.append(decision.features)
            y.append(own_paper and contains_gold(decision.text, item.question.answers))
    return np.array(x), np.array(y, dtype=float)


def choose_threshold(confidences: Sequence[float]) -> tuple[float, float]:
    """The highest multiple of `THRESHOLD_STEP` answering at least `TARGET_ANSWERED` of the questions
    (confidences of own-paper answers; no candidates counts as unanswered), and the share it answers."""
    values = np.asarray(confidences, dtype=float)
    best = (0.0, float((values >= 0.0).mean()) if len(values) else 0.0)
    for step in range(1, int(1 / THRESHOLD_STEP)):
        threshold = round(step * THRESHOLD_STEP, 2)
        answered = float((values >= threshold).mean()) if len(values) else 0.0
        if answered >= TARGET_ANSWERED:
            best = (threshold, answered)
    return best


def own_confidences(
    asked: Sequence[Candidates], rows: Sequence[np.ndarray], model: AnswerModel
) -> list[float]:
    """Each question's answer confidence (-1 where there is no candidate sentence)."""
    decisions = [answer_of(item, r, model) for item, r in zip(asked, rows, strict=True)]
    return [-1.0 if d is None else d.confidence for d in decisions]


def train_answerer(
    file: Path,
    settings: Settings,
    options: TrainingOptions = TrainingOptions(),
    dev: Path | None = None,
    store_dir: Path | None = None,
    output: Path | None = None,
    progress: Progress = lambda _message: None,
) -> dict[str, Any]:
    """Train the answer model from SQuAD-format `file` (and choose its threshold on `dev`); returns the
    record written to `answer-model.json`."""
    started = time.perf_counter()
    target = output or settings.models_dir / ANSWER_MODEL_DIR
    training = load_squad(file, limit=options.limit, fallback_id=reserved_pmcid)
    if not training.questions:
        raise ValueError(f"{file} holds no answerable questions")
    if not any(q.spans for q in training.questions):
        raise ValueError(f"{file} gives no answer offsets (answer_start); the scorer learns from them")
    development = load_squad(dev, fallback_id=reserved_pmcid) if dev is not None else None
    with tempfile.TemporaryDirectory(prefix="pmcqa-train-") as scratch:
        store_settings = settings.model_copy(
            update={"data_dir": store_dir or Path(scratch) / "store", "database_url": None}
        )
        embedder = Embedder(store_settings)
        parts = open_library(store_settings, writable=True, embedder=embedder)
        try:
            sets = [training] + ([development] if development else [])
            for eval_set in sets:
                progress(f"storing {len(eval_set.papers)} papers of {eval_set.name}")
                fill_store(parts.store, eval_set, store_settings, embedder, f"squad:{eval_set.name}")
            tuning = [q for q in training.questions if not is_held_out(q.paper_id)]
            held_out = [q for q in training.questions if is_held_out(q.paper_id)]
            if not tuning or not held_out:
                raise ValueError(
                    f"{file} has too few papers to hold {CALIBRATION_SHARE:.0%} out for calibration "
                    f"({len({q.paper_id for q in training.questions})} papers)"
                )
            progress(f"asking {len(tuning)} fine-tuning and {len(held_out)} held-out questions")
            tuning_asked = ask_all(parts, store_settings, tuning)
            examples = triples(tuning_asked)
            held_own = ask_all(parts, store_settings, held_out)
            # All papers' spans: the reader gains from every one (dev, span F1 within the chosen sentences:
            # 0.505 with the fine-tuning papers' 1,172 spans, 5 epochs; README "Answer quality").
            spans = reader_examples([*tuning_asked, *held_own], options.seed)
            # The wrong paper as evaluations pick it, among all the file's papers (a lone held-out one works).
            held_other = ask_all(parts, store_settings, held_out, other_papers(training.questions))
            dev_own = ask_all(parts, store_settings, development.questions) if development else []
        finally:
            parts.close()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_parent(target)))
        try:
            progress(f"fine-tuning {settings.embedding_model} on {len(examples)} question-sentence triples")
            fine_tune(settings.embedding_model, examples, options, staging, progress)
            if options.reader_epochs and spans:
                progress(f"training the span reader on {len(spans)} answer spans")
                reader = staging / span_reader.READER_DIR
                train_span_reader(settings.embedding_model, spans, options, reader, progress)
            # Fitted at its final path: the ONNX export the service will load is keyed by that path.
            old = _move_aside(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            record = _fit(settings, target, held_own, held_other, dev_own, progress)
            record["training"] = {
                "file": str(file),
                "file_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                "dev": str(dev) if dev else None,
                "base_model": settings.embedding_model,
                "questions": len(training.questions),
                "triples": len(examples),
                "reader_examples": len(spans) if options.reader_epochs else 0,
                "reader_epochs": options.reader_epochs,
                "held_out_questions": len(held_out),
                "held_out_papers": len({q.paper_id for q in held_out}),
                "epochs": options.epochs,
                "batch_size": options.batch_size,
                "learning_rate": options.learning_rate,
                "seed": options.seed,
                "seconds": round(time.perf_counter() - started, 1),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                **record.pop("measured"),
            }
            # Written last, atomically: until it exists the folder is not an answer model ("auto" skips it).
            partial = target / f".{ANSWER_MODEL_FILE}.tmp"
            partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            os.replace(partial, target / ANSWER_MODEL_FILE)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            if old is not None:
                os.rename(old, target)  # the previous model stays in service
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _remove_stale_exports(settings.models_dir, target)
        _remove_stale_exports(settings.models_dir, target / span_reader.READER_DIR)
    return record


def _fit(
    settings: Settings,
    scorer: Path,
    held_own: list[Candidates],
    held_other: list[Candidates],
    dev_own: list[Candidates],
    progress: Progress,
) -> dict[str, Any]:
    """Choose the ranker, fit the confidence model and choose the threshold for the scorer at `scorer`."""
    progress("scoring the held-out questions with the fine-tuned scorer")
    hand_set = extractive.hand_set_model()
    base = ExtractiveBackend(settings, answer_model=hand_set)
    trained = ExtractiveBackend(settings, answer_model=dataclasses.replace(hand_set, scorer=scorer))
    own_rows, other_rows = feature_table(trained, held_own), feature_table(trained, held_other)
    measured: dict[str, Any] = {
        "held_out_top1_hand_set": round(top1(held_own, feature_table(base, held_own), hand_set), 4)
    }
    scores = {w: top1(held_own, own_rows, with_ranker(hand_set, w)) for w in DENSE_WEIGHTS}
    dense_weight = max(DENSE_WEIGHTS, key=lambda w: (round(scores[w], 4), -abs(w - 0.5)))
    measured["held_out_top1_trained"] = round(scores[dense_weight], 4)
    progress(
        f"held-out best sentence overlaps gold: hand-set {measured['held_out_top1_hand_set']:.3f}, "
        f"trained {scores[dense_weight]:.3f} (dense weight {dense_weight})"
    )
    model = with_ranker(hand_set, dense_weight)
    x, y = confidence_data(held_own, own_rows, held_other, other_rows, model)
    weights, bias = fit_logistic(x, y)
    model = dataclasses.replace(
        model,
        confidence_weights=dict(zip(ANSWER_FEATURES, map(float, weights), strict=True)),
        confidence_bias=bias,
    )
    chosen_on = "dev" if dev_own else "held-out"
    rows = feature_table(trained, dev_own) if dev_own else own_rows  # held-out rows: scored above
    confidences = own_confidences(dev_own or held_own, rows, model)
    threshold, answered = choose_threshold(confidences)
    measured.update({"threshold_chosen_on": chosen_on, "answered_at_threshold": round(answered, 4)})
    progress(f"minimum confidence {threshold} (answers {answered:.1%} of {chosen_on} questions)")
    return {
        "ranker": {"weights": model.ranker_weights, "bias": model.ranker_bias},
        "confidence": {"weights": model.confidence_weights, "bias": model.confidence_bias},
        "min_confidence": threshold,
        "measured": measured,
    }


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _move_aside(target: Path) -> Path | None:
    """Move an earlier model at `target` aside (restored if this training fails, removed if it succeeds)."""
    if not target.exists():
        return None
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    return old


def _remove_stale_exports(models_dir: Path, target: Path) -> None:
    """ONNX exports made from earlier scorers at `target` (same source folder, other fingerprint) are never
    loaded again; exports of other folders, even of the same name, are left alone."""
    current = source_fingerprint(target) if target.is_dir() else None  # None: no such folder any more
    source = str(target.resolve())
    for manifest in models_dir.glob(f"{target.name}-onnx*-*/{MANIFEST_FILE}"):
        export = manifest.parent
        try:
            made_from = json.loads(manifest.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError):
            continue
        if made_from == source and (current is None or not export.name.endswith(current)):
            shutil.rmtree(export, ignore_errors=True)
