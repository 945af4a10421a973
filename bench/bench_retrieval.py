"""Sweep fusion and neighbour parameters of the retriever on COVID-QA dev (defaults are chosen from dev only).

    .venv/bin/python bench/bench_retrieval.py [--data ../shared/data/covid-qa/dev.json] [--store-dir DIR]

Prints JSON lines: one per fusion setting (hybrid hit@budget, MRR) and one per neighbour setting (answer
inside a passage merged with its neighbours, at equal token budget). The store is built once (or reused from
`--store-dir`, which `pmcqa eval --store-dir` also fills).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmcqa.app.evaluation import build_store, context_hit_rate, evaluate, load_squad  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.embedding import Embedder  # noqa: E402
from pmcqa.index.library import open_library  # noqa: E402
from pmcqa.index.retrieval import Retriever  # noqa: E402
from pmcqa.index.store import Store  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/covid-qa/dev.json"


def open_store(eval_set, settings: Settings, embedder: Embedder) -> Store:  # type: ignore[no-untyped-def]
    store = open_library(settings, writable=True, embedder=embedder).store
    if store.count_papers() == len(eval_set.papers):
        return store
    store.close()
    return build_store(eval_set, settings, embedder, "bench")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--store-dir", type=Path, default=None)
    args = parser.parse_args()

    eval_set = load_squad(args.data)
    data_dir = args.store_dir or Path(tempfile.mkdtemp(prefix="pmcqa-bench-"))
    settings = Settings(data_dir=data_dir)
    embedder = Embedder(settings)
    store = open_store(eval_set, settings, embedder)

    for rrf_k in (5, 10, 30, 60, 100):
        for lexical_weight in (1.0, 1.5, 2.0):
            retriever = Retriever(store, embedder, settings, rrf_k=rrf_k, lexical_weight=lexical_weight)
            report = evaluate(retriever, eval_set.questions, ["hybrid"])
            row = report.as_dict()["modes"]["hybrid"]
            print(json.dumps({"rrf_k": rrf_k, "lexical_weight": lexical_weight, **row}), flush=True)

    for offsets in ((), (1,), (-1,), (1, -1), (-1, 1)):
        retriever = Retriever(store, embedder, settings, neighbour_offsets=offsets)
        for budget in (1024, 2048):
            for share in (0.0, 0.25, 0.5):
                rate = context_hit_rate(retriever, eval_set.questions, budget, share)
                row = {"neighbours": list(offsets), "budget": budget, "share": share, "hit": round(rate, 4)}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
