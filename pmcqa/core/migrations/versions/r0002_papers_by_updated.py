"""An index for listing papers most recently stored first (`GET /papers`) without sorting the library.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS papers_by_updated ON papers (updated_at DESC, paper_id)")
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS papers_by_updated")
    op.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
