"""What only the PostgreSQL store does: per-paper reads through the (paper_id, ordinal) B-tree with work that
does not grow with the library, library search through the HNSW index, writers of one paper on several hosts,
and the FAISS fallback where pgvector is missing. (The contract shared with SQLite: test_store.py.)"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from pmcqa.core import db
from pmcqa.core.settings import Settings

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")

from pmcqa.index.pg_store import HNSW_INDEX, PostgresStore, hnsw_search_sql  # noqa: E402

FakeEmbedder = Any


@pytest.fixture
def pg_store(pg_settings: Settings) -> Iterator[PostgresStore]:
    with PostgresStore(pg_settings) as store:
        yield store


def _plan(store: PostgresStore, sql: str, params: Any) -> dict[str, Any]:
    with store._connection() as conn:
        row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    return dict(row[0][0]["Plan"])


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a plan tree."""
    return [plan] + [node for child in plan.get("Plans", []) for node in _nodes(child)]


def _blocks(plan: dict[str, Any]) -> int:
    """Pages the statement touched (the top node's counts include its children's)."""
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def _grow(
    store: PostgresStore, fake: FakeEmbedder, paper: Callable[..., Any], texts: Callable[..., Any]
) -> None:
    """Add 300 papers of 20 chunks (precomputed vectors, one transaction per 100 papers)."""
    rng = np.random.default_rng(0)
    for first in range(0, 300, 100):
        batch = []
        for n in range(first, first + 100):
            record, chunks = paper(f"PMCX{n}", texts(f"PMCX{n}", 20))
            vectors = rng.standard_normal((20, 16)).astype(np.float32)
            batch.append((record, chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
        store.put_papers(batch, fake)
    with store._connection() as conn:
        conn.execute("ANALYZE chunks")


def test_per_paper_reads_use_the_paper_index_and_do_not_grow_with_the_library(
    pg_store: PostgresStore, fake: FakeEmbedder, paper: Callable[..., Any], texts: Callable[..., Any]
) -> None:
    pg_store.put_paper(*paper("PMC1", texts("PMC1", 20)), fake)
    small = _blocks(_plan(pg_store, pg_store.paper_vectors_sql, ("PMC1",)))
    _grow(pg_store, fake, paper, texts)
    assert pg_store.count_chunks() == 6_020
    plan = _plan(pg_store, pg_store.paper_vectors_sql, ("PMC1",))
    nodes = _nodes(plan)
    assert "chunks_paper_id_ordinal_key" in {node.get("Index Name") for node in nodes}, plan
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes), plan
    large = _blocks(plan)
    # One more B-tree level at most: the pages read are the paper's own, whatever the library holds.
    assert large <= small + 2, (small, large)
    chunk_ids, matrix = pg_store.get_vectors("PMC1")
    assert len(chunk_ids) == 20 and matrix.shape == (20, 16) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[3], fake.vector(texts("PMC1", 20)[3]))  # float32 round trip, exact


def test_library_search_goes_through_the_hnsw_index(
    pg_settings: Settings, fake: FakeEmbedder, paper: Callable[..., Any], texts: Callable[..., Any]
) -> None:
    store = PostgresStore(pg_settings.model_copy(update={"hnsw_ef_search": 20}))
    try:
        assert "HNSW" in store.library_search and store.pgvector
        store.put_paper(*paper("PMC1", texts("PMC1", 20)), fake)  # the first write creates the index
        _grow(store, fake, paper, texts)
        query = fake.vector(texts("PMC1", 20)[7])
        plan = _plan(store, hnsw_search_sql(16), {"q": query, "k": 10})
        assert HNSW_INDEX in {node.get("Index Name") for node in _nodes(plan)}, plan
        hits = store.search_library(query, k=10)
        assert hits[0][0].chunk_id == store.get_chunks("PMC1")[7].chunk_id
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)  # the exact inner product, not the halfvec distance
        assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
        # k above ef_search: the search widens its candidate list for this query (else at most 20 hits).
        assert len(store.search_library(query, k=60)) == 60
        with store._connection() as conn:
            assert conn.execute("SHOW hnsw.ef_search").fetchone() == ("20",)
        assert store.integrity_check() == []
    finally:
        store.close()


def test_stores_with_other_ef_search_share_the_pool_without_mixing_it(pg_settings: Settings) -> None:
    wide = PostgresStore(pg_settings.model_copy(update={"hnsw_ef_search": 300}))
    narrow = PostgresStore(pg_settings.model_copy(update={"hnsw_ef_search": 30}))
    for store, expected in ((wide, "300"), (narrow, "30"), (wide, "300")):
        with store._connection() as conn:
            assert conn.execute("SHOW hnsw.ef_search").fetchone() == (expected,)


def test_hosts_storing_one_paper_at_once_queue_up(
    pg_settings: Settings, fake: FakeEmbedder, paper: Callable[..., Any]
) -> None:
    """Two workers re-ingesting one paper: no key violation, and the paper is one whole version."""
    stores = [PostgresStore(pg_settings) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def write(store: PostgresStore, version: int) -> None:
        try:
            start.wait()
            for round_ in range(5):
                texts = [f"version {version}.{round_} part {i}" for i in range(3 + version)]
                store.put_paper(*paper("PMC1", texts, pmid="55"), fake)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, v)) for v, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    chunks = stores[0].get_chunks("PMC1")
    assert len({c.text.split(" part ")[0] for c in chunks}) == 1  # one version, whole
    assert stores[0].integrity_check() == [] and stores[0].resolve_alias("55") == "PMC1"
    for store in stores:
        store.close()


def test_without_pgvector_library_search_falls_back_to_a_faiss_file(
    settings: Settings,
    scratch_postgres_database: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[..., Any],
) -> None:
    # The server has pgvector; the database is set up as where it has not (or the role may not create it).
    monkeypatch.setattr(db, "pgvector_usable", lambda conn: False)
    url = scratch_postgres_database("nopgvector")
    no_pgvector = settings.model_copy(update={"database_url": SecretStr(url)})
    with caplog.at_level(logging.WARNING, logger="pmcqa.index.pg_store"):
        store = PostgresStore(no_pgvector, library_refresh_s=3600)
    try:
        assert not store.pgvector and store.library_index is not None
        assert "FAISS file" in store.library_search and "pgvector is not installed" in store.library_search
        assert "falls back" in caplog.text and "scripts/pgvector.sh" in caplog.text
        with store._connection() as conn:
            column = conn.execute(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'chunks' AND column_name = 'embedding'"
            ).fetchone()
        assert column == ("bytea",)

        store.put_paper(*paper("PMC1", texts("PMC1", 5)), fake)  # the first write builds the FAISS file
        store.put_paper(*paper("PMC2", texts("PMC2", 5)), fake)  # searched exactly, newer than the file
        assert store.library_index.lag() == 1
        for target in (texts("PMC1", 5)[3], texts("PMC2", 5)[1]):
            assert store.search_library(fake.vector(target), k=1)[0][0].text == target
        assert store.library_index.rebuild() == 10 and store.library_index.lag() == 0
        store.delete_paper("PMC2")  # still in the file: dropped when hydrated
        hits = store.search_library(fake.vector(texts("PMC2", 5)[1]), k=5)
        assert len(hits) == 5 and {c.paper_id for c, _ in hits} == {"PMC1"}
        np.testing.assert_array_equal(store.get_vectors("PMC1")[1][2], fake.vector(texts("PMC1", 5)[2]))
        assert store.integrity_check() == []
    finally:
        store.close()
