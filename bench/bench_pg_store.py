"""Benchmark of the PostgreSQL store: per-paper retrieval at 1k vs N chunks, HNSW library search, sizes.

    .venv/bin/python bench/bench_pg_store.py --chunks 1000000
    .venv/bin/python bench/bench_pg_store.py --chunks 100000 --compare-vector-index

Needs PostgreSQL with pgvector (scripts/pgvector.sh) at PMCQA_BENCH_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/postgres); it creates `pmcqa_bench_<size>` databases (kept for reruns
with --reuse, else dropped and rebuilt).

- Library: synthetic 384-d unit vectors with cluster structure (topic centres plus noise; uniform random
  vectors are the worst case for any graph index and unlike text embeddings), 50 chunks per paper,
  bulk-loaded with COPY into the store's own schema (migrations), then one HNSW build (timed), the index
  `PostgresStore` creates (`halfvec` cosine, m=16, ef_construction=64), with `maintenance_work_mem` large
  enough to build it in memory.
- Per-paper retrieval p50/p99: `PostgresStore.get_vectors` + exact dot product + top 8 (what dense retrieval
  does), and `Retriever.retrieve(mode="dense")` with a fixed query vector, at 1k chunks and at N chunks with
  the same working set (20 papers each, queried in turns; target: N/1k <= 1.2), and at the first touch of
  random papers of the N library (what its cache holds then decides).
- Library-wide search at N: `PostgresStore.search_library(q, k=10)` p50/p95 and recall@10 against the exact
  top 10 (numpy over every vector), per `hnsw_ef_search`; an exact sequential scan in PostgreSQL for scale.
- Sizes: heap, B-trees, HNSW index, per million chunks.

Not a test: it prints a rich table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.core.db import close_pools  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.pg_store import HNSW_INDEX, PostgresStore, hnsw_index_sql  # noqa: E402
from pmcqa.index.store import content_hash  # noqa: E402

ADMIN_URL = os.environ.get("PMCQA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CHUNKS_PER_PAPER = 50
MODEL = "bench-clustered"
BODY = " ".join(["the cells were treated with the compound and viability was measured after two days"] * 3)
console = Console(width=140)


class _BulkModel:
    model_name, document_prefix = MODEL, ""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension


class _FixedQuery:
    """Stands in for the query encoder so the timing covers retrieval only (encoding does not scale)."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return np.tile(self.vector, (len(texts), 1))


# --- the synthetic library ----------------------------------------------------------------------------------


