#!/usr/bin/env python
"""How the extractive backend could use its span reader, tried on COVID-QA dev with a trained answer model.

Asks every question of its own paper as `/ask` does (the backend's `decide`: candidate sentences, ranker,
chosen sentences, confidence) and runs the served span reader (ONNX) on the chosen sentences and on the
ranker's top 4 sentences. Then prints, over all questions (an abstention scores 0, as in `pmcqa eval`):

1. the phrase-or-sentences rule the backend uses (`span_reader.best_span`, phrase when its probability
   reaches p), swept over p: token F1, gold contained, selective accuracy, share of answers that are phrases;
2. the span maximising expected token F1 plus `weight` x P(span contains the gold), with the gold's start
   and end distributed as the reader's softmaxes at a temperature (a Bayes decision for F1);
3. the reader as a sentence selector: among the ranker's top 4, the sentence with the best ranker logit plus
   `weight` x log(reader's start and end mass in it), and the share of questions whose pick holds the gold.

    PMCQA_DATA_DIR=DIR .venv/bin/python bench/try_span_decoding.py ../shared/data/covid-qa/dev.json \\
        --store-dir STORE [--min-confidence 0.25]

DIR holds the answer model of `pmcqa train-answerer` (DIR/models/answer-scorer), STORE the evaluation store
of `pmcqa eval --answers --store-dir STORE` (its cached sentence vectors make reruns fast).
2026-12-01 (README "Answer quality"): p = 0.5 stays the default; expected-F1 spans gain ~0.01 F1 at equal
containment (noise at 203 questions); every reader weight in the selector lowers the gold share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.app.answer_evaluation import SENTENCE_VECTORS, contains_gold, token_f1  # noqa: E402
from pmcqa.app.answering import extractive, span_reader  # noqa: E402
from pmcqa.app.answering.extractive import Decision, ExtractiveBackend, find_answer_model  # noqa: E402
from pmcqa.app.evaluation import load_eval_set, reserved_pmcid  # noqa: E402
from pmcqa.app.service import Library  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.embedding import Embedder  # noqa: E402
from pmcqa.index.library import open_library  # noqa: E402

TOP = 4  # sentences the selector trial reads


@dataclass
class Read:
    """The reader's start/end log-probabilities over one context's tokens, with their character offsets."""

    context: str
    offsets: list[tuple[int, int]]
    start: np.ndarray
    end: np.ndarray

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Character offsets into the context of tokens first..last."""
        return self.offsets[first][0], self.offsets[last][1]


@dataclass
class Question:
    answers: list[str]
    decision: Decision  # the backend's: its `text` is the answer in sentences
    chosen: Read  # the reader on that text
    top_logits: list[float]  # ranker logits of the top sentences, in paper order
    top_sentences: list[str]
    top: Read


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.logaddexp.reduce(x)


def read(reader: span_reader.SpanReader, question: str, context: str) -> Read:
    offsets, logits = reader.token_logits(question, context)
    return Read(context, offsets, log_softmax(logits[:, 0]), log_softmax(logits[:, 1]))


def ask_all(path: Path, store: Path) -> list[Question | None]:
    settings = Settings()
    model = find_answer_model(settings)
    if model.reader is None:
        raise SystemExit("the answer model has no span reader: run `pmcqa train-answerer` first")
    settings = settings.model_copy(
        update={"data_dir": store, "database_url": None, "answer_model": str(model.scorer)}
    )
    parts = open_library(settings, writable=False, embedder=Embedder(settings))
    library = Library(settings, parts.store, parts.embedder, parts.retriever, None)
    try:
        backend = library.load_backend("extractive")
        assert isinstance(backend, ExtractiveBackend)
        backend.load_vectors(store / SENTENCE_VECTORS)
        library.wait_for_backend("extractive")
        reader = backend.reader
        assert reader is not None
        out: list[Question | None] = []
        for item in load_eval_set(path, None, None, fallback_id=reserved_pmcid).questions:
            prepared = library.prepare(item.paper_id, item.question, None, "extractive")
            decision = backend.decide(prepared.question, prepared.passages, prepared.paper)
            if decision is None:
                out.append(None)
                continue
            sentences = decision.sentences
            top = sorted(np.argsort(-decision.logits)[:TOP], key=lambda i: sentences[i].start)
            top_texts = [sentences[i].text for i in top]
            out.append(
                Question(
                    answers=item.answers,
                    decision=decision,
                    chosen=read(reader, item.question, decision.text),
                    top_logits=[float(decision.logits[i]) for i in top],
                    top_sentences=top_texts,
                    top=read(reader, item.question, " ".join(top_texts)),
                )
            )
        return out
    finally:
        library.close()


