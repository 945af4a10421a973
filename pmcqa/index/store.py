"""The paper store: its contract (`PaperStore`), the parts both backends share, and the SQLite backend.

`open_store(settings)` returns the backend the settings name: `Store` (SQLite + a FAISS file, the embedded
default) or, when `PMCQA_DATABASE_URL` is set, `index.pg_store.PostgresStore` (PostgreSQL + pgvector, for a
library shared by many hosts). Both keep the same promises, tested by the same contract tests:

- Writes take the encoder that computes their vectors (`put_papers(items, encoder)`, `reindex(encoder)`);
  the store holds no model. The first write records the encoder's model in `meta`; a later write with another
  model is refused (`EmbeddingModelMismatch`), and `check_model(encoder)` lets a process fail at start.
- A paper is written in one transaction (record, chunks, vectors, aliases, status); vectors are computed
  before the transaction opens, so a killed process leaves the paper either whole or absent.
- One paper, one record: a paper written under its PMCID replaces, in the same transaction, a copy stored
  under its DOI (a file without PMCID), whose DOI then names the PMCID's record (`supersede_doi_copy`).
- Per-paper reads go through an index on `(paper_id, ordinal)`: their cost is independent of the library size.
- Schema versions are alembic revisions (`core.db`): opening migrates an older schema, refuses a newer one.

SQLite layout under `settings.index_dir`:

- `pmcqa.sqlite3` (WAL): papers, chunks with their float32 vectors (one row per chunk), id aliases, ingest
  status and a `meta` table naming the embedding model. A reader never holds the library's vectors in memory.
- `library.faiss`: every chunk vector for library-wide search; its lifecycle (build from a snapshot of this
  store, atomic replace, memory-mapped reload, lag and refresh) is `index.library_index.LibraryIndex`'s.
  Library search here merges its hits with an exact search of the chunks newer than the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from pmcqa.core.db import ensure_sqlite_schema, postgres_url, require_existing, retry_when_locked
from pmcqa.core.ids import alias_key, canonical_pmcid
from pmcqa.core.settings import Settings
from pmcqa.core.status import IngestState, Status
from pmcqa.index.library_index import LibraryIndex, VectorSnapshot
from pmcqa.index.models import Chunk, PaperRecord

DB_NAME = "pmcqa.sqlite3"


# Summary columns of `papers`, enough to rebuild a text-less PaperRecord for listings.
SUMMARY_COLUMNS = (
    "paper_id",
    "pmid",
    "doi",
    "title",
    "journal",
    "year",
    "license",
    "article_type",
    "status",
    "source",
)


class DocumentEncoder(Protocol):
    """What a write needs from an embedder (index.embedding.Embedder, or a test double)."""

    model_name: str
    dimension: int
    document_prefix: str

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...


class StoreError(RuntimeError):
    pass


class ReindexUnfinished(StoreError):
    """A `pmcqa reindex` stopped part way: the library holds vectors of two models, so nothing but the
    reindex itself may use it."""

    def __init__(self, target: str) -> None:
        self.target = target
        model = target.partition("@")[0]
        super().__init__(
            f"a `pmcqa reindex` to embedding model {target!r} did not finish, so the library holds vectors "
            f"of two models; run `pmcqa reindex` again with PMCQA_EMBEDDING_MODEL={model!r} to finish it "
            "(papers already re-embedded are kept)"
        )


class EmbeddingModelMismatch(StoreError):
    """The index was built with another embedding model than the configured one."""

    def __init__(self, stored: str, stored_dim: int, configured: str, configured_dim: int) -> None:
        self.stored, self.configured = stored, configured
        # A backend whose vectors differ is recorded as `model@backend` (index.embedding.embedding_identity).
        model, _, backend = stored.partition("@")
        if not backend and "@" in configured:
            backend = "torch"
        going_back = f"PMCQA_EMBEDDING_MODEL back to {model!r}" + (
            f" with PMCQA_EMBEDDING_BACKEND={backend}" if backend else ""
        )
        super().__init__(
            f"the index was built with embedding model {stored!r} ({stored_dim}-d) but the configured model "
            f"is {configured!r} ({configured_dim}-d); run `pmcqa reindex` to re-embed every paper with the "
            f"configured model (or set {going_back})"
        )


@dataclass(frozen=True)
class IngestStatus:
    paper_id: str
    status: Status
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class EmbeddingInfo:
    """What the meta table says the stored vectors are."""

    model_name: str
    dimension: int
    document_prefix: str


def content_hash(model_name: str, document_prefix: str, text: str) -> bytes:
    """Key of a chunk's vector: same model + prefix + text means the same vector, so it is not re-embedded."""
    return hashlib.sha256(f"{model_name}\x00{document_prefix}\x00{text}".encode()).digest()


def _now() -> float:
    return time.time()


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


