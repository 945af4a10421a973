"""Calibrate the extractive backend's abstention threshold on COVID-QA dev.

Every dev question is asked twice through the real pipeline (chunker → store → hybrid retriever → extractive
scoring): of its own paper (it should answer) and of a different paper (the next article of the dev set in
file order; it should abstain). The evidence score the backend decides on — the best sentence's
``DENSE_WEIGHT * cosine + LEXICAL_WEIGHT * idf-weighted term coverage`` — is recorded for both, and the
threshold that maximises balanced accuracy (mean of the own-paper answer rate and the other-paper abstain
rate) is chosen. For own-paper questions the script also reports how often the gold answer span overlaps the
sentences the backend selects (with no threshold).

COVID-QA contexts are flat text (no sections): each blank-line block becomes one paragraph block of a
`Paper`, so the canonical text equals the context.

    .venv/bin/python bench/calibrate_abstention.py [--dev PATH] [--data-dir DIR] [--json OUT]

Result (2026-11-30, all-MiniLM-L6-v2, top_k 8, chunker v2, tokens and sentences from pmcqa.core.text; full
output in calibrate_abstention.out.txt): 203 questions; own-paper best-sentence score median 0.648,
other-paper median 0.227; chosen threshold 0.40: answers 92.6% of own-paper questions, abstains on 93.6% of
other-paper questions (balanced accuracy 0.931). The gold answer overlaps the selected sentences for 69.0% of
own-paper questions (71.8% of those answered).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.app.answering.extractive import ExtractiveBackend, chunk_sentences  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.library import open_library  # noqa: E402
from pmcqa.index.models import PaperRecord  # noqa: E402
from pmcqa.ingest.chunking import Chunker  # noqa: E402
from pmcqa.ingest.models import Block, Paper  # noqa: E402

DEFAULT_DEV = REPO.parent / "shared" / "data" / "covid-qa" / "dev.json"


def paper_from_context(context: str, index: int) -> tuple[str, Paper]:
    pieces = context.split("\n\n")
    blocks = [
        Block(kind="title" if i == 0 else "paragraph", text=piece, part="front" if i == 0 else "body")
        for i, piece in enumerate(pieces)
    ]
    paper = Paper(title=pieces[0].strip(), blocks=blocks)
    assert paper.canonical_text == context, "blank-line blocks must rebuild the context exactly"
    return f"PMC{900000 + index}", paper


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="Reuse an index here (default: temp dir)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Write per-question scores here.")
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="pmcqa-calib-"))
    settings = Settings(data_dir=data_dir)
    started = time.perf_counter()
    library = open_library(settings, writable=True)
    store, embedder, retriever = library.store, library.embedder, library.retriever
    backend = ExtractiveBackend(settings, embedder)
    chunker = Chunker(settings)

    articles = json.loads(args.dev.read_text())["data"]
    papers: list[tuple[PaperRecord, list[dict]]] = []
    for i, article in enumerate(articles):
        paragraph = article["paragraphs"][0]
        paper_id, paper = paper_from_context(paragraph["context"], i)
        record = store.get_paper(paper_id)
        if record is None or record.text != paper.canonical_text:
            record, chunks = chunker.chunk(paper, paper_id, source="covid-qa dev")
            store.put_paper(record, chunks, embedder)
        papers.append((record, paragraph["qas"]))
    print(f"indexed {len(papers)} papers in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    # Embed every sentence of every paper once, in large batches (the backend caches them by offsets);
    # answering then only encodes the questions.
    for record, _ in papers:
        chunks = store.get_chunks(record.paper_id)
        backend._sentence_vectors(record.paper_id, [s for c in chunks for s in chunk_sentences(c)])
    print(f"sentences embedded at {time.perf_counter() - started:.0f}s", file=sys.stderr)

    rows = []
    for i, (record, qas) in enumerate(papers):
        other = papers[(i + 1) % len(papers)][0]
        for qa in qas:
            question = qa["question"].strip()
            gold = qa["answers"][0]
            gold_span = (gold["answer_start"], gold["answer_start"] + len(gold["text"]))
            own = retriever.retrieve(record.paper_id, question, settings.top_k, "hybrid")
            sentences = backend.candidates(own)
            scores = backend.score(question, sentences, record)
            backend.threshold = float("-inf")  # selection as if answering, to measure gold overlap
            chosen = [sentences[j] for j in backend.select(sentences, scores)]
            hit = any(s.start < gold_span[1] and gold_span[0] < s.end for s in chosen)
            foreign = retriever.retrieve(other.paper_id, question, settings.top_k, "hybrid")
            rows.append(
                {
                    "id": qa["id"],
                    "own": float(scores.max()),
                    "other": backend.best_score(question, foreign, other),
                    "gold_in_answer": hit,
                }
            )
        print(f"  {i + 1}/{len(papers)} papers, {len(rows)} questions", file=sys.stderr)

    own = np.array([r["own"] for r in rows])
    other = np.array([r["other"] for r in rows])
    hits = np.array([r["gold_in_answer"] for r in rows])
    grid = np.round(np.arange(0.10, 0.90, 0.01), 2)
    table = []
    for threshold in grid:
        answer_own = float((own >= threshold).mean())
        abstain_other = float((other < threshold).mean())
        table.append((float(threshold), answer_own, abstain_other, (answer_own + abstain_other) / 2))
    best = max(table, key=lambda row: (row[3], row[2]))
    threshold, answer_own, abstain_other, balanced = best
    print(f"questions: {len(rows)} (COVID-QA dev, {len(papers)} papers)")
    print(f"gold answer overlaps the selected sentences (own paper, no threshold): {hits.mean():.1%}")
    print(f"own-paper score: median {np.median(own):.3f}; other-paper score: median {np.median(other):.3f}")
    print("threshold  answer(own)  abstain(other)  balanced")
    for row in table:
        if abs(row[0] * 100 % 5) < 1e-6 or row[0] == threshold:
            print(f"  {row[0]:.2f}      {row[1]:6.1%}       {row[2]:6.1%}       {row[3]:.3f}")
    answered = own >= threshold
    print(
        f"chosen threshold {threshold:.2f}: answers {answer_own:.1%} of own-paper questions, abstains on "
        f"{abstain_other:.1%} of other-paper questions (balanced accuracy {balanced:.3f}); gold overlap in "
        f"answered own-paper questions {hits[answered].mean() if answered.any() else 0:.1%}"
    )
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "rows": rows}, indent=1))
    print(f"({time.perf_counter() - started:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
