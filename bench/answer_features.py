"""Dump, per COVID-QA question, what the extractive backend sees: every candidate sentence with its features.

For each question of a split (train or dev) the script retrieves passages exactly as /ask does (hybrid, top_k,
neighbours within the context budget) from the question's own paper and from a different paper (the next
article in file order), and records the passages, the candidate sentences (`extractive.candidates`) and
each sentence's embedding cosine with the question (the only feature that needs the model; the others are
recomputed from text by `extractive.feature_rows`), with the gold answer spans.
`bench/fit_answer_models.py` fits the sentence ranker and the confidence model from these dumps (train) and
checks them on dev; nothing here decides anything.

    .venv/bin/python bench/answer_features.py --split dev --store-dir /tmp/answers-eval/dev --out dev.pkl

The store dir is the one `pmcqa eval FILE --store-dir DIR` builds (reused; chunks are embedded once).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.app.answer_evaluation import SENTENCE_VECTORS  # noqa: E402
from pmcqa.app.answering import extractive  # noqa: E402
from pmcqa.app.answering.extractive import ExtractiveBackend  # noqa: E402
from pmcqa.app.evaluation import fill_store, load_squad, reserved_pmcid  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.library import open_library  # noqa: E402

COVID_QA = REPO.parent / "shared" / "data" / "covid-qa"


def gold_spans(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    """Question id -> [(start, end, text)] of its gold answers (offsets into the context)."""
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                spans[str(qa["id"])] = [
                    (a["answer_start"], a["answer_start"] + len(a["text"]), a["text"]) for a in qa["answers"]
                ]
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=["train", "dev"], required=True)
    parser.add_argument("--store-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    path = COVID_QA / f"{args.split}.json"
    started = time.perf_counter()
    settings = Settings(data_dir=args.store_dir)
    parts = open_library(settings, writable=True)
    # The ids `pmcqa eval --answers` gives the articles, so one --store-dir serves both.
    eval_set = load_squad(path, limit=args.limit, fallback_id=reserved_pmcid)
    fill_store(parts.store, eval_set, settings, parts.embedder, f"squad:{path.name}")
    print(f"store ready in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    backend = ExtractiveBackend(settings, parts.embedder)
    cache = args.store_dir / SENTENCE_VECTORS
    print(f"{backend.load_vectors(cache)} sentence vectors loaded from {cache}", file=sys.stderr)
    golds = gold_spans(path)
    order = list(dict.fromkeys(q.paper_id for q in eval_set.questions))
    other_of = {p: order[(i + 1) % len(order)] for i, p in enumerate(order)}
    records = {p: parts.store.get_paper(p) for p in order}

    def candidates(paper_id: str, question: str) -> dict[str, object]:
        paper = records[paper_id]
        passages = parts.retriever.retrieve(paper_id, question, settings.top_k, "hybrid")
        sentences = extractive.candidates(passages)
        dense = backend.dense_scores(question, sentences, paper) if sentences else np.zeros(0)
        return {"paper_id": paper_id, "passages": passages, "sentences": sentences, "dense": dense}

    rows = []
    for number, question in enumerate(eval_set.questions, start=1):
        own = candidates(question.paper_id, question.question)
        other = candidates(other_of[question.paper_id], question.question)
        rows.append(
            {
                "qid": question.qid,
                "question": question.question,
                "answers": question.answers,
                "gold": golds[question.qid],
                "own": own,
                "other": other,
            }
        )
        if number % 100 == 0:
            backend.save_vectors(cache)
        if number % 50 == 0:
            print(
                f"  {number}/{len(eval_set.questions)} at {time.perf_counter() - started:.0f}s",
                file=sys.stderr,
            )
    backend.save_vectors(cache)
    texts = {p: records[p].text for p in order}
    args.out.write_bytes(pickle.dumps({"split": args.split, "rows": rows, "texts": texts}))
    print(f"{len(rows)} questions in {time.perf_counter() - started:.0f}s -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
