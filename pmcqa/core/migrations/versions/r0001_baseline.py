"""Baseline: papers, chunks with their vectors, aliases, ingest status (and, in PostgreSQL, the id map).

Revision ID: 0001
Revises: (none)

SQLite: the schema pmcqa wrote before alembic, verbatim (IF NOT EXISTS), so a file from then is adopted as it
is. PostgreSQL: the same tables; vectors are a pgvector `vector` column when the extension can be created,
else float32 bytes (`meta.vector_storage` says which; the store then searches the library with a FAISS file).
"""

from __future__ import annotations

from alembic import op

from pmcqa.core import db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQLITE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS papers (
    paper_id TEXT PRIMARY KEY,
    pmid TEXT, doi TEXT, title TEXT NOT NULL DEFAULT '', journal TEXT, year TEXT, license TEXT,
    article_type TEXT, status TEXT NOT NULL, source TEXT,
    n_chunks INTEGER NOT NULL,
    embedding_model TEXT NOT NULL,
    record_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: FAISS ids stay unambiguous after deletes
    paper_id TEXT NOT NULL REFERENCES papers(paper_id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    content_hash BLOB NOT NULL,
    chunk_json TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (paper_id, ordinal)
);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks(content_hash);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    paper_id TEXT NOT NULL REFERENCES papers(paper_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS aliases_by_paper ON aliases(paper_id);
CREATE TABLE IF NOT EXISTS ingest_status (
    paper_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0');
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1');
"""

_POSTGRES = """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE papers (
    paper_id text PRIMARY KEY,
    pmid text, doi text, title text NOT NULL DEFAULT '', journal text, year text, license text,
    article_type text, status text NOT NULL, source text,
    n_chunks integer NOT NULL,
    embedding_model text NOT NULL,
    record_json text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE TABLE chunks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused (FAISS fallback ids)
    paper_id text NOT NULL REFERENCES papers(paper_id) ON DELETE CASCADE,
    ordinal integer NOT NULL,
    chunk_id text NOT NULL,
    content_hash bytea NOT NULL,
    chunk_json text NOT NULL,
    embedding {vector_type} NOT NULL,
    UNIQUE (paper_id, ordinal)  -- the B-tree per-paper reads go through
);
-- Keep vectors in the row (compression gains nothing on floats), so a paper's vectors are read with its
-- rows and not through a TOAST lookup per chunk. chunk_json is what moves out of line when a row is large.
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN;
CREATE INDEX chunks_by_hash ON chunks (content_hash);
CREATE TABLE aliases (
    alias text PRIMARY KEY,
    paper_id text NOT NULL REFERENCES papers(paper_id) ON DELETE CASCADE
);
CREATE INDEX aliases_by_paper ON aliases (paper_id);
CREATE TABLE ingest_status (
    paper_id text PRIMARY KEY,
    status text NOT NULL,
    reason text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE TABLE idmap (
    kind text NOT NULL,
    key text NOT NULL,
    pmcid text NOT NULL,
    pmid text,
    doi text,
    updated double precision NOT NULL,
    PRIMARY KEY (kind, key)
);
INSERT INTO meta(key, value) VALUES ('generation', '0'), ('schema_version', '1'),
    ('vector_storage', '{vector_storage}');
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        script = _SQLITE
    else:
        pgvector = db.pgvector_usable(bind)
        script = _POSTGRES.format(
            vector_type="vector" if pgvector else "bytea", vector_storage="pgvector" if pgvector else "bytea"
        )
    for statement in script.split(";"):  # one statement per call: drivers refuse scripts with parameters
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: remove the database (or SQLite file) instead")
