#!/usr/bin/env python
"""More evidence for the trained answer model's sentence ranker and confidence, tried on COVID-QA.

The trained ranker scores a candidate sentence by 0.6 x cosine (fine-tuned scorer) + 0.4 x term coverage and
the confidence model reads `ANSWER_FEATURES` of the chosen answer. This asks whether more evidence helps:

1. ranker: each extra sentence feature alone beside the served two — the retrieval encoder's cosine (the
   hand-set ranker's), the term coverage of the sentence with the one before it and of its whole chunk, the
   best fine-tuned cosine of its neighbours in the chunk. Weights (dense 0.5-0.8, extra 0-0.3) chosen on
   the held-out train papers (as `pmcqa train-answerer` chooses the dense weight); printed: the share of
   questions whose best sentence overlaps a gold answer, held out and on dev.
2. confidence: the logistic model refitted on the held-out papers (own- and wrong-paper answers, as
   `train-answerer` fits it) with each extra answer feature, and with all: agreement of the two rankers' best
   sentence, the retrieval encoder's best cosine, the best sentence's retrieval rank, novelty, abstract,
   question-kind match, and the number of candidates. Printed on dev: AUC of confidence for own-paper
   answers holding the gold, and selective accuracy and wrong-paper abstention at the threshold that
   answers 80% of own-paper questions.
3. longer answers: the served answer plus the ranker's next 1 or 2 best sentences not in it, with the
   served confidence and threshold: would quoting more reach the gold-contained and selective-accuracy
   targets (at the cost of token F1)?

    PMCQA_DATA_DIR=DIR .venv/bin/python bench/try_ranker_features.py ../shared/data/covid-qa/train.json \\
        ../shared/data/covid-qa/dev.json --store-dir STORE

DIR holds the answer model (`pmcqa train-answerer`: DIR/models/answer-scorer), STORE the store that
`train-answerer --store-dir STORE` filled (train and dev papers). About 5 minutes on 2 cores.
2026-12-01 (README "Answer quality"): no extra feature moves either beyond a few questions; none is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.app import answer_training as training  # noqa: E402
from pmcqa.app.answer_evaluation import contains_gold, other_papers, token_f1  # noqa: E402
from pmcqa.app.answering import extractive  # noqa: E402
from pmcqa.app.answering.extractive import FEATURES, ExtractiveBackend, find_answer_model  # noqa: E402
from pmcqa.app.evaluation import load_squad, reserved_pmcid  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.embedding import Embedder  # noqa: E402
from pmcqa.index.library import open_library  # noqa: E402

DENSE, LEXICAL = FEATURES.index("dense"), FEATURES.index("lexical")
DENSE_WEIGHTS = (0.5, 0.6, 0.7, 0.8)
EXTRA_WEIGHTS = (0.0, 0.1, 0.2, 0.3)
ANSWERED = 0.80


@dataclasses.dataclass
class Asked:
    """One question asked of one paper: the served rows and decision, the retrieval encoder's cosines and
    the hand-set ranker's logits, and the extra sentence features (columns of `SENTENCE_EXTRAS`)."""

    item: training.Candidates
    rows: np.ndarray
    decision: extractive.Decision
    base_dense: np.ndarray
    base_logits: np.ndarray
    extras: np.ndarray


SENTENCE_EXTRAS = (
    "retrieval-encoder cosine",
    "coverage with previous",
    "coverage of chunk",
    "neighbour cosine",
)
ANSWER_EXTRAS = (
    "rankers agree",
    "retrieval encoder's best cosine",
    "inverse rank",
    "novelty",
    "abstract",
    "kind match",
    "log candidates",
)


def coverage(item: training.Candidates, texts: Sequence[str], idf: extractive.IdfTable) -> np.ndarray:
    """The served `lexical` feature (idf-weighted share of the question's terms) of other texts."""
    pseudo = [dataclasses.replace(s, text=t) for s, t in zip(item.sentences, texts, strict=True)]
    rows = extractive.feature_rows(item.question.question, pseudo, np.zeros(len(pseudo)), idf, item.passages)
    return rows[:, LEXICAL]


