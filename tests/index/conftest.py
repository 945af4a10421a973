"""Fixtures of the index tests: one real embedder per session, a counting fake, synthetic papers, and the
store backends: `open_store` / `store_settings` run a test on SQLite and on PostgreSQL (a fresh database per
session, emptied before each test; skipped with the reason where PostgreSQL is unreachable)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder
from pmcqa.index.models import Chunk, ChunkingParams, PaperRecord
from pmcqa.index.store import PaperStore, Store
from pmcqa.index.store import open_store as open_backend_store


class FakeEmbedder:
    """Deterministic hash-seeded unit vectors; counts every text it encodes."""

    def __init__(
        self, model_name: str = "fake-model", dimension: int = 16, document_prefix: str = ""
    ) -> None:
        self.model_name = model_name
        self.dimension = dimension
        self.document_prefix = document_prefix
        self.encoded: list[str] = []
        self.calls = 0

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(f"{self.model_name}|{text}".encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.encoded.extend(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.vector(self.document_prefix + t) for t in texts])

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vector(t) for t in texts])


def make_paper(
    paper_id: str, texts: list[str], *, pmid: str | None = None, doi: str | None = None, title: str = ""
) -> tuple[PaperRecord, list[Chunk]]:
    """A record whose canonical text is the chunk texts joined by blank lines, with exact spans."""
    chunks: list[Chunk] = []
    offset = 0
    for ordinal, text in enumerate(texts):
        chunks.append(
            Chunk(
                chunk_id=f"{paper_id}:{ordinal}:{hashlib.sha1(text.encode()).hexdigest()[:8]}",
                paper_id=paper_id,
                ordinal=ordinal,
                section_path=["Results", f"Part {ordinal // 3}"],
                kind="paragraph",
                text=text,
                start=offset,
                end=offset + len(text),
                ref_ids=[f"B{ordinal}"],
            )
        )
        offset += len(text) + 2
    record = PaperRecord(
        paper_id=paper_id,
        pmid=pmid,
        doi=doi,
        title=title or f"Synthetic paper {paper_id}",
        journal="J Synth",
        year="2024",
        text="\n\n".join(texts),
        chunking=ChunkingParams(version=1, tokenizer="fake", max_tokens=256, min_tokens=64),
        source="test",
    )
    return record, chunks


def paper_texts(paper_id: str, n: int) -> list[str]:
    return [f"{paper_id} paragraph {i}: cells were counted in sample {i * 7 % 13}." for i in range(n)]


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """The real default model, loaded once per session (loading takes seconds)."""
    return Embedder(Settings(data_dir=tmp_path_factory.mktemp("embedder")))


@pytest.fixture
def fake() -> FakeEmbedder:
    return FakeEmbedder()


def empty_postgres_library(settings: Settings) -> None:
    """Remove every paper, the recorded model and the HNSW index: the library a new database starts as."""
    from pmcqa.core.db import connection_pool, ensure_postgres_schema

    ensure_postgres_schema(settings)
    with connection_pool(settings).connection() as conn, conn.transaction():
        conn.execute("TRUNCATE papers, chunks, aliases, ingest_status, idmap RESTART IDENTITY")
        conn.execute("DELETE FROM meta WHERE key NOT IN ('generation', 'schema_version', 'vector_storage')")
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'generation'")
        conn.execute("DROP INDEX IF EXISTS chunks_embedding_hnsw")


@pytest.fixture
def pg_settings(settings: Settings, postgres_database: str) -> Settings:
    """The test's settings on the session's PostgreSQL database, emptied (PostgreSQL-only tests)."""
    pg = settings.model_copy(update={"database_url": SecretStr(postgres_database)})
    empty_postgres_library(pg)
    return pg


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on each backend: SQLite under data_dir, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return settings
    return request.getfixturevalue("pg_settings")


def _store_factory(opened: list[PaperStore], make: Callable[..., PaperStore]) -> Callable[..., PaperStore]:
    def factory(**kwargs: object) -> PaperStore:
        store = make(**kwargs)
        opened.append(store)
        return store

    return factory


@pytest.fixture
def open_store(store_settings: Settings) -> Iterator[Callable[..., PaperStore]]:
    """Open stores of the test's backend (SQLite, PostgreSQL); all of them are closed at teardown."""
    opened: list[PaperStore] = []
    yield _store_factory(opened, lambda **kwargs: open_backend_store(store_settings, **kwargs))
    for store in opened:
        store.close()


@pytest.fixture
def open_sqlite_store(settings: Settings) -> Iterator[Callable[..., Store]]:
    """Open SQLite Stores on the test's data dir (tests of the FAISS file); closed at teardown."""
    opened: list[PaperStore] = []
    yield _store_factory(opened, lambda **kwargs: Store(settings, **kwargs))  # type: ignore[arg-type]
    for store in opened:
        store.close()


@pytest.fixture
def index_dir(settings: Settings) -> Path:
    return settings.index_dir


# tests/ is not a package, so test modules cannot import this conftest: the helpers travel as fixtures.
@pytest.fixture
def make_fake() -> Callable[..., FakeEmbedder]:
    return FakeEmbedder


@pytest.fixture
def paper() -> Callable[..., tuple[PaperRecord, list[Chunk]]]:
    return make_paper


@pytest.fixture
def texts() -> Callable[[str, int], list[str]]:
    return paper_texts
