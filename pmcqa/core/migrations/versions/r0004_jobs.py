"""Ingest jobs in a PostgreSQL library (`ingest.jobs.PostgresJobStore`): jobs, their items, batch leases,
the worker registry and idempotency keys, so that no host keeps job state in a file.

The same tables and columns as the embedded `jobs.sqlite3` (`ingest.jobs._SCHEMA`), which stays its own file
beside a SQLite library (that file predates alembic and is created by `JobStore`): nothing to create there.
Times are Unix seconds (double precision); flags are integers 0/1, so one SQL text serves both backends.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_POSTGRES = """
CREATE TABLE IF NOT EXISTS jobs (
    id text PRIMARY KEY,
    created double precision NOT NULL,
    updated double precision NOT NULL,
    state text NOT NULL,
    refresh integer NOT NULL DEFAULT 0,
    total integer NOT NULL,
    error text,
    notice text,
    idempotency_key text,
    fingerprint text,
    request_id text
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_items (
    job_id text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position integer NOT NULL,
    requested text NOT NULL,
    batch integer NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    paper_id text,
    reason text,
    title text,
    chunks integer,
    finished double precision,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX IF NOT EXISTS job_items_batch ON job_items (job_id, batch, status);
CREATE TABLE IF NOT EXISTS job_batches (
    job_id text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    batch integer NOT NULL,
    done integer NOT NULL DEFAULT 0,
    enqueued double precision,
    owner text,
    lease_until double precision,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    PRIMARY KEY (job_id, batch)
);
CREATE INDEX IF NOT EXISTS job_batches_open ON job_batches (done, lease_until);
CREATE TABLE IF NOT EXISTS workers (
    name text PRIMARY KEY,
    queue text NOT NULL,
    last_seen double precision NOT NULL
)
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRES.split(";"):
            if statement.strip():
                op.execute(statement)
    op.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE IF EXISTS job_items, job_batches, jobs, workers")
    op.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
