"""Embedding backends on CPU, side by side in one run: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8.

    .venv/bin/python bench/bench_encode.py                         # everything, default sizes
    .venv/bin/python bench/bench_encode.py --passages 300 --skip-eval --ingest-papers 0   # quick look

(1) encode throughput (passages/s) of each backend on the same passages: chunks of the COVID-QA papers cut by
    the production chunker (dev papers first, then train). Rounds are interleaved (the order rotates) so a
    change of machine load hits every backend alike; each backend's best round counts. Also the cosine of each
    backend's vectors to PyTorch's on those passages.
(2) retrieval quality per backend: `pmcqa eval ../shared/data/covid-qa/dev.json --modes dense,hybrid`
    (`run_evaluation`, a fresh store each): hit@1024 and MRR.
(3) the rule for `PMCQA_EMBEDDING_BACKEND=auto` on CPU: the fastest ONNX variant is the default only if it is
    >= 1.5x PyTorch's passages/s with hit@1024 (dense and hybrid) within 0.01 of PyTorch's.
(4) ingest vs bare encode of the chosen backend: bench_ingest.py's (a) on --ingest-papers JATS files
    (target: pipeline <= 1.10x encode alone).

Not a test: it prints one rich table. ONNX exports are cached under --data-dir (default: the settings' data
dir), as the service caches them; the export time is shown when this run had to export.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pmcqa.core.settings import Settings  # noqa: E402

COVID_QA = REPO.parent / "shared" / "data" / "covid-qa"
BACKENDS = ("torch", "onnx", "onnx-int8")
SPEEDUP_NEEDED = 1.5
HIT_TOLERANCE = 0.01
console = Console(width=140)


def covid_qa_passages(limit: int, settings: Settings) -> list[str]:
    from pmcqa.app.evaluation import load_eval_set
    from pmcqa.ingest.chunking import Chunker

    chunker = Chunker(settings)
    texts: list[str] = []
    for split in ("dev.json", "train.json"):
        for paper_id, paper in load_eval_set(COVID_QA / split).papers:
            texts.extend(chunk.text for chunk in chunker.chunk(paper, paper_id, split)[1])
            if len(texts) >= limit:
                return texts[:limit]
    return texts


def load_embedders(data_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from pmcqa.index.embedding import Embedder

    embedders, load_s = {}, {}
    for backend in BACKENDS:
        started = time.perf_counter()
        embedders[backend] = Embedder(
            Settings(data_dir=data_dir, embedding_backend=backend, embedding_device="cpu")
        )
        load_s[backend] = time.perf_counter() - started  # includes a first-time export
    return embedders, load_s


def bench_throughput(embedders: dict[str, Any], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    for embedder in embedders.values():
        embedder.embed_documents(texts[:64])  # warm-up: first batches pay one-off allocations
    best = dict.fromkeys(embedders, float("inf"))
    vectors: dict[str, np.ndarray] = {}
    order = list(embedders)
    for round_ in range(rounds):
        for backend in order[round_ % len(order) :] + order[: round_ % len(order)]:
            started = time.perf_counter()
            vectors[backend] = embedders[backend].embed_documents(texts)
            elapsed = time.perf_counter() - started
            best[backend] = min(best[backend], elapsed)
            console.print(f"round {round_ + 1}: {backend} {len(texts) / elapsed:.1f} passages/s")
    out = {}
    for backend in embedders:
        cosines = (vectors[backend] * vectors["torch"]).sum(axis=1)
        out[backend] = {
            "seconds": best[backend],
            "per_s": len(texts) / best[backend],
            "cos_min": float(cosines.min()),
            "cos_mean": float(cosines.mean()),
        }
    return out


def bench_quality(embedders: dict[str, Any], data_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    from pmcqa.app.evaluation import run_evaluation

    out = {}
    for backend, embedder in embedders.items():
        settings = Settings(data_dir=data_dir, embedding_backend=backend, embedding_device="cpu")
        report = run_evaluation(COVID_QA / "dev.json", settings, modes=("dense", "hybrid"), embedder=embedder)
        out[backend] = report.as_dict()["modes"]
        console.print(f"eval {backend}: {out[backend]}")
    return out


def decide(speed: dict[str, dict[str, float]], quality: dict[str, Any] | None) -> tuple[str, str]:
    """(CPU default, why) by the rule in the module docstring."""
    fastest = max(("onnx", "onnx-int8"), key=lambda b: speed[b]["per_s"])
    speedup = speed[fastest]["per_s"] / speed["torch"]["per_s"]
    if speedup < SPEEDUP_NEEDED:
        return "torch", f"fastest ONNX variant ({fastest}) is {speedup:.2f}x PyTorch, under {SPEEDUP_NEEDED}x"
    if quality is None:
        return "torch", f"{fastest} is {speedup:.2f}x but quality was not measured (--skip-eval)"
    for mode in ("dense", "hybrid"):
        drop = quality["torch"][mode]["hit@1024"] - quality[fastest][mode]["hit@1024"]
        if drop > HIT_TOLERANCE:
            return "torch", f"{fastest} is {speedup:.2f}x but loses {drop:.3f} {mode} hit@1024"
    return fastest, f"{fastest} is {speedup:.2f}x PyTorch with hit@1024 within {HIT_TOLERANCE}"


def bench_chosen_ingest(backend: str, papers: int, repeats: int, work: Path) -> dict[str, float]:
    import bench_ingest

    args = SimpleNamespace(
        papers=papers, repeats=repeats, ingest_batch=8, skip_encode=False, embedding_backend=backend
    )
    return bench_ingest.bench_ingest(args, work)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=1000, help="COVID-QA chunks encoded per round.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; the best one counts.")
    parser.add_argument("--skip-eval", action="store_true", help="No `pmcqa eval` per backend.")
    parser.add_argument(
        "--ingest-papers", type=int, default=10, help="JATS files of the ingest check (0: skip)."
    )
    parser.add_argument("--ingest-repeats", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None, help="Where ONNX exports are cached.")
    args = parser.parse_args()
    started_at = time.perf_counter()
    load_before = os.getloadavg()

    data_dir = args.data_dir or Settings().data_dir
    embedders, load_s = load_embedders(data_dir)
    texts = covid_qa_passages(args.passages, Settings(data_dir=data_dir))
    tokens = [
        len(embedders["torch"].document_model.tokenizer(t, truncation=True)["input_ids"]) for t in texts
    ]
    speed = bench_throughput(embedders, texts, args.rounds)
    with tempfile.TemporaryDirectory(prefix="pmcqa-bench-encode-") as tmp:
        quality = None if args.skip_eval else bench_quality(embedders, Path(tmp) / "eval")
        chosen, why = decide(speed, quality)
        ingest = (
            bench_chosen_ingest(chosen, args.ingest_papers, args.ingest_repeats, Path(tmp))
            if (args.ingest_papers)
            else None
        )

    table = Table(
        title=f"Embedding backends on CPU — {len(texts)} COVID-QA passages "
        f"(mean {np.mean(tokens):.0f} tokens), batch {embedders['torch'].batch_size}, "
        f"best of {args.rounds} interleaved rounds",
    )
    for column in ("backend", "passages/s", "vs torch", "cos to torch min/mean", "load (+export) s"):
        table.add_column(column, justify="right" if column != "backend" else "left")
    if quality:
        for column in ("dense hit@1024", "dense MRR", "hybrid hit@1024", "hybrid MRR"):
            table.add_column(column, justify="right")
    for backend in BACKENDS:
        row = speed[backend]
        cells = [
            backend,
            f"{row['per_s']:.1f}",
            f"{row['per_s'] / speed['torch']['per_s']:.2f}x",
            f"{row['cos_min']:.4f} / {row['cos_mean']:.4f}",
            f"{load_s[backend]:.1f}",
        ]
        if quality:
            q = quality[backend]
            cells += [
                f"{q['dense']['hit@1024']:.3f}",
                f"{q['dense']['mrr']:.3f}",
                f"{q['hybrid']['hit@1024']:.3f}",
                f"{q['hybrid']['mrr']:.3f}",
            ]
        table.add_row(*cells)
    console.print(table)
    console.print(f"decision (auto on CPU): [bold]{chosen}[/bold] — {why}")
    if ingest is not None:
        console.print(
            f"ingest check ({chosen}, {ingest['files']} files, {ingest['chunks']} chunks): encode alone "
            f"{ingest['encode_s']:.1f} s, parse+chunk+embed+store {ingest['pipeline_s']:.1f} s -> "
            f"[bold]{ingest['ratio']:.3f}x[/bold] (target <= 1.10x); "
            f"parse+chunk {ingest['parse_chunk_s']:.1f} s, store writes {ingest['store_s']:.1f} s"
        )
    load_after = os.getloadavg()
    console.print(
        f"{date.today()}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible, load average "
        f"{load_before[0]:.1f} at start / {load_after[0]:.1f} at end, "
        f"{time.perf_counter() - started_at:.0f} s"
    )


if __name__ == "__main__":
    main()