class Corpus:
    """Deterministic clustered unit vectors, generated in batches (regenerated, never all held at once)."""

    def __init__(self, n_chunks: int, dimension: int, seed: int = 0) -> None:
        self.n_chunks, self.dimension, self.seed = n_chunks, dimension, seed
        self.n_clusters = max(100, n_chunks // 1000)
        self.centres = np.random.default_rng(seed).standard_normal((self.n_clusters, dimension), np.float32)
        self.batch = 100_000

    def vectors(self, batch_number: int) -> np.ndarray:
        start = batch_number * self.batch
        size = min(self.batch, self.n_chunks - start)
        rng = np.random.default_rng((self.seed, batch_number))
        members = self.centres[rng.integers(0, self.n_clusters, size)]
        vectors = members + rng.standard_normal((size, self.dimension), np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def batches(self) -> range:
        return range((self.n_chunks + self.batch - 1) // self.batch)

    def queries(self, n: int) -> np.ndarray:
        """Questions near a topic: a centre plus fresh noise (not a stored vector)."""
        rng = np.random.default_rng((self.seed, 10**6))
        queries = self.centres[rng.integers(0, self.n_clusters, n)] + rng.standard_normal(
            (n, self.dimension), np.float32
        )
        return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

    def exact_top(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(n, k) chunk positions of the exact top-k by inner product."""
        best_scores = np.full((len(queries), 0), -np.inf, np.float32)
        best_ids = np.zeros((len(queries), 0), np.int64)
        for number in self.batches():
            scores = self.vectors(number) @ queries.T  # (batch, n)
            ids = np.arange(number * self.batch, number * self.batch + len(scores))
            top = np.argpartition(-scores, min(k, len(scores) - 1), axis=0)[:k]
            best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 0).T], axis=1)
            best_ids = np.concatenate([best_ids, ids[top].T], axis=1)
            keep = np.argsort(-best_scores, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, 1)
            best_ids = np.take_along_axis(best_ids, keep, 1)
        return best_ids


def chunk_id(position: int) -> str:
    return f"PMC{10_000_000 + position // CHUNKS_PER_PAPER}-{position % CHUNKS_PER_PAPER}"


def database_url(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


def admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def build_library(
    name: str, corpus: Corpus, reuse: bool, hnsw: bool = True
) -> tuple[Settings, dict[str, float]]:
    """A PostgreSQL library of `corpus`, loaded with COPY; the HNSW index built once at the end (timed)."""
    settings = Settings(data_dir=Path("/tmp") / name, database_url=SecretStr(database_url(name)))
    timings: dict[str, float] = {}
    if reuse:
        try:
            with PostgresStore(settings) as store:
                if store.count_chunks() == corpus.n_chunks and not store.integrity_check():
                    return settings, timings
        except Exception as exc:  # absent or broken: rebuilt below
            console.print(f"[dim]{name}: rebuilding ({exc})[/dim]")
    close_pools()
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{name}"')
    store = PostgresStore(settings)  # runs the migrations
    texts = [f"{i} {BODY}" for i in range(CHUNKS_PER_PAPER)]
    starts = [sum(len(t) + 2 for t in texts[:i]) for i in range(CHUNKS_PER_PAPER)]
    started = time.perf_counter()
    with store._transaction() as conn:
        store._record_model(conn, _BulkModel(corpus.dimension))  # type: ignore[arg-type]
    for number in corpus.batches():
        vectors = corpus.vectors(number)
        first = number * corpus.batch
        with store._transaction() as conn, conn.cursor() as cursor:
            with cursor.copy(
                "COPY papers (paper_id, status, n_chunks, embedding_model, record_json, created_at,"
                " updated_at) FROM STDIN"
            ) as copy:
                for paper in range(first // CHUNKS_PER_PAPER, (first + len(vectors)) // CHUNKS_PER_PAPER):
                    paper_id = f"PMC{10_000_000 + paper}"
                    text = "\n\n".join(f"{i} {BODY}" for i in range(CHUNKS_PER_PAPER))
                    record = json.dumps({"paper_id": paper_id, "title": f"Synthetic {paper}", "text": text})
                    copy.write_row((paper_id, "ingested", CHUNKS_PER_PAPER, MODEL, record, 0.0, 0.0))
            with cursor.copy(
                "COPY chunks (paper_id, ordinal, chunk_id, content_hash, chunk_json, embedding)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "int4", "text", "bytea", "text", "vector"])
                for offset, vector in enumerate(vectors):
                    position = first + offset
                    paper_id, ordinal = f"PMC{10_000_000 + position // CHUNKS_PER_PAPER}", position % 50
                    text, start = texts[ordinal], starts[ordinal]
                    chunk = {
                        "chunk_id": chunk_id(position),
                        "paper_id": paper_id,
                        "ordinal": ordinal,
                        "section_path": ["Results"],
                        "kind": "paragraph",
                        "text": text,
                        "start": start,
                        "end": start + len(text),
                    }
                    digest = content_hash(MODEL, "", chunk_id(position))
                    copy.write_row((paper_id, ordinal, chunk_id(position), digest, json.dumps(chunk), vector))
        console.print(f"[dim]{name}: loaded {first + len(vectors):,} chunks[/dim]")
    timings["load_s"] = time.perf_counter() - started
    with store._connection() as conn:
        conn.execute("VACUUM ANALYZE chunks")
        conn.execute("VACUUM ANALYZE papers")
    if hnsw:
        create = hnsw_index_sql(corpus.dimension)
        timings["hnsw_build_s"] = build_hnsw(store, create, f"DROP INDEX {HNSW_INDEX}")
    else:  # per-paper retrieval never reads the HNSW index: --per-paper-only skips the long build
        with store._connection() as conn:
            conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
    store.close()
    return settings, timings


def build_hnsw(store: PostgresStore, create_sql: str, drop_sql: str) -> float:
    """Build an HNSW index in memory (maintenance_work_mem), on two cores; returns the seconds it took."""
    with store._transaction() as conn:
        conn.execute(drop_sql.replace("DROP INDEX", "DROP INDEX IF EXISTS"))
    started = time.perf_counter()
    with store._transaction() as conn:
        conn.execute("SET LOCAL maintenance_work_mem = '3GB'")
        conn.execute("SET LOCAL max_parallel_maintenance_workers = 1")  # the leader + 1 = the 2 cores here
        conn.execute(create_sql)
    return time.perf_counter() - started


# --- measurements -------------------------------------------------------------------------------------------


def per_paper_latency(libraries: dict[str, Settings], queries: int, dimension: int) -> dict[str, list[float]]:
    """Seconds per per-paper dense retrieval, keyed "<library> <set> <kind>".

    Set "same20": `queries` questions cycling over 20 random papers of each library (the 1k library has 20),
    so that both libraries are asked with the same working set: what differs is the library's size only.
    The libraries are queried in turns, so that the load of a shared machine weighs on both alike.
    Set "first": the first question to each of `queries` distinct random papers (their pages may not be
    cached yet; the 1k library is skipped, it has only 20 papers). Kinds: "store" = `get_vectors` + dot +
    top 8 (what dense retrieval does), "retrieve" = `Retriever.retrieve(mode="dense")`, fixed query vector.
    """
    from pmcqa.index.retrieval import Retriever

    rng = np.random.default_rng(1)
    q = rng.standard_normal(dimension).astype(np.float32)
    q /= np.linalg.norm(q)
    stores = {name: PostgresStore(settings) for name, settings in libraries.items()}
    retrievers = {name: Retriever(store, _FixedQuery(q), libraries[name]) for name, store in stores.items()}
    all_ids = {name: store.paper_ids() for name, store in stores.items()}
    same = {
        name: list(rng.choice(ids, size=min(20, len(ids)), replace=False)) for name, ids in all_ids.items()
    }
    out: dict[str, list[float]] = {}

    def ask(name: str, paper_id: str, key: str) -> None:
        started = time.perf_counter()
        chunk_ids, matrix = stores[name].get_vectors(paper_id)
        scores = matrix @ q
        top = np.argpartition(-scores, 8)[:8]
        [chunk_ids[i] for i in top[np.argsort(-scores[top])]]
        middle = time.perf_counter()
        retrievers[name].retrieve(paper_id, "which compound was used?", mode="dense")
        ended = time.perf_counter()
        out.setdefault(f"{name} {key} store", []).append(middle - started)
        out.setdefault(f"{name} {key} retrieve", []).append(ended - middle)

    for name in stores:  # warm-up: prepared statements, pool connections, the working set
        for paper_id in same[name]:
            ask(name, paper_id, "warm-up")
    for i in range(queries):
        for name in stores:
            ask(name, same[name][i % len(same[name])], "same20")
    for name, ids in all_ids.items():
        if len(ids) > queries:
            for paper_id in rng.choice(ids, size=queries, replace=False):
                ask(name, str(paper_id), "first")
    for store in stores.values():
        store.close()
    return out


def library_search(settings: Settings, queries: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """p50/p95 ms and recall@10 of `PostgresStore.search_library` against the exact top 10."""
    latencies, recalls = [], []
    with PostgresStore(settings) as store:
        for query in queries[:10]:
            store.search_library(query, k=10)  # warm
        for query, truth in zip(queries, exact, strict=True):
            started = time.perf_counter()
            hits = store.search_library(query, k=10)
            latencies.append(time.perf_counter() - started)
            wanted = {chunk_id(int(position)) for position in truth}
            recalls.append(len(wanted & {chunk.chunk_id for chunk, _ in hits}) / len(wanted))
    return {
        "p50_ms": ms(latencies, 50),
        "p95_ms": ms(latencies, 95),
        "recall": statistics.fmean(recalls),
    }


def sql_search(
    settings: Settings, sql: str, queries: np.ndarray, exact: np.ndarray, ef: int
) -> dict[str, float]:
    """Like `library_search` for another index (its ORDER BY expression in `sql`), through raw SQL."""
    latencies, recalls = [], []
    with PostgresStore(settings) as store, store._connection() as conn:
        conn.execute(f"SET hnsw.ef_search = {ef}")
        for query, truth in zip(queries, exact, strict=True):
            started = time.perf_counter()
            rows = conn.execute(sql, {"q": query, "k": 10}).fetchall()
            latencies.append(time.perf_counter() - started)
            wanted = {chunk_id(int(position)) for position in truth}
            recalls.append(len(wanted & {json.loads(row[0])["chunk_id"] for row in rows}) / len(wanted))
        conn.execute(f"SET hnsw.ef_search = {settings.hnsw_ef_search}")
    return {"p50_ms": ms(latencies, 50), "p95_ms": ms(latencies, 95), "recall": statistics.fmean(recalls)}


def exact_scan_ms(settings: Settings, queries: np.ndarray, dimension: int) -> float:
    """p50 of an exact top 10 by a sequential scan in PostgreSQL (no index)."""
    times = []
    with PostgresStore(settings) as store, store._transaction() as conn:
        conn.execute("SET LOCAL enable_indexscan = off")
        for query in queries:
            started = time.perf_counter()
            conn.execute("SELECT id FROM chunks ORDER BY embedding <#> %s LIMIT 10", (query,)).fetchall()
            times.append(time.perf_counter() - started)
    return ms(times, 50)


def sizes(settings: Settings) -> dict[str, int]:
    with PostgresStore(settings) as store, store._connection() as conn:
        row = conn.execute(
            "SELECT pg_relation_size('chunks'), pg_total_relation_size('chunks') - pg_relation_size('chunks')"
            " - pg_indexes_size('chunks'), pg_relation_size('chunks_paper_id_ordinal_key'),"
            " pg_indexes_size('chunks'), pg_relation_size(%s), pg_total_relation_size('papers'),"
            " pg_database_size(current_database())",
            (HNSW_INDEX,),
        ).fetchone()
    keys = ("heap", "toast", "btree_paper_ordinal", "all_indexes", "hnsw", "papers", "database")
    return dict(zip(keys, (int(v) for v in row), strict=True))  # type: ignore[union-attr]


def ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def gb_per_million(size: int, n_chunks: int) -> str:
    return f"{size / 2**30 * 1e6 / n_chunks:.2f} GB"


# --- report -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=1_000_000, help="Chunks in the large library.")
    parser.add_argument("--small", type=int, default=1_000, help="Chunks in the small library.")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="Per-paper queries per library.")
    parser.add_argument("--search-queries", type=int, default=200, help="Library-wide queries.")
    parser.add_argument("--ef-search", type=int, nargs="*", default=[40, 100, 200, 400])
    parser.add_argument(
        "--compare-vector-index", action="store_true", help="Also build a full-precision HNSW."
    )
    parser.add_argument(
        "--reuse", action="store_true", help="Keep a database that already holds the library."
    )
    parser.add_argument("--per-paper-only", action="store_true", help="Skip library search and sizes.")
    parser.add_argument("--drop", action="store_true", help="Drop the bench databases at the end.")
    args = parser.parse_args()
    if args.chunks % CHUNKS_PER_PAPER or args.small % CHUNKS_PER_PAPER:
        parser.error(f"--chunks and --small must be multiples of {CHUNKS_PER_PAPER}")

    table = Table(title=f"PostgreSQL store benchmark ({args.chunks:,} chunks, {args.dimension}-d)")
    for column in ("measure", "value", "target"):
        table.add_column(column)

    small_corpus = Corpus(args.small, args.dimension, seed=1)
    hnsw = not args.per_paper_only
    small, _ = build_library(f"pmcqa_bench_{args.small}", small_corpus, args.reuse, hnsw)
    large_corpus = Corpus(args.chunks, args.dimension)
    large, timings = build_library(f"pmcqa_bench_{args.chunks}", large_corpus, args.reuse, hnsw)
    if timings:
        table.add_row("bulk load (COPY, binary)", f"{timings['load_s']:.0f} s", "")
        if "hnsw_build_s" in timings:
            build_s = timings["hnsw_build_s"]
            table.add_row("HNSW build (halfvec, m=16, ef_construction=64, 2 cores)", f"{build_s:.0f} s", "")

    latency = per_paper_latency({"small": small, "large": large}, args.queries, args.dimension)
    for key, label in (("store", "get_vectors + dot"), ("retrieve", "Retriever.retrieve(dense)")):
        a, b = ms(latency[f"small same20 {key}"], 50), ms(latency[f"large same20 {key}"], 50)
        a99, b99 = ms(latency[f"small same20 {key}"], 99), ms(latency[f"large same20 {key}"], 99)
        table.add_row(
            f"per-paper {label} p50 (p99), 20 papers each, {args.small:,} / {args.chunks:,}",
            f"{a:.3f} ({a99:.3f}) / {b:.3f} ({b99:.3f}) ms → {b / a:.2f}×",
            "≤ 1.2×",
        )
        first = latency[f"large first {key}"]
        table.add_row(
            f"per-paper {label} p50 (p99), first touch of {len(first):,} papers of {args.chunks:,}",
            f"{ms(first, 50):.3f} ({ms(first, 99):.3f}) ms",
            "",
        )

    if args.per_paper_only:
        console.print(table)
        return
    queries = large_corpus.queries(args.search_queries)
    started = time.perf_counter()
    exact = large_corpus.exact_top(queries, 10)
    console.print(f"[dim]exact top-10 in numpy: {time.perf_counter() - started:.1f} s[/dim]")
    for ef in args.ef_search:
        result = library_search(large.model_copy(update={"hnsw_ef_search": ef}), queries, exact)
        table.add_row(
            f"library search (halfvec HNSW) ef_search={ef}: p50 / p95, recall@10",
            f"{result['p50_ms']:.2f} / {result['p95_ms']:.2f} ms, {result['recall']:.3f}",
            "",
        )
    table.add_row(
        "library search, exact sequential scan in PostgreSQL p50",
        f"{exact_scan_ms(large, queries[:5], args.dimension):.0f} ms",
        "",
    )
    size = sizes(large)
    n = args.chunks
    table.add_row(
        "disk: chunks heap (+TOAST) per 1M chunks", gb_per_million(size["heap"] + size["toast"], n), ""
    )
    table.add_row(
        "disk: B-tree (paper_id, ordinal) per 1M", gb_per_million(size["btree_paper_ordinal"], n), ""
    )
    table.add_row(
        "disk: HNSW halfvec index per 1M (memory to search fast)", gb_per_million(size["hnsw"], n), ""
    )
    table.add_row("disk: whole database per 1M", gb_per_million(size["database"], n), "")

    if args.compare_vector_index:
        d = args.dimension
        with PostgresStore(large) as store:
            build_s = build_hnsw(
                store,
                "CREATE INDEX bench_hnsw_full ON chunks USING hnsw"
                f" ((embedding::vector({d})) vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
                "DROP INDEX bench_hnsw_full",
            )
            with store._connection() as conn:
                row = conn.execute("SELECT pg_relation_size('bench_hnsw_full')").fetchone()
                full_size = int(row[0]) if row else 0
        full_sql = (
            "SELECT chunk_json FROM chunks"
            f" ORDER BY embedding::vector({d}) <=> %(q)s::vector({d}) LIMIT %(k)s"
        )
        for ef in args.ef_search:
            result = sql_search(large, full_sql, queries, exact, ef)
            table.add_row(
                f"library search (vector HNSW) ef_search={ef}: p50 / p95, recall@10",
                f"{result['p50_ms']:.2f} / {result['p95_ms']:.2f} ms, {result['recall']:.3f}",
                "",
            )
        table.add_row(
            "vector (float32) HNSW: build, size per 1M",
            f"{build_s:.0f} s, {gb_per_million(full_size, n)}",
            "",
        )
        with PostgresStore(large) as store, store._connection() as conn:
            conn.execute("DROP INDEX bench_hnsw_full")

    console.print(table)
    close_pools()
    if args.drop:
        for name in (f"pmcqa_bench_{args.small}", f"pmcqa_bench_{args.chunks}"):
            admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