def extras_of(
    item: training.Candidates, rows: np.ndarray, base_dense: np.ndarray, idf: extractive.IdfTable
) -> np.ndarray:
    sentences = item.sentences
    n = len(sentences)
    with_previous = [
        f"{sentences[i - 1].text} {s.text}" if i and extractive.follows(sentences[i - 1], s) else s.text
        for i, s in enumerate(sentences)
    ]
    neighbours = [
        max(
            [
                rows[j, DENSE]
                for j in (i - 1, i + 1)
                if 0 <= j < n
                and (
                    extractive.follows(sentences[j], sentences[i])
                    or extractive.follows(sentences[i], sentences[j])
                )
            ]
            or [0.0]
        )
        for i in range(n)
    ]
    return np.stack(
        [
            base_dense,
            coverage(item, with_previous, idf),
            coverage(item, [s.chunk.text for s in sentences], idf),
            np.array(neighbours),
        ],
        axis=1,
    )


def ask(
    parts, settings: Settings, questions, trained: ExtractiveBackend, base: ExtractiveBackend, other=None
) -> list[Asked]:
    asked = [a for a in training.ask_all(parts, settings, questions, other) if a.sentences]
    rows = training.feature_table(trained, asked)
    base_rows = training.feature_table(base, asked)
    idf: dict[str, extractive.IdfTable] = {}  # per paper, not per question
    out = []
    for item, r, b in zip(asked, rows, base_rows, strict=True):
        if item.paper.paper_id not in idf:
            idf[item.paper.paper_id] = extractive.paper_idf(item.paper.text)
        out.append(
            Asked(
                item,
                r,
                extractive.decide_on(item.sentences, r, trained.answer_model),
                b[:, DENSE],
                extractive.rank_logits(b, base.answer_model),
                extras_of(item, r, b[:, DENSE], idf[item.paper.paper_id]),
            )
        )
    return out


def top1(
    asked: Sequence[Asked], model: extractive.AnswerModel, dense: float, extra: int | None, weight: float
) -> float:
    """Share of questions whose best sentence overlaps gold, ranked by `model` with dense weight `dense`
    (lexical 1 - `dense`) plus `weight` x the extra feature."""
    ranker = training.with_ranker(model, dense)
    hits = []
    for a in asked:
        score = extractive.rank_logits(a.rows, ranker)
        if extra is not None:
            score = score + weight * a.extras[:, extra]
        hits.append(bool(a.item.labels[int(np.argmax(score))]))
    return float(np.mean(hits))


def ranker_table(held: Sequence[Asked], dev: Sequence[Asked], model: extractive.AnswerModel) -> Table:
    served = model.ranker_weights["dense"]
    table = Table(title="Ranker: best sentence overlaps gold (weights chosen on held-out train papers)")
    for column in ("extra feature", "dense / extra weight", "held-out", "dev"):
        table.add_column(column, justify="left" if column == "extra feature" else "right")
    table.add_row(
        "none (served)",
        f"{served} / -",
        f"{top1(held, model, served, None, 0):.3f}",
        f"{top1(dev, model, served, None, 0):.3f}",
    )
    for k, name in enumerate(SENTENCE_EXTRAS):
        grid = [(d, w) for d in DENSE_WEIGHTS for w in EXTRA_WEIGHTS]
        d, w = max(grid, key=lambda g: (round(top1(held, model, g[0], k, g[1]), 4), -g[1]))
        table.add_row(
            name, f"{d} / {w}", f"{top1(held, model, d, k, w):.3f}", f"{top1(dev, model, d, k, w):.3f}"
        )
    return table