def expected_f1_span(
    chosen: Read, weight: float, temperature: float, candidates: int = 12
) -> tuple[int, int]:
    """The span maximising E[token F1] + weight x P(contains gold), gold ~ the tempered softmaxes."""
    start = np.exp(log_softmax(chosen.start / temperature))
    end = np.exp(log_softmax(chosen.end / temperature))
    n = len(start)
    pairs = [
        (a, b, start[a] * end[b])
        for a in np.argsort(-start)[:candidates]
        for b in np.argsort(-end)[:candidates]
        if a <= b < a + span_reader.MAX_SPAN_TOKENS
    ]
    if not pairs:
        return 0, n - 1
    gold_start, gold_end, mass = (np.array(column) for column in zip(*pairs, strict=True))
    mass = mass / mass.sum()
    after = np.cumsum(start[::-1])[::-1]  # P(gold starts at or after i)
    before = np.cumsum(end)  # P(gold ends at or before j)
    best, chosen_span = -1.0, (0, n - 1)
    for first in range(n):
        last = np.arange(first, n)
        overlap = np.clip(np.minimum(last[:, None], gold_end) - np.maximum(first, gold_start) + 1, 0, None)
        f1 = 2 * overlap / ((last - first + 1)[:, None] + (gold_end - gold_start + 1))
        value = f1 @ mass + weight * after[first] * before[last]
        k = int(np.argmax(value))
        if value[k] > best:
            best, chosen_span = float(value[k]), (first, int(last[k]))
    return chosen_span


def score(
    name: str, questions: list[Question | None], answer: Callable[[Question], str], floor: float
) -> None:
    f1 = contained = answered = phrases = 0.0
    for q in questions:
        if q is None or q.decision.confidence < floor:
            continue
        text = answer(q)
        answered += 1
        phrases += text != q.decision.text
        f1 += max(token_f1(text, gold) for gold in q.answers)
        contained += contains_gold(text, q.answers)
    n = len(questions)
    print(
        f"| {name} | {f1 / n:.3f} | {contained / n:.3f} | {answered / n:.3f} | "
        f"{contained / max(answered, 1):.3f} | {phrases / max(answered, 1):.0%} |"
    )


def phrase_or_sentences(q: Question, first: int, last: int) -> str:
    """The backend's rule (`extractive.phrase_of`): the phrase, if it lies within one chosen sentence."""
    return extractive.phrase_of(q.decision, *q.chosen.span(first, last)) or q.decision.text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--store-dir", type=Path, required=True)
    parser.add_argument("--min-confidence", type=float, default=0.25)
    args = parser.parse_args(argv)
    questions = ask_all(args.file, args.store_dir)
    floor = args.min_confidence
    print(f"\n{len(questions)} questions, minimum confidence {floor}\n")
    print("| answer | token F1 | gold contained | answered | selective accuracy | phrases |")
    print("|---|---:|---:|---:|---:|---:|")
    score("sentences", questions, lambda q: q.decision.text, floor)

    def phrase_at(p: float) -> Callable[[Question], str]:
        def answer(q: Question) -> str:
            first, last, probability = span_reader.best_span(q.chosen.start, q.chosen.end)
            return phrase_or_sentences(q, first, last) if probability >= p else q.decision.text

        return answer

    for p in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        score(f"phrase at p >= {p}", questions, phrase_at(p), floor)
    for temperature in (1.0, 1.5, 2.0):
        for weight in (0.0, 0.25, 0.5, 0.75):

            def expected(q: Question, t: float = temperature, w: float = weight) -> str:
                return phrase_or_sentences(q, *expected_f1_span(q.chosen, w, t))

            score(
                f"expected-F1 span, T {temperature}, containment weight {weight}", questions, expected, floor
            )

    print(f"\nReader as a selector among the ranker's top {TOP} (share whose pick holds a gold answer)\n")
    print("| reader weight | gold held |")
    print("|---:|---:|")
    asked = [q for q in questions if q is not None]
    for weight in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 100.0):
        held = 0
        for q in asked:
            position, picks = 0, []
            for logit, sentence in zip(q.top_logits, q.top_sentences, strict=True):
                tokens = [
                    k for k, (a, _) in enumerate(q.top.offsets) if position <= a < position + len(sentence)
                ]
                mass = (
                    float(np.logaddexp.reduce(q.top.start[tokens]) + np.logaddexp.reduce(q.top.end[tokens]))
                    if tokens
                    else -50.0
                )
                picks.append((logit + weight * mass, sentence))
                position += len(sentence) + 1
            held += contains_gold(max(picks, key=lambda pick: pick[0])[1], q.answers)
        print(f"| {weight} | {held / len(questions):.3f} |")


if __name__ == "__main__":
    main()
