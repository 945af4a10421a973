"""The shared NCBI rate limit of a PostgreSQL library without Redis (`ingest.shared_ratelimit`).

One row per limit key: the next free send slot on the server's clock (seconds since the epoch). SQLite
libraries are one host's, whose processes use an in-process limiter: nothing to create there.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TABLE IF NOT EXISTS ncbi_rate (key TEXT PRIMARY KEY, next_at DOUBLE PRECISION NOT NULL)"
        )
    op.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE IF EXISTS ncbi_rate")
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