class PaperStore(Protocol):
    """What every store backend provides (`Store`: SQLite; `index.pg_store.PostgresStore`: PostgreSQL).

    Thread-safe; any number of processes may read while others write. Reads need no model.
    """

    library_search: str  # how library-wide search works here, in words
    library_index: LibraryIndex | None  # the FAISS file, where library search uses one

    def close(self) -> None: ...
    def __enter__(self) -> PaperStore: ...
    def __exit__(self, *exc: object) -> None: ...

    # writes (one transaction each; vectors computed before it opens)
    def put_paper(
        self,
        record: PaperRecord,
        chunks: Sequence[Chunk],
        encoder: DocumentEncoder,
        vectors: np.ndarray | None = None,
    ) -> None: ...
    def put_papers(
        self,
        items: Iterable[tuple[PaperRecord, Sequence[Chunk], np.ndarray | None]],
        encoder: DocumentEncoder,
    ) -> None: ...
    def delete_paper(self, paper_id: str) -> bool: ...
    def set_status(self, paper_id: str, status: IngestState, reason: str | None = None) -> None: ...
    def reindex(
        self, encoder: DocumentEncoder, progress: Callable[[int, int], None] | None = None
    ) -> int: ...

    # the embedding model
    def embedding_info(self) -> EmbeddingInfo | None: ...
    def check_model(self, encoder: DocumentEncoder) -> None: ...

    # reads
    def get_status(self, paper_id: str) -> IngestStatus | None: ...
    def get_paper(self, paper_id: str) -> PaperRecord | None: ...
    def get_chunks(self, paper_id: str) -> list[Chunk]: ...
    def get_vectors(self, paper_id: str) -> tuple[list[str], np.ndarray]: ...
    def count_papers(self) -> int: ...
    def count_chunks(self) -> int: ...
    def last_update(self) -> datetime | None: ...
    def list_papers(self, offset: int = 0, limit: int = 50) -> list[PaperRecord]: ...
    def paper_ids(self) -> list[str]: ...
    def resolve_alias(self, pmid_or_doi: str) -> str | None: ...
    def integrity_check(self) -> list[str]: ...
    def search_library(
        self, query_vector: np.ndarray, k: int = 10, paper_ids: Sequence[str] | None = None
    ) -> list[tuple[Chunk, float]]: ...


def paper_row(
    record: PaperRecord, n_chunks: int, model_name: str, created: float, now: float
) -> tuple[object, ...]:
    """The `papers` row of a record, in the column order both stores insert (SQLite and PostgreSQL)."""
    return (
        record.paper_id,
        record.pmid,
        record.doi,
        record.title,
        record.journal,
        record.year,
        record.license,
        record.article_type,
        record.status,
        record.source,
        n_chunks,
        model_name,
        record.model_dump_json(),
        created,
        now,
    )


def open_store(settings: Settings, **options: float) -> PaperStore:
    """The store `settings` name: PostgreSQL when `database_url` is set, else SQLite under `index_dir`.

    `options` are the FAISS file's tuning (`library_refresh_s`, `library_tail_max`) and SQLite's `mmap_bytes`;
    a backend ignores what it does not use.
    """
    if postgres_url(settings) is not None:
        from pmcqa.index.pg_store import PostgresStore  # deferred: psycopg only when a database URL is set

        return PostgresStore(settings, **options)
    return Store(settings, **options)


def require_library(settings: Settings) -> None:
    """For commands that only read the library (ask, search, papers): `core.db.LibraryNotFound` where it is
    not there (no embedded database file; a PostgreSQL database without pmcqa's tables), before a model loads
    or `open_store` creates an empty one."""
    require_existing(settings, Path(settings.index_dir) / DB_NAME)


