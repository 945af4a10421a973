"""Ingest throughput without the encoder: 1 and 2 worker processes writing one library, SQLite vs PostgreSQL.

    .venv/bin/python bench/bench_ingest_workers.py [--files 159] [--workers 1,2] [--stores sqlite,postgres]

What a worker does per paper, minus the embedding model: read the JATS file, parse, chunk (the real
`Ingestor.ingest_files`) and write the paper with its vectors in one transaction (the real store). The
vectors come from a stand-in encoder that returns random unit vectors in microseconds, so the figure is the
ingest machinery's own ceiling (papers/s excluding encode); with the real encoder, encode dominates
(bench_ingest.py). Each worker is its own process with its own connection (SQLite: the shared file in WAL
mode; PostgreSQL: its own pool), and the papers are split between them; wall time runs from a common start
to the last one done.

PostgreSQL at PMCQA_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres); a scratch database
`pmcqa_bench_ingest` is created and dropped per run. Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.app.corpus_report import corpus_files  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402

SHARED = Path(os.environ.get("PMCQA_SHARED_DIR", REPO.parent / "shared")) / "data" / "jats"
ADMIN_URL = os.environ.get("PMCQA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SCRATCH_DB = "pmcqa_bench_ingest"


class RandomEncoder:
    """Stands in for the embedding model: random unit vectors, so only the ingest machinery is timed."""

    model_name = "bench-random-encoder"
    dimension = 384
    document_prefix = ""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        vectors = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def worker(settings: Settings, files: list[Path], seed: int, start, ready, out) -> None:  # type: ignore[no-untyped-def]
    from pmcqa.index.store import open_store
    from pmcqa.ingest.pipeline import Ingestor

    store = open_store(settings)
    ingestor = Ingestor(settings, store=store, encoder=RandomEncoder(seed))
    ingestor.ingest_files(files[:1])  # warm-up: tokenizer loaded, connection open; not timed
    ready.put(seed)
    start.wait()
    began = time.perf_counter()
    outcomes = ingestor.ingest_files(files[1:])
    out.put((sum(o.status == "ingested" for o in outcomes), time.perf_counter() - began))


def admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def settings_for(store: str, data_dir: Path) -> Settings:
    if store == "sqlite":
        return Settings(data_dir=data_dir)
    admin_execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{SCRATCH_DB}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{SCRATCH_DB}"))
    return Settings(data_dir=data_dir, database_url=SecretStr(url))


def run(store: str, workers: int, files: list[Path]) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="pmcqa-bench-ingest-") as tmp:
        settings = settings_for(store, Path(tmp))
        ctx = mp.get_context("spawn")
        start, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
        parts = [files[i::workers] for i in range(workers)]
        procs = [
            ctx.Process(target=worker, args=(settings, part, seed, start, ready, out))
            for seed, part in enumerate(parts)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:  # all warmed up, then they start together
            ready.get(timeout=600)
        began = time.perf_counter()
        start.set()
        results = [out.get(timeout=1800) for _ in procs]
        wall = time.perf_counter() - began
        for proc in procs:
            proc.join()
        if store == "postgres":
            from pmcqa.core.db import close_pools

            close_pools()
            admin_execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
        return sum(r[0] for r in results), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=0, help="corpus files to ingest (0: all)")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    files = corpus_files(SHARED)
    if not files:
        sys.exit(f"no JATS corpus at {SHARED}")
    files = files[: args.files] if args.files else files
    console = Console(width=120)
    load = os.getloadavg()[0]
    table = Table(
        title=f"Ingest without encode, {len(files)} corpus files ({date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.1f})"
    )
    for column in ("store", "workers", "papers", "wall s", "papers/s", "vs 1 worker"):
        table.add_column(column, justify="right")
    for store in args.stores.split(","):
        base = None
        for workers in (int(w) for w in args.workers.split(",")):
            papers, wall = run(store, workers, files)
            rate = papers / wall
            base = base or rate
            row = (store, str(workers), str(papers), f"{wall:.1f}", f"{rate:.1f}", f"{rate / base:.2f}x")
            table.add_row(*row)
            console.print(f"{store} x{workers}: {papers} papers in {wall:.1f} s")
    console.print(table)


if __name__ == "__main__":
    main()
