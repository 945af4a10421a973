"""The PostgreSQL paper store: one library shared by many hosts (`PMCQA_DATABASE_URL`).

Same contract as the SQLite store (`index.store.PaperStore`), same tables (alembic revisions in
`core/migrations`): papers, chunks (one row per chunk, its vector in `embedding`, kept in the row), aliases,
ingest_status, meta; the id map lives here too. Connections come from the process's pool
(`core.db.connection_pool`), which the id map and the jobs table share.

- **Per-paper reads** go through the B-tree of `UNIQUE (paper_id, ordinal)`: one index range scan returns the
  paper's rows, their vectors as raw bytes (`vector_send`) decoded by one numpy call and scored in process,
  exactly, as BM25 is. The cost does not depend on the library size.
- **Library-wide search with pgvector**: an HNSW index (cosine) over the vectors cast to `halfvec(d)` (half
  the index memory of `vector(d)` at the same recall; bench/bench_pg_store.py), created once the dimension is
  known (the first write) and rebuilt by `reindex`. Hits carry their exact float32 inner product. The index is
  transactional: a committed paper is searchable at once, a deleted one never comes back; no file, no lag.
  `hnsw.ef_search` is `settings.hnsw_ef_search` (iterative scans keep k hits when dead rows are skipped).
- **Without pgvector** (the extension could not be created when the database was set up: `meta.vector_storage`
  is `bytea`): vectors are float32 bytes and library search falls back to what the SQLite store does, a FAISS
  file under `index_dir` on each host, rebuilt from a snapshot of this database, plus an exact search of the
  chunks newer than it. A warning says so at open, and `library_search` names it.
- **Writes**: one transaction per `put_papers` call. It takes an advisory lock per paper id (two hosts storing
  one paper queue up instead of failing on its key; a PMCID's write locks its DOI too), claims the model,
  then per paper deletes the old copy (cascade) and any copy stored under its DOI, inserts the record, COPYs
  the chunks in binary and writes aliases and status. A killed client's transaction is rolled back by the
  server, so a paper is whole or absent.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from pmcqa.core.db import connection_pool, ensure_postgres_schema, postgres_url, redact
from pmcqa.core.ids import alias_key
from pmcqa.core.settings import Settings
from pmcqa.core.status import IngestState, Status
from pmcqa.index.library_index import LibraryIndex, VectorSnapshot
from pmcqa.index.models import Chunk, PaperRecord
from pmcqa.index.store import (
    SUMMARY_COLUMNS,
    DocumentEncoder,
    EmbeddingInfo,
    IngestStatus,
    PreparedPaper,
    StoreBase,
    check_same_model,
    content_hash,
    paper_row,
    repoint_aliases,
    supersede_doi_copy,
    write_aliases,
)

log = logging.getLogger(__name__)

HNSW_INDEX = "chunks_embedding_hnsw"
# HNSW build parameters (pgvector's defaults); the bench measured recall with them.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
_MODEL_KEYS = ("embedding_model", "embedding_dimension", "embedding_document_prefix")


# The ef_search each pooled connection was prepared with (the pool lends a connection to one thread at once).
_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], int] = weakref.WeakKeyDictionary()


def _written_ids(record: PaperRecord) -> list[str]:
    """The papers a write of `record` may change: its own, and the copy under its DOI it may replace
    (`supersede_doi_copy`)."""
    return [record.paper_id, "doi:" + record.doi] if record.doi else [record.paper_id]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def hnsw_index_sql(dimension: int, *, concurrently: bool = False) -> str:
    """The CREATE INDEX statement of the library-wide HNSW index (the bench builds the same one)."""
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{HNSW_INDEX} ON chunks"
        f" USING hnsw ((embedding::halfvec({int(dimension)}))"
        f" halfvec_cosine_ops) WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def hnsw_search_sql(dimension: int) -> str:
    """Top-k by the HNSW index (its expression, verbatim), with each hit's exact inner product."""
    return (
        "SELECT id, chunk_json, -(embedding <#> %(q)s) FROM chunks"
        f" ORDER BY embedding::halfvec({int(dimension)}) <=> %(q)s::halfvec({int(dimension)}) LIMIT %(k)s"
    )