def answer_rows(asked: Sequence[Asked], own: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per question: the served ANSWER_FEATURES then `ANSWER_EXTRAS`, and whether the answer holds gold."""
    x, y = [], []
    for a in asked:
        decision = a.decision
        best = int(np.argmax(decision.logits))
        base_best = int(np.argmax(a.base_logits))
        r = a.rows[best]
        kind = r[FEATURES.index("number_match")] + r[FEATURES.index("time_match")]
        extra = [
            float(base_best == best),
            float(a.base_dense.max()),
            r[FEATURES.index("inverse_rank")],
            r[FEATURES.index("novelty")],
            r[FEATURES.index("abstract")],
            kind,
            float(np.log(len(a.item.sentences))),
        ]
        x.append(np.concatenate([decision.features, extra]))
        y.append(own and contains_gold(decision.text, a.item.question.answers))
    return np.array(x), np.array(y, dtype=float)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None, :]).mean()
    return float(greater + 0.5 * (positive[:, None] == negative[None, :]).mean())


def confidence_table(held: tuple, dev: tuple, answered_questions: int) -> Table:
    (held_x, held_y, held_other_x), (dev_x, dev_y, dev_other_x) = held, dev
    served = len(extractive.ANSWER_FEATURES)
    trials = [("none (served)", list(range(served)))]
    trials += [(f"+ {name}", [*range(served), served + k]) for k, name in enumerate(ANSWER_EXTRAS)]
    trials.append(("+ all", list(range(held_x.shape[1]))))
    table = Table(
        title=f"Confidence on dev (fitted on held-out train papers; threshold answering {ANSWERED:.0%})"
    )
    for column in ("answer features", "AUC (own paper)", "selective accuracy", "wrong-paper abstention"):
        table.add_column(column, justify="left" if column == "answer features" else "right")
    for name, columns in trials:
        x = np.vstack([held_x[:, columns], held_other_x[:, columns]])
        y = np.concatenate([held_y, np.zeros(len(held_other_x))])
        weights, bias = training.fit_logistic(x, y)
        own = dev_x[:, columns] @ weights + bias
        other = dev_other_x[:, columns] @ weights + bias
        # The logit answering 80% of all own-paper questions (those with no candidate count as unanswered).
        threshold = np.sort(own)[::-1][int(ANSWERED * answered_questions) - 1]
        answered = own >= threshold
        table.add_row(
            name,
            f"{auc(own, dev_y):.3f}",
            f"{dev_y[answered].mean():.3f}",
            f"{(other < threshold).mean():.3f}",
        )
    return table


def longer_answers_table(dev: Sequence[Asked], model: extractive.AnswerModel, questions: int) -> Table:
    table = Table(title=f"Longer answers on dev (served confidence, minimum {model.min_confidence})")
    for column in ("sentences", "gold contained", "answered", "selective accuracy", "token F1"):
        table.add_column(column, justify="right")
    for most in (1, 2, 3):
        contained, f1, answered = [], [], []
        for a in dev:
            decision = a.decision
            more = [i for i in np.argsort(-decision.logits) if i not in decision.chosen][: most - 1]
            chosen = sorted({*decision.chosen, *more}, key=lambda i: a.item.sentences[i].start)
            text = dataclasses.replace(decision, chosen=chosen).text
            answers = a.item.question.answers
            answered.append(decision.confidence >= model.min_confidence)
            contained.append(answered[-1] and contains_gold(text, answers))
            f1.append(max(token_f1(text, gold) for gold in answers) if answered[-1] else 0.0)
        label = "served" if most == 1 else f"served + next {most - 1} best"
        table.add_row(
            label,
            f"{sum(contained) / questions:.3f}",
            f"{sum(answered) / questions:.3f}",
            f"{sum(contained) / max(sum(answered), 1):.3f}",
            f"{sum(f1) / questions:.3f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("dev", type=Path)
    parser.add_argument("--store-dir", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings()
    model = find_answer_model(settings)
    if model.scorer is None:
        raise SystemExit("no trained answer model under PMCQA_DATA_DIR: run `pmcqa train-answerer` first")
    store = settings.model_copy(update={"data_dir": args.store_dir, "database_url": None})
    train = load_squad(args.train, fallback_id=reserved_pmcid)
    dev = load_squad(args.dev, fallback_id=reserved_pmcid)
    trained = ExtractiveBackend(settings, answer_model=model)
    base = ExtractiveBackend(settings, answer_model=extractive.hand_set_model())
    parts = open_library(store, writable=False, embedder=Embedder(store))
    try:
        held_questions = [q for q in train.questions if training.is_held_out(q.paper_id)]
        held = ask(parts, store, held_questions, trained, base)
        held_other = ask(parts, store, held_questions, trained, base, other_papers(train.questions))
        dev_own = ask(parts, store, dev.questions, trained, base)
        dev_other = ask(parts, store, dev.questions, trained, base, other_papers(dev.questions))
    finally:
        parts.close()
    console = Console(width=140)
    console.print(ranker_table(held, dev_own, model))
    held_x, held_y = answer_rows(held, True)
    held_other_x, _ = answer_rows(held_other, False)
    dev_x, dev_y = answer_rows(dev_own, True)
    dev_other_x, _ = answer_rows(dev_other, False)
    console.print(
        confidence_table((held_x, held_y, held_other_x), (dev_x, dev_y, dev_other_x), len(dev.questions))
    )
    console.print(longer_answers_table(dev_own, model, len(dev.questions)))
    console.print(
        f"held-out: {len(held)} questions ({len({a.item.paper.paper_id for a in held})} papers); "
        f"dev: {len(dev_own)}"
    )


if __name__ == "__main__":
    main()