class StoreBase:
    """What both backends share: checking the model, preparing vectors before a write, exact per-paper search,
    and library search through a FAISS file plus an exact search of the chunks newer than it.

    A backend provides the SQL: `embedding_info`, `_cached_vectors`, `_commit_papers`, `get_chunks`,
    `get_vectors`, and, where it searches with the FAISS file, `_search_tail` and `_hydrate`.
    """

    library_index: LibraryIndex | None = None
    library_search = "FAISS file (IndexFlatIP, exact) + exact search of chunks newer than the file"
    # Set once this store commits a write: close() then brings the FAISS file up to date.
    _changed_library = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Bring the FAISS file (if any) up to date when this store wrote to the library."""
        if self._changed_library and self.library_index is not None:
            with contextlib.suppress(Exception):
                if self.library_index.lag() > 0:
                    self.library_index.rebuild()
        if self.library_index is not None:
            self.library_index.close()

    # --- the embedding model ---------------------------------------------------------------------------

    def embedding_info(self) -> EmbeddingInfo | None:
        raise NotImplementedError

    def _meta(self, key: str, conn: Any = None) -> str | None:
        raise NotImplementedError

    def _add_meta(self, key: str, value: str) -> None:
        """Record `key` unless some process already has (the first writer wins)."""
        raise NotImplementedError

    def library_id(self) -> str:
        """This database's random identity (made on first use): a FAISS file built from another database
        (one recreated, or copied in) is told apart by it."""
        found = self._meta("library_id")
        if found is None:
            self._add_meta("library_id", uuid.uuid4().hex)
            found = self._meta("library_id")
        return str(found)

    def _refuse_while_reindexing(self, conn: Any = None) -> None:
        """`ReindexUnfinished` while a reindex has not finished (read inside a write's transaction with
        `conn`: a writer that checked before the reindex began must not commit old-model vectors)."""
        target = self._meta("reindex_target", conn)
        if target is not None:
            raise ReindexUnfinished(target)

    def check_model(self, encoder: DocumentEncoder) -> None:
        """Raise `EmbeddingModelMismatch` unless the stored vectors come from `encoder`'s model (or there are
        none yet), `ReindexUnfinished` while a reindex has not finished. Writes check this themselves; a
        process that will write or search calls it once at start."""
        self._refuse_while_reindexing()
        check_same_model(self.embedding_info(), encoder)

    # --- writes -----------------------------------------------------------------------------------------

    def put_paper(
        self,
        record: PaperRecord,
        chunks: Sequence[Chunk],
        encoder: DocumentEncoder,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Store (or replace) a paper with its chunks and their vectors by `encoder`, atomically."""
        self.put_papers([(record, chunks, vectors)], encoder)

    def put_papers(
        self,
        items: Iterable[tuple[PaperRecord, Sequence[Chunk], np.ndarray | None]],
        encoder: DocumentEncoder,
    ) -> None:
        """Store several papers in one transaction; vectors are computed (or reused) before it opens.

        `vectors`, when given, must come from `encoder`'s model (bulk loads, benchmarks). `encoder` must be
        the model the stored vectors come from (`EmbeddingModelMismatch`); the first write records it.
        """
        self.check_model(encoder)  # before embedding anything; checked again inside the transaction
        prepared = self._prepare_all(items, encoder)
        if not prepared:
            return
        self._commit_papers(prepared, encoder, _now())
        self._library_changed()

    def _commit_papers(self, prepared: list[PreparedPaper], encoder: DocumentEncoder, now: float) -> None:
        """One transaction: claim the model, write every prepared paper."""
        raise NotImplementedError

    def _library_changed(self) -> None:
        """After a committed write: the FAISS file (if any) may be due for a rebuild."""
        if self.library_index is not None:
            self._changed_library = True
            self.library_index.refresh_if_due()

    def _prepare_all(
        self,
        items: Iterable[tuple[PaperRecord, Sequence[Chunk], np.ndarray | None]],
        encoder: DocumentEncoder,
    ) -> list[PreparedPaper]:
        """Validate and hash every paper, then embed what the store lacks in ONE encode call for the batch
        (batches across papers pad less and keep the device busy)."""
        prepared: list[PreparedPaper] = []
        pending: list[int] = []
        for record, chunk_seq, vectors in items:
            chunks = list(chunk_seq)
            _validate(record, chunks)
            hashes = [content_hash(encoder.model_name, encoder.document_prefix, c.text) for c in chunks]
            if vectors is None:
                pending.append(len(prepared))
                vectors = np.empty((len(chunks), encoder.dimension), dtype=np.float32)
            prepared.append(PreparedPaper(record, chunks, hashes, np.ascontiguousarray(vectors, np.float32)))
        if pending:
            all_chunks = [c for i in pending for c in prepared[i].chunks]
            all_hashes = [h for i in pending for h in prepared[i].hashes]
            embedded = self._embed_missing(encoder, all_chunks, all_hashes)
            offset = 0
            for i in pending:
                n = len(prepared[i].chunks)
                prepared[i].vectors = embedded[offset : offset + n]
                offset += n
        for paper in prepared:
            if paper.vectors.shape != (len(paper.chunks), encoder.dimension):
                raise ValueError(
                    f"{paper.record.paper_id}: vectors shape {paper.vectors.shape} != "
                    f"({len(paper.chunks)}, {encoder.dimension})"
                )
        return prepared

    def _embed_missing(
        self, encoder: DocumentEncoder, chunks: list[Chunk], hashes: list[bytes]
    ) -> np.ndarray:
        """Reuse the stored vector of any chunk text already embedded with this model; embed the rest once."""
        cached = self._cached_vectors(set(hashes))
        missing: dict[bytes, str] = {
            h: c.text for c, h in zip(chunks, hashes, strict=True) if h not in cached
        }
        if missing:
            fresh = encoder.embed_documents(list(missing.values()))
            cached.update(zip(missing, fresh, strict=True))
        vectors = np.empty((len(chunks), encoder.dimension), dtype=np.float32)
        for i, h in enumerate(hashes):
            vectors[i] = cached[h]
        return vectors

    def _cached_vectors(self, hashes: set[bytes]) -> dict[bytes, np.ndarray]:
        """Stored vectors by content hash (the chunks table doubles as the vector cache)."""
        raise NotImplementedError

    # --- reads ------------------------------------------------------------------------------------------

    def get_chunks(self, paper_id: str) -> list[Chunk]:
        raise NotImplementedError

    def get_vectors(self, paper_id: str) -> tuple[list[str], np.ndarray]:
        raise NotImplementedError

    # --- library-wide search ---------------------------------------------------------------------------

    def search_library(
        self, query_vector: np.ndarray, k: int = 10, paper_ids: Sequence[str] | None = None
    ) -> list[tuple[Chunk, float]]:
        """Top-k chunks of the library (or of `paper_ids` only) by inner product with `query_vector`."""
        query = np.ascontiguousarray(np.asarray(query_vector, dtype=np.float32).reshape(-1))
        if paper_ids is not None:
            return self._search_papers(query, k, paper_ids)
        return self._search_file_and_tail(query, k)

    def _search_papers(
        self, query: np.ndarray, k: int, paper_ids: Sequence[str]
    ) -> list[tuple[Chunk, float]]:
        # A handful of papers: exact search over their own vectors, independent of the library size.
        hits: list[tuple[Chunk, float]] = []
        for paper_id in dict.fromkeys(paper_ids):
            chunk_ids, matrix = self.get_vectors(paper_id)
            if len(matrix):
                # Two reads: a re-store committing between them changes the chunks. Ids are content hashes
                # (chunking.chunk_id), so pairing by id keeps each score with its own text, and a chunk of the
                # other version is left out (zipping by position mixed versions, or failed on their lengths).
                by_id = {chunk.chunk_id: chunk for chunk in self.get_chunks(paper_id)}
                scores = (matrix @ query).tolist()
                hits.extend((by_id[cid], s) for cid, s in zip(chunk_ids, scores, strict=True) if cid in by_id)
        hits.sort(key=lambda hit: -hit[1])
        return hits[:k]

    def _search_file_and_tail(self, query: np.ndarray, k: int) -> list[tuple[Chunk, float]]:
        assert self.library_index is not None
        tail = dict(self._search_tail(query, k))
        want = k * 2 + 16
        while True:
            # Oversample FAISS: hits on deleted chunks (the file may lag) are dropped by _hydrate; widen the
            # search until k live chunks are found or the file is exhausted.
            hits, exhausted = self.library_index.search(query, want, exclude=tail.keys())
            top = sorted({**tail, **dict(hits)}.items(), key=lambda item: -item[1])
            found = self._hydrate(top, k)
            if len(found) >= k or exhausted:
                return found
            want *= 4

    def _search_tail(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact (chunk row, score) top-k over chunks newer than the FAISS file."""
        raise NotImplementedError

    def _hydrate(self, ranked: list[tuple[int, float]], k: int) -> list[tuple[Chunk, float]]:
        """Chunks for ranked chunk rows, dropping rows the store no longer has (the file may lag deletes)."""
        raise NotImplementedError


class Store(StoreBase):
    """SQLite store of papers, chunks and vectors; `library_index` is its FAISS file for library-wide search.

    Thread-safe (one SQLite connection per thread). Reads need no model; writes take their encoder.
    """

    library_index: LibraryIndex

    def __init__(
        self,
        settings: Settings,
        *,
        library_refresh_s: float = 30.0,
        library_tail_max: int = 20_000,
        mmap_bytes: int = 0,
    ) -> None:
        self.settings = settings
        self.dir = Path(settings.index_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / DB_NAME
        # A writer rebuilds the FAISS file once it is `library_refresh_s` old and behind, or
        # `library_tail_max` chunks behind.
        self.library_index = LibraryIndex(
            self.dir, self, refresh_s=library_refresh_s, tail_max=library_tail_max
        )
        self.mmap_bytes = mmap_bytes
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Set once this store commits a write: close() then brings the FAISS file up to date.
        self._changed_library = False
        # Creates the file or migrates it to the schema this code knows; refuses a newer one (core.db).
        ensure_sqlite_schema(self.db_path)

    # --- connections -----------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a paper is exactly one transaction.
            conn = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None, check_same_thread=False)
            retry_when_locked(lambda: self._set_pragmas(conn))  # threads opening at once: see its docstring
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts and keeps every commit across a process kill; only an OS
        # crash / power cut may drop the last commits (they are re-ingested, never half-present).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=60000")
        if self.mmap_bytes:
            # mmap reads skip a syscall per page (per-paper reads ~1.5-2x faster) but every page touched
            # then counts in this process's RSS (shared, reclaimable), up to the cap: opt-in.
            conn.execute(f"PRAGMA mmap_size={int(self.mmap_bytes)}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Bring the FAISS file up to date if this store wrote to the library, then close every connection."""
        super().close()
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    # --- meta / embedding model ------------------------------------------------------------------------

    def _meta(self, key: str, conn: sqlite3.Connection | None = None) -> str | None:
        row = (conn or self._conn()).execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def embedding_info(self) -> EmbeddingInfo | None:
        """The model the stored vectors come from, or None for an empty, never-written store."""
        name = self._meta("embedding_model")
        if name is None:
            return None
        return EmbeddingInfo(
            model_name=name,
            dimension=int(self._meta("embedding_dimension") or 0),
            document_prefix=self._meta("embedding_document_prefix") or "",
        )

    def _claim_model(self, conn: sqlite3.Connection, encoder: DocumentEncoder) -> None:
        """Inside a write: record `encoder`'s model when none is, refuse it when another one is or while a
        reindex runs."""
        self._refuse_while_reindexing(conn)
        if self._meta("embedding_model", conn) is None:
            self._record_model(conn, encoder)
        else:
            check_same_model(self.embedding_info(), encoder)

    def _record_model(self, conn: sqlite3.Connection, encoder: DocumentEncoder) -> None:
        self._set_meta(conn, "embedding_model", encoder.model_name)
        self._set_meta(conn, "embedding_dimension", str(encoder.dimension))
        self._set_meta(conn, "embedding_document_prefix", encoder.document_prefix)

    def generation(self) -> int:
        """Bumped by every committed write; the FAISS file records the generation it was built from."""
        return int(self._meta("generation") or 0)

    @staticmethod
    def _bump_generation(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _add_meta(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- writes -----------------------------------------------------------------------------------------

    def _commit_papers(self, prepared: list[PreparedPaper], encoder: DocumentEncoder, now: float) -> None:
        with self._transaction() as conn:
            self._claim_model(conn, encoder)
            for paper in prepared:
                self._write_paper(conn, paper, encoder, now)
            self._bump_generation(conn)

    def _cached_vectors(self, hashes: set[bytes]) -> dict[bytes, np.ndarray]:
        # The chunks table doubles as the vector cache (indexed by content hash): no second copy of vectors.
        found: dict[bytes, np.ndarray] = {}
        ordered = list(hashes)
        conn = self._conn()
        for start in range(0, len(ordered), 500):
            batch = ordered[start : start + 500]
            marks = ",".join("?" * len(batch))
            rows = conn.execute(
                f"SELECT content_hash, vector FROM chunks WHERE content_hash IN ({marks})", batch
            ).fetchall()
            for digest, blob in rows:
                found[bytes(digest)] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _write_paper(
        self, conn: sqlite3.Connection, paper: PreparedPaper, encoder: DocumentEncoder, now: float
    ) -> None:
        record = paper.record
        row = conn.execute("SELECT created_at FROM papers WHERE paper_id = ?", (record.paper_id,)).fetchone()
        created = row[0] if row else now
        # Replacing: the cascade drops old chunks and aliases; new chunks get fresh (higher) ids.
        conn.execute("DELETE FROM papers WHERE paper_id = ?", (record.paper_id,))
        supersede_doi_copy(conn, record, "?")
        conn.execute(
            "INSERT INTO papers(paper_id, pmid, doi, title, journal, year, license, article_type, status,"
            " source, n_chunks, embedding_model, record_json, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            paper_row(record, len(paper.chunks), encoder.model_name, created, now),
        )
        conn.executemany(
            "INSERT INTO chunks(paper_id, ordinal, chunk_id, content_hash, chunk_json, vector)"
            " VALUES (?,?,?,?,?,?)",
            [
                (record.paper_id, c.ordinal, c.chunk_id, h, c.model_dump_json(), v.tobytes())
                for c, h, v in zip(paper.chunks, paper.hashes, paper.vectors, strict=True)
            ],
        )
        self._write_aliases(conn, record)
        self._write_status(conn, record.paper_id, record.status, None, now)

    @staticmethod
    def _write_aliases(conn: sqlite3.Connection, record: PaperRecord) -> None:
        write_aliases(conn, record, "?")

    def delete_paper(self, paper_id: str) -> bool:
        """Remove a paper with its chunks, vectors, aliases and status. False when it was not stored."""
        with self._transaction() as conn:
            ids = conn.execute("SELECT pmid, doi FROM papers WHERE paper_id = ?", (paper_id,)).fetchone()
            deleted = conn.execute("DELETE FROM papers WHERE paper_id = ?", (paper_id,)).rowcount > 0
            if ids is not None:
                repoint_aliases(conn, ids[0], ids[1], "?")
            conn.execute("DELETE FROM ingest_status WHERE paper_id = ?", (paper_id,))
            if deleted:
                self._bump_generation(conn)
        if deleted:
            self._library_changed()
        return deleted

    # --- ingest status ---------------------------------------------------------------------------------

    def set_status(self, paper_id: str, status: IngestState, reason: str | None = None) -> None:
        with self._transaction() as conn:
            self._write_status(conn, paper_id, status, reason, _now())

    @staticmethod
    def _write_status(
        conn: sqlite3.Connection, paper_id: str, status: str, reason: str | None, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO ingest_status(paper_id, status, reason, created_at, updated_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT(paper_id) DO UPDATE SET status = excluded.status, reason = excluded.reason,"
            " updated_at = excluded.updated_at",
            (paper_id, status, reason, now, now),
        )

    def get_status(self, paper_id: str) -> IngestStatus | None:
        row = (
            self._conn()
            .execute(
                "SELECT paper_id, status, reason, created_at, updated_at FROM ingest_status"
                " WHERE paper_id = ?",
                (paper_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return IngestStatus(row[0], Status(row[1]), row[2], _ts(row[3]), _ts(row[4]))

    # --- reads ------------------------------------------------------------------------------------------

    def get_paper(self, paper_id: str) -> PaperRecord | None:
        row = (
            self._conn().execute("SELECT record_json FROM papers WHERE paper_id = ?", (paper_id,)).fetchone()
        )
        return None if row is None else PaperRecord.model_validate_json(row[0])

    def get_chunks(self, paper_id: str) -> list[Chunk]:
        """The paper's chunks in ordinal (document) order; empty when the paper is absent."""
        rows = self._conn().execute(
            "SELECT chunk_json FROM chunks WHERE paper_id = ? ORDER BY ordinal", (paper_id,)
        )
        return [Chunk.model_validate_json(row[0]) for row in rows]

    def get_vectors(self, paper_id: str) -> tuple[list[str], np.ndarray]:
        """(chunk ids, (n, dimension) float32 matrix) in ordinal order, read through the paper_id index."""
        rows = (
            self._conn()
            .execute("SELECT chunk_id, vector FROM chunks WHERE paper_id = ? ORDER BY ordinal", (paper_id,))
            .fetchall()
        )
        if not rows:
            info = self.embedding_info()
            return [], np.zeros((0, info.dimension if info else 0), dtype=np.float32)
        matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), -1)
        return [row[0] for row in rows], matrix

    def count_papers(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM papers").fetchone()[0])

    def count_chunks(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def last_update(self) -> datetime | None:
        """When a paper was last stored (or re-stored), in UTC; None for an empty library."""
        row = self._conn().execute("SELECT MAX(updated_at) FROM papers").fetchone()
        return None if row[0] is None else datetime.fromtimestamp(row[0], UTC)

    def list_papers(self, offset: int = 0, limit: int = 50) -> list[PaperRecord]:
        """Text-less summaries (no text, outline or references), most recently stored first."""
        rows = self._conn().execute(
            f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM papers ORDER BY updated_at DESC, paper_id"
            " LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [PaperRecord(**dict(zip(SUMMARY_COLUMNS, row, strict=True))) for row in rows]

    def paper_ids(self) -> list[str]:
        return [row[0] for row in self._conn().execute("SELECT paper_id FROM papers ORDER BY paper_id")]

    def resolve_alias(self, pmid_or_doi: str) -> str | None:
        """Paper id stored under a PMID, DOI (any common spelling) or PMCID; None when unknown."""
        row = (
            self._conn()
            .execute("SELECT paper_id FROM aliases WHERE alias = ?", (alias_key(pmid_or_doi),))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def integrity_check(self) -> list[str]:
        """SQLite's integrity check plus ours (`sqlite_integrity_problems`); empty when sound."""
        return sqlite_integrity_problems(self._conn())

    # --- library-wide search ---------------------------------------------------------------------------

    def _hydrate(self, ranked: list[tuple[int, float]], k: int) -> list[tuple[Chunk, float]]:
        """Chunks for ranked ids, dropping ids SQLite no longer has (the FAISS file may lag deletes)."""
        out: list[tuple[Chunk, float]] = []
        conn = self._conn()
        for start in range(0, len(ranked), 200):
            batch = ranked[start : start + 200]
            marks = ",".join("?" * len(batch))
            rows = dict(
                conn.execute(
                    f"SELECT id, chunk_json FROM chunks WHERE id IN ({marks})", [i for i, _ in batch]
                ).fetchall()
            )
            for chunk_row, score in batch:
                if chunk_row in rows:
                    out.append((Chunk.model_validate_json(rows[chunk_row]), float(score)))
                    if len(out) == k:
                        return out
        return out

    def _search_tail(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact search over chunks newer than the FAISS file (normally few; rebuilt when they are not)."""
        rows = self._conn().execute(
            "SELECT id, vector FROM chunks WHERE id > ?", (self.library_index.indexed_through(),)
        )
        best: list[tuple[int, float]] = []
        for ids, matrix in _vector_batches(rows, 4096):
            best.extend(zip(ids.tolist(), (matrix @ query).tolist(), strict=True))
            best = sorted(best, key=lambda item: -item[1])[:k]
        return best

    # --- what the FAISS file is built from (index.library_index.VectorSource) ---------------------------

    def count_vectors_after(self, chunk_row: int) -> int:
        return int(
            self._conn().execute("SELECT COUNT(*) FROM chunks WHERE id > ?", (chunk_row,)).fetchone()[0]
        )

    @contextlib.contextmanager
    def vector_snapshot(self) -> Iterator[VectorSnapshot]:
        """Every vector in id order, read in one transaction: they match exactly one generation."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            info = self.embedding_info()
            rows = conn.execute("SELECT id, vector FROM chunks ORDER BY id")
            yield VectorSnapshot(
                self.generation(), info.dimension if info else 1, _vector_batches(rows, 50_000)
            )
        finally:
            conn.execute("COMMIT")

    # --- reindex ----------------------------------------------------------------------------------------

    def reindex(self, encoder: DocumentEncoder, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-embed every paper's chunks with `encoder` (one transaction per paper; resumable), then record
        it as the store's model and rebuild the FAISS file. Returns the number of papers re-embedded."""
        with self._transaction() as conn:
            self._set_meta(conn, "reindex_target", encoder.model_name)
        ids = self.paper_ids()
        done = 0
        for position, paper_id in enumerate(ids, 1):
            if self._reembed_paper(encoder, paper_id):
                done += 1
            if progress:
                progress(position, len(ids))
        with self._transaction() as conn:
            self._record_model(conn, encoder)
            conn.execute("DELETE FROM meta WHERE key = 'reindex_target'")
            self._bump_generation(conn)
        self._changed_library = True
        self.library_index.rebuild()
        return done

    def _reembed_paper(self, encoder: DocumentEncoder, paper_id: str) -> bool:
        chunks = self.get_chunks(paper_id)
        hashes = [content_hash(encoder.model_name, encoder.document_prefix, c.text) for c in chunks]
        vectors = self._embed_missing(encoder, chunks, hashes)
        with self._transaction() as conn:
            row = conn.execute("SELECT n_chunks FROM papers WHERE paper_id = ?", (paper_id,)).fetchone()
            if row is None or row[0] != len(chunks):  # deleted or replaced meanwhile: the new copy is current
                return False
            conn.executemany(
                "UPDATE chunks SET content_hash = ?, vector = ? WHERE paper_id = ? AND ordinal = ?",
                [
                    (h, v.tobytes(), paper_id, c.ordinal)
                    for c, h, v in zip(chunks, hashes, vectors, strict=True)
                ],
            )
            conn.execute(
                "UPDATE papers SET embedding_model = ? WHERE paper_id = ?", (encoder.model_name, paper_id)
            )
        return True


def sqlite_integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """The problems of the library database behind `conn` (empty when sound): SQLite's integrity and foreign
    key checks, plus ours: every paper has exactly `n_chunks` chunks, ordinals 0..n-1, vectors of the
    recorded dimension. A plain connection will do (a backup checks its copy without opening a `Store`)."""
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
    problems += [f"foreign key: {row}" for row in conn.execute("PRAGMA foreign_key_check")]
    dimension = conn.execute("SELECT value FROM meta WHERE key = 'embedding_dimension'").fetchone()
    width = 4 * int(dimension[0]) if dimension else None
    rows = conn.execute(
        "SELECT p.paper_id, p.n_chunks, COUNT(c.id), SUM(LENGTH(c.vector) != ?),"
        " COUNT(DISTINCT c.ordinal), MIN(c.ordinal), MAX(c.ordinal)"
        " FROM papers p LEFT JOIN chunks c ON c.paper_id = p.paper_id GROUP BY p.paper_id",
        (width,),
    )
    for paper_id, expected, found, bad_width, distinct, low, high in rows:
        if found != expected or (found and (distinct != found or low != 0 or high != found - 1)):
            problems.append(f"{paper_id}: {found} chunks stored, record says {expected}")
        if bad_width:
            problems.append(f"{paper_id}: {bad_width} vectors of the wrong size")
    return problems


@dataclass
class PreparedPaper:
    """A paper validated, hashed and embedded, ready to be written in a transaction."""

    record: PaperRecord
    chunks: list[Chunk]
    hashes: list[bytes]
    vectors: np.ndarray


def _validate(record: PaperRecord, chunks: list[Chunk]) -> None:
    """Refuse inconsistent input rather than store a paper whose citations cannot be checked."""
    for position, chunk in enumerate(chunks):
        if chunk.paper_id != record.paper_id:
            raise ValueError(f"chunk {chunk.chunk_id} belongs to {chunk.paper_id}, not {record.paper_id}")
        if chunk.ordinal != position:
            raise ValueError(f"chunk ordinals must be 0..n-1 in order; got {chunk.ordinal} at {position}")
        if record.text[chunk.start : chunk.end] != chunk.text:
            raise ValueError(f"chunk {chunk.chunk_id} text is not record.text[{chunk.start}:{chunk.end}]")


def _vector_batches(rows: sqlite3.Cursor, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(int64 ids, (n, dimension) float32 matrix) batches of a `SELECT id, vector` cursor."""
    while batch := rows.fetchmany(size):
        ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
        matrix = np.frombuffer(b"".join(row[1] for row in batch), dtype=np.float32).reshape(len(batch), -1)
        yield ids, matrix


def doi_copy_alias(paper_id: str, doi: str | None) -> str | None:
    """The alias key of `doi` when a paper written under the PMCID `paper_id` replaces a copy stored under
    that DOI itself (`supersede_doi_copy`); None when `paper_id` is no PMCID or there is no DOI."""
    if not doi or canonical_pmcid(paper_id) != paper_id:
        return None
    return alias_key("doi:" + doi)


def is_doi_copy(stored: str | None, paper_id: str, key: str) -> bool:
    """Whether `stored`, the paper the DOI alias `key` names, is a copy of `paper_id` stored under that DOI
    itself (not `paper_id`, nor a paper stored under another id that carries the DOI)."""
    return stored is not None and stored != paper_id and alias_key(stored) == key


def supersede_doi_copy(conn: Any, record: PaperRecord, mark: str) -> str | None:
    """One paper, one record: a paper written under its PMCID replaces the copy stored under its DOI (a file
    or upload that carried no PMCID), inside the write (`mark`: the driver's placeholder), so that DOI
    becomes the PMCID's alias and no orphan copy is left. Returns the id of the copy removed, if any."""
    key = doi_copy_alias(record.paper_id, record.doi)
    if key is None:
        return None
    row = conn.execute(f"SELECT paper_id FROM aliases WHERE alias = {mark}", (key,)).fetchone()
    if row is None or not is_doi_copy(row[0], record.paper_id, key):
        return None
    conn.execute(f"DELETE FROM papers WHERE paper_id = {mark}", (row[0],))  # its chunks and aliases cascade
    conn.execute(f"DELETE FROM ingest_status WHERE paper_id = {mark}", (row[0],))
    return str(row[0])


def write_aliases(conn: Any, record: PaperRecord, mark: str) -> None:
    """Point the record's aliases (its own id, PMID, DOI) at it, inside a write (`mark`: the driver's
    placeholder). Its own id always; a PMID or DOI it shares with another paper too (the newest copy
    answers), unless that alias is the other paper's own id (a paper stored under its DOI, which only a
    paper under another DOI can meet: `supersede_doi_copy` removed it for a PMCID): taking that over would
    leave the other paper unreachable once this one is deleted."""
    own = alias_key(record.paper_id)
    others = {alias_key("pmid:" + record.pmid)} if record.pmid else set()
    if record.doi:
        others.add(alias_key("doi:" + record.doi))
    others.discard(own)
    upsert = (
        f"INSERT INTO aliases(alias, paper_id) VALUES ({mark}, {mark})"
        " ON CONFLICT (alias) DO UPDATE SET paper_id = excluded.paper_id"
    )
    conn.execute(upsert, (own, record.paper_id))
    if not others:
        return
    wanted = sorted(others)
    held = dict(
        conn.execute(
            f"SELECT alias, paper_id FROM aliases WHERE alias IN ({', '.join([mark] * len(wanted))})", wanted
        ).fetchall()
    )
    for alias in wanted:
        owner = held.get(alias)
        if owner is None or owner == record.paper_id or alias_key(owner) != alias:
            conn.execute(upsert, (alias, record.paper_id))


def repoint_aliases(conn: Any, pmid: str | None, doi: str | None, mark: str) -> None:
    """After a delete (its aliases went with it): a PMID or DOI another stored paper also carries points at
    that paper again (the most recently stored), so it stays reachable by them."""
    insert = f"INSERT INTO aliases(alias, paper_id) VALUES ({mark}, {mark}) ON CONFLICT (alias) DO NOTHING"
    for alias, column, value in (("pmid:", "pmid", pmid), ("doi:", "lower(doi)", doi and doi.lower())):
        if not value:
            continue
        row = conn.execute(
            f"SELECT paper_id FROM papers WHERE {column} = {mark} ORDER BY updated_at DESC LIMIT 1", (value,)
        ).fetchone()
        if row is not None:
            conn.execute(insert, (alias_key(alias + value), row[0]))


def check_same_model(info: EmbeddingInfo | None, encoder: DocumentEncoder) -> None:
    """`EmbeddingModelMismatch` when the stored vectors (`info`; None = none yet) are not `encoder`'s."""
    if info is None or (info.model_name, info.dimension, info.document_prefix) == (
        encoder.model_name,
        encoder.dimension,
        encoder.document_prefix,
    ):
        return
    stored_name = info.model_name
    configured = encoder.model_name
    if stored_name == configured:  # same model, other prefix: say so rather than print a == b
        stored_name += f" (document prefix {info.document_prefix!r})"
        configured += f" (document prefix {encoder.document_prefix!r})"
    raise EmbeddingModelMismatch(stored_name, info.dimension, configured, encoder.dimension)