class PostgresStore(StoreBase):
    """PostgreSQL store of papers, chunks and vectors. Thread-safe (connections come from a shared pool)."""

    def __init__(
        self,
        settings: Settings,
        *,
        library_refresh_s: float = 30.0,
        library_tail_max: int = 20_000,
        mmap_bytes: int = 0,  # SQLite's; accepted so that callers need not know the backend
    ) -> None:
        del mmap_bytes
        self.settings = settings
        url = postgres_url(settings)
        if url is None:
            raise ValueError("PostgresStore needs settings.database_url")
        self.where = redact(url)
        # Creates the tables or migrates them to the schema this code knows; refuses a newer one (core.db).
        ensure_postgres_schema(settings)
        self._pool = connection_pool(settings)
        # Read before any connection is prepared (`_prepare` registers the vector type it finds here).
        with self._pool.connection() as conn:
            storage = conn.execute("SELECT value FROM meta WHERE key = 'vector_storage'").fetchone()
            self.pgvector = storage is not None and storage[0] == "pgvector"
            self._vector_type = TypeInfo.fetch(conn, "vector") if self.pgvector else None
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        # Iterative index scans came with pgvector 0.8; older servers search without them.
        self._iterative_scans = version is not None and _version(version[0]) >= (0, 8)
        # A stored vector as bytes: with pgvector a 4-byte header, then big-endian float32s (its wire format).
        self._vector_bytes = "vector_send(embedding)" if self.pgvector else "embedding"
        # get_vectors: one range scan of the (paper_id, ordinal) B-tree (tests check the plan).
        self.paper_vectors_sql = (
            f"SELECT chunk_id, {self._vector_bytes} FROM chunks WHERE paper_id = %s ORDER BY ordinal"
        )
        if self.pgvector:
            if self._vector_type is None:
                raise psycopg.ProgrammingError(
                    f"{self.where} stores vectors as pgvector `vector` but the extension is gone; "
                    "CREATE EXTENSION vector (scripts/pgvector.sh installs it)"
                )
            self.library_search = (
                f"pgvector HNSW (halfvec, cosine, m={HNSW_M}, ef_search={settings.hnsw_ef_search})"
            )
        else:
            Path(settings.index_dir).mkdir(parents=True, exist_ok=True)
            self.library_index = LibraryIndex(
                Path(settings.index_dir), self, refresh_s=library_refresh_s, tail_max=library_tail_max
            )
            self.library_search = (
                f"FAISS file under {settings.index_dir} rebuilt from PostgreSQL on this host, plus an exact "
                "search of newer chunks (pgvector is not installed in this database)"
            )
            log.warning(
                "library database %s has no pgvector: library-wide search falls back to a %s. Install"
                " pgvector (scripts/pgvector.sh) and load the library into a new database to use HNSW.",
                self.where,
                self.library_search,
            )

    # --- connections -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn:
            if self._vector_type is not None and _prepared.get(conn) != self.settings.hnsw_ef_search:
                self._prepare(conn)
            yield conn

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Per pooled connection (shared by every store of the process): pgvector's (de)serialisers and
        this store's HNSW search parameters."""
        assert self._vector_type is not None
        if conn not in _prepared:
            register_vector_info(conn, self._vector_type)
            if self._iterative_scans:  # keep walking the graph past dead rows, so a search still returns k
                conn.execute("SET hnsw.iterative_scan = strict_order")
        conn.execute(f"SET hnsw.ef_search = {int(self.settings.hnsw_ef_search)}")
        _prepared[conn] = self.settings.hnsw_ef_search

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    def _lock_papers(conn: psycopg.Connection[Any], paper_ids: Sequence[str]) -> None:
        # Keyed as aliases are, so a DOI locks in any case; sorted: two transactions locking overlapping
        # papers always lock in the same order (no deadlock).
        for key in sorted({alias_key(paper_id) for paper_id in paper_ids}):
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    # --- vectors on the wire ---------------------------------------------------------------------------

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """(n, dimension) float32 matrix of n stored vectors as `self._vector_bytes` returns them."""
        if not blobs:
            return np.zeros((0, 0), dtype=np.float32)
        joined = b"".join(blobs)
        if self.pgvector:  # drop each row's 4-byte header (one float32 slot), swap to native byte order
            return np.frombuffer(joined, dtype=">f4").reshape(len(blobs), -1)[:, 1:].astype(np.float32)
        return np.frombuffer(joined, dtype=np.float32).reshape(len(blobs), -1)

    def _encode(self, vector: np.ndarray) -> Any:
        """A vector as a query parameter for the `embedding` column."""
        return vector if self.pgvector else np.ascontiguousarray(vector, dtype=np.float32).tobytes()

    # --- meta / embedding model ------------------------------------------------------------------------

    def _meta(self, key: str, conn: psycopg.Connection[Any] | None = None) -> str | None:
        with contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self._connection())
            row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _embedding_info(self, conn: psycopg.Connection[Any]) -> EmbeddingInfo | None:
        values = dict(conn.execute("SELECT key, value FROM meta WHERE key = ANY(%s)", (list(_MODEL_KEYS),)))
        if "embedding_model" not in values:
            return None
        return EmbeddingInfo(
            model_name=values["embedding_model"],
            dimension=int(values.get("embedding_dimension") or 0),
            document_prefix=values.get("embedding_document_prefix") or "",
        )

    def embedding_info(self) -> EmbeddingInfo | None:
        """The model the stored vectors come from, or None for an empty, never-written store."""
        with self._connection() as conn:
            return self._embedding_info(conn)

    def _claim_model(self, conn: psycopg.Connection[Any], encoder: DocumentEncoder) -> None:
        """Inside a write: record `encoder`'s model when none is, refuse it when another one is.

        A concurrent first writer's rows make this INSERT wait for its commit, then do nothing; the check
        below then compares with what it recorded.
        """
        recorded = conn.execute(
            "INSERT INTO meta(key, value) VALUES (%s, %s), (%s, %s), (%s, %s) ON CONFLICT (key) DO NOTHING"
            " RETURNING key",
            self._model_rows(encoder),
        ).fetchall()
        if recorded and self.pgvector:
            self._ensure_vector_index(conn, encoder.dimension)
        self._refuse_while_reindexing(conn)
        check_same_model(self._embedding_info(conn), encoder)

    @staticmethod
    def _model_rows(encoder: DocumentEncoder) -> tuple[str, ...]:
        return (
            "embedding_model",
            encoder.model_name,
            "embedding_dimension",
            str(encoder.dimension),
            "embedding_document_prefix",
            encoder.document_prefix,
        )

    def _record_model(self, conn: psycopg.Connection[Any], encoder: DocumentEncoder) -> None:
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (%s, %s), (%s, %s), (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            self._model_rows(encoder),
        )

    @staticmethod
    def _ensure_vector_index(conn: psycopg.Connection[Any], dimension: int) -> None:
        """The HNSW index for `dimension`-d vectors (dropping one built for another dimension)."""
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = %s",
            (HNSW_INDEX,),
        ).fetchone()
        if row is not None and f"halfvec({int(dimension)})" in row[0]:
            return
        conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
        conn.execute(hnsw_index_sql(dimension))

    def _rebuild_vector_index(self, dimension: int) -> None:
        """Build the HNSW index over a full table, CONCURRENTLY: writers are not blocked meanwhile, and only
        live rows are read (a plain CREATE INDEX also reads rows that a recent transaction replaced, whose
        vectors may have the old model's dimension, and the cast to `halfvec(d)` then fails)."""
        with self._connection() as conn:  # autocommit: CONCURRENTLY cannot run inside a transaction
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {HNSW_INDEX}")  # also a failed, invalid build
            conn.execute(hnsw_index_sql(dimension, concurrently=True))

    def generation(self) -> int:
        """Bumped by every committed write when the FAISS fallback is in use (what its file records)."""
        return int(self._meta("generation") or 0)

    @staticmethod
    def _bump_generation(conn: psycopg.Connection[Any]) -> None:
        conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'generation'")

    def _add_meta(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value)
            )

    # --- writes -----------------------------------------------------------------------------------------

    def _commit_papers(self, prepared: list[PreparedPaper], encoder: DocumentEncoder, now: float) -> None:
        with self._transaction() as conn:
            if not self.pgvector:
                # First: the generation row's lock orders writers, so chunk ids are assigned in commit order
                # (the FAISS fallback searches ids above its file exactly, which needs exactly that).
                self._bump_generation(conn)
            self._lock_papers(conn, [key for paper in prepared for key in _written_ids(paper.record)])
            self._claim_model(conn, encoder)
            for paper in prepared:
                self._write_paper(conn, paper, encoder, now)

    def _cached_vectors(self, hashes: set[bytes]) -> dict[bytes, np.ndarray]:
        # The chunks table doubles as the vector cache (indexed by content hash): no second copy of vectors.
        found: dict[bytes, np.ndarray] = {}
        if not hashes:
            return found
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT content_hash, {self._vector_bytes} FROM chunks WHERE content_hash = ANY(%s)",
                (list(hashes),),
                binary=True,
            ).fetchall()
        for digest, blob in rows:
            found[bytes(digest)] = self._decode([bytes(blob)])[0]
        return found

    def _write_paper(
        self, conn: psycopg.Connection[Any], paper: PreparedPaper, encoder: DocumentEncoder, now: float
    ) -> None:
        record = paper.record
        # Replacing: the cascade drops old chunks and aliases; new chunks get fresh (higher) ids.
        row = conn.execute(
            "DELETE FROM papers WHERE paper_id = %s RETURNING created_at", (record.paper_id,)
        ).fetchone()
        supersede_doi_copy(conn, record, "%s")
        conn.execute(
            "INSERT INTO papers(paper_id, pmid, doi, title, journal, year, license, article_type, status,"
            " source, n_chunks, embedding_model, record_json, created_at, updated_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            paper_row(record, len(paper.chunks), encoder.model_name, row[0] if row else now, now),
        )
        copy_sql = (
            "COPY chunks (paper_id, ordinal, chunk_id, content_hash, chunk_json, embedding)"
            " FROM STDIN (FORMAT BINARY)"
        )
        with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.set_types(["text", "int4", "text", "bytea", "text", "vector" if self.pgvector else "bytea"])
            for chunk, digest, vector in zip(paper.chunks, paper.hashes, paper.vectors, strict=True):
                copy.write_row(
                    (
                        record.paper_id,
                        chunk.ordinal,
                        chunk.chunk_id,
                        digest,
                        chunk.model_dump_json(),
                        self._encode(vector),
                    )
                )
        self._write_aliases(conn, record)
        self._write_status(conn, record.paper_id, record.status, None, now)

    @staticmethod
    def _write_aliases(conn: psycopg.Connection[Any], record: PaperRecord) -> None:
        write_aliases(conn, record, "%s")

    def delete_paper(self, paper_id: str) -> bool:
        """Remove a paper with its chunks, vectors, aliases and status. False when it was not stored."""
        with self._transaction() as conn:
            self._lock_papers(conn, [paper_id])
            ids = conn.execute("SELECT pmid, doi FROM papers WHERE paper_id = %s", (paper_id,)).fetchone()
            deleted = conn.execute("DELETE FROM papers WHERE paper_id = %s", (paper_id,)).rowcount > 0
            if ids is not None:
                repoint_aliases(conn, ids[0], ids[1], "%s")
            conn.execute("DELETE FROM ingest_status WHERE paper_id = %s", (paper_id,))
            if deleted and not self.pgvector:
                self._bump_generation(conn)
        if deleted:
            self._library_changed()
        return deleted

    # --- ingest status ---------------------------------------------------------------------------------

    def set_status(self, paper_id: str, status: IngestState, reason: str | None = None) -> None:
        with self._connection() as conn:
            self._write_status(conn, paper_id, status, reason, datetime.now(UTC).timestamp())

    @staticmethod
    def _write_status(
        conn: psycopg.Connection[Any], paper_id: str, status: str, reason: str | None, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO ingest_status(paper_id, status, reason, created_at, updated_at)"
            " VALUES (%s,%s,%s,%s,%s) ON CONFLICT (paper_id) DO UPDATE SET status = excluded.status,"
            " reason = excluded.reason, updated_at = excluded.updated_at",
            (paper_id, status, reason, now, now),
        )

    def get_status(self, paper_id: str) -> IngestStatus | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT paper_id, status, reason, created_at, updated_at FROM ingest_status"
                " WHERE paper_id = %s",
                (paper_id,),
            ).fetchone()
        if row is None:
            return None
        return IngestStatus(row[0], Status(row[1]), row[2], _ts(row[3]), _ts(row[4]))

    # --- reads ------------------------------------------------------------------------------------------

    def get_paper(self, paper_id: str) -> PaperRecord | None:
        with self._connection() as conn:
            row = conn.execute("SELECT record_json FROM papers WHERE paper_id = %s", (paper_id,)).fetchone()
        return None if row is None else PaperRecord.model_validate_json(row[0])

    def get_chunks(self, paper_id: str) -> list[Chunk]:
        """The paper's chunks in ordinal (document) order; empty when the paper is absent."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT chunk_json FROM chunks WHERE paper_id = %s ORDER BY ordinal", (paper_id,)
            ).fetchall()
        return [Chunk.model_validate_json(row[0]) for row in rows]

    def get_vectors(self, paper_id: str) -> tuple[list[str], np.ndarray]:
        """(chunk ids, (n, dimension) float32 matrix) in ordinal order, read through the paper_id index."""
        with self._connection() as conn:
            rows = conn.execute(self.paper_vectors_sql, (paper_id,), binary=True).fetchall()
        if not rows:
            info = self.embedding_info()
            return [], np.zeros((0, info.dimension if info else 0), dtype=np.float32)
        return [row[0] for row in rows], self._decode([row[1] for row in rows])

    def count_papers(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM papers").fetchone()[0])  # type: ignore[index]

    def count_chunks(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])  # type: ignore[index]

    def last_update(self) -> datetime | None:
        """When a paper was last stored (or re-stored), in UTC; None for an empty library."""
        with self._connection() as conn:
            row = conn.execute("SELECT MAX(updated_at) FROM papers").fetchone()
        return None if row is None or row[0] is None else _ts(row[0])

    def list_papers(self, offset: int = 0, limit: int = 50) -> list[PaperRecord]:
        """Text-less summaries (no text, outline or references), most recently stored first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM papers ORDER BY updated_at DESC, paper_id"
                " LIMIT %s OFFSET %s",
                (limit, offset),
            ).fetchall()
        return [PaperRecord(**dict(zip(SUMMARY_COLUMNS, row, strict=True))) for row in rows]

    def paper_ids(self) -> list[str]:
        with self._connection() as conn:
            return [row[0] for row in conn.execute("SELECT paper_id FROM papers ORDER BY paper_id")]

    def resolve_alias(self, pmid_or_doi: str) -> str | None:
        """Paper id stored under a PMID, DOI (any common spelling) or PMCID; None when unknown."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT paper_id FROM aliases WHERE alias = %s", (alias_key(pmid_or_doi),)
            ).fetchone()
        return None if row is None else str(row[0])

    def integrity_check(self) -> list[str]:
        """Every paper has exactly `n_chunks` well-sized vectors, and the HNSW index is there and valid.

        (PostgreSQL enforces the foreign keys itself.) Returns the problems found (empty when sound).
        """
        problems: list[str] = []
        width = "vector_dims(c.embedding)" if self.pgvector else "length(c.embedding) / 4"
        with self._connection() as conn:
            info = self._embedding_info(conn)
            rows = conn.execute(
                f"SELECT p.paper_id, p.n_chunks, COUNT(c.id), COUNT(*) FILTER (WHERE {width} <> %s),"
                " COUNT(DISTINCT c.ordinal), MIN(c.ordinal), MAX(c.ordinal)"
                " FROM papers p LEFT JOIN chunks c ON c.paper_id = p.paper_id GROUP BY p.paper_id",
                (info.dimension if info else 0,),
            ).fetchall()
            valid = conn.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (HNSW_INDEX,)
            ).fetchone()
        for paper_id, expected, found, bad_width, distinct, low, high in rows:
            if found != expected or (found and (distinct != found or low != 0 or high != found - 1)):
                problems.append(f"{paper_id}: {found} chunks stored, record says {expected}")
            if bad_width:
                problems.append(f"{paper_id}: {bad_width} vectors of the wrong size")
        if self.pgvector and info is not None and not (valid and valid[0]):
            problems.append(f"the HNSW index {HNSW_INDEX} is missing or invalid (reindex rebuilds it)")
        return problems

    # --- library-wide search ---------------------------------------------------------------------------

    def search_library(
        self, query_vector: np.ndarray, k: int = 10, paper_ids: Sequence[str] | None = None
    ) -> list[tuple[Chunk, float]]:
        """Top-k chunks of the library (or of `paper_ids` only, exactly) by inner product with `query_vector`.

        With pgvector the library-wide top-k comes from the HNSW index (approximate, cosine), scored exactly.
        """
        query = np.ascontiguousarray(np.asarray(query_vector, dtype=np.float32).reshape(-1))
        if paper_ids is not None:
            return self._search_papers(query, k, paper_ids)
        if not self.pgvector:
            return self._search_file_and_tail(query, k)
        with self._connection() as conn:
            if k > self.settings.hnsw_ef_search:  # HNSW returns at most ef_search hits
                with conn.transaction():
                    conn.execute(f"SET LOCAL hnsw.ef_search = {min(int(k), 1000)}")
                    rows = conn.execute(hnsw_search_sql(len(query)), {"q": query, "k": k}).fetchall()
            else:
                rows = conn.execute(hnsw_search_sql(len(query)), {"q": query, "k": k}).fetchall()
        return [(Chunk.model_validate_json(chunk_json), float(score)) for _, chunk_json, score in rows]

    def _hydrate(self, ranked: list[tuple[int, float]], k: int) -> list[tuple[Chunk, float]]:
        out: list[tuple[Chunk, float]] = []
        with self._connection() as conn:
            for start in range(0, len(ranked), 200):
                batch = ranked[start : start + 200]
                rows = dict(
                    conn.execute(
                        "SELECT id, chunk_json FROM chunks WHERE id = ANY(%s)", ([i for i, _ in batch],)
                    ).fetchall()
                )
                for chunk_row, score in batch:
                    if chunk_row in rows:
                        out.append((Chunk.model_validate_json(rows[chunk_row]), float(score)))
                        if len(out) == k:
                            return out
        return out

    def _search_tail(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        assert self.library_index is not None
        best: list[tuple[int, float]] = []
        with self._connection() as conn, conn.cursor(binary=True) as cursor:
            cursor.execute(
                f"SELECT id, {self._vector_bytes} FROM chunks WHERE id > %s",
                (self.library_index.indexed_through(),),
            )
            for ids, matrix in self._batches(cursor, 4096):
                best.extend(zip(ids.tolist(), (matrix @ query).tolist(), strict=True))
                best = sorted(best, key=lambda item: -item[1])[:k]
        return best

    def _batches(self, cursor: psycopg.Cursor[Any], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(int64 ids, (n, dimension) float32 matrix) batches of a `SELECT id, <vector bytes>` cursor."""
        while batch := cursor.fetchmany(size):
            ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
            yield ids, self._decode([bytes(row[1]) for row in batch])

    # --- what the FAISS fallback is built from (index.library_index.VectorSource) -----------------------

    def count_vectors_after(self, chunk_row: int) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT COUNT(*) FROM chunks WHERE id > %s", (chunk_row,)).fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def vector_snapshot(self) -> Iterator[VectorSnapshot]:
        """Every vector in id order, read in one REPEATABLE READ transaction (one generation exactly)."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            generation = int(self._meta("generation", conn) or 0)
            info = self._embedding_info(conn)
            with conn.cursor(name="pmcqa_vector_snapshot", binary=True) as cursor:
                cursor.itersize = 50_000
                cursor.execute(f"SELECT id, {self._vector_bytes} FROM chunks ORDER BY id")
                yield VectorSnapshot(generation, info.dimension if info else 1, self._batches(cursor, 50_000))

    # --- reindex ----------------------------------------------------------------------------------------

    def reindex(self, encoder: DocumentEncoder, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-embed every paper's chunks with `encoder` (one transaction per paper; resumable), then record
        it as the store's model and rebuild the library-wide index. Returns the number of papers re-embedded.

        With pgvector the HNSW index is dropped first (rows change model one paper at a time) and built once
        at the end; library-wide search is an exact scan meanwhile. A reindex cut short is resumed by running
        it again (papers already re-embedded reuse their vectors).
        """
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('reindex_target', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (encoder.model_name,),
            )
            if self.pgvector:
                conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
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
            if not self.pgvector:
                self._bump_generation(conn)
        if self.pgvector:
            self._rebuild_vector_index(encoder.dimension)
        if self.library_index is not None:
            self._changed_library = True
            self.library_index.rebuild()
        return done

    def _reembed_paper(self, encoder: DocumentEncoder, paper_id: str) -> bool:
        chunks = self.get_chunks(paper_id)
        hashes = [content_hash(encoder.model_name, encoder.document_prefix, c.text) for c in chunks]
        vectors = self._embed_missing(encoder, chunks, hashes)
        with self._transaction() as conn:
            self._lock_papers(conn, [paper_id])
            row = conn.execute("SELECT n_chunks FROM papers WHERE paper_id = %s", (paper_id,)).fetchone()
            if row is None or row[0] != len(chunks):  # deleted or replaced meanwhile: the new copy is current
                return False
            with conn.cursor() as cursor:
                cursor.executemany(
                    "UPDATE chunks SET content_hash = %s, embedding = %s"
                    " WHERE paper_id = %s AND ordinal = %s",
                    [
                        (h, self._encode(v), paper_id, c.ordinal)
                        for c, h, v in zip(chunks, hashes, vectors, strict=True)
                    ],
                )
            conn.execute(
                "UPDATE papers SET embedding_model = %s WHERE paper_id = %s", (encoder.model_name, paper_id)
            )
        return True
