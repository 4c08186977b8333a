"""Log what each bot turn retrieved, not only what it cited: the audit's "never retrieved".

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

One nullable JSON column on ``messages``: the distinct knowledge sources (FAQ ids, manual ids) of the
turn's search hits, best first. Adding a nullable column needs no batch rebuild on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from assistant.models import JsonColumn

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``messages.retrieved``."""
    op.add_column("messages", sa.Column("retrieved", JsonColumn, nullable=True))


def downgrade() -> None:
    """Drop ``messages.retrieved`` (a plain DROP COLUMN: SQLite 3.35+ does it in place, and a batch
    rebuild would turn 0002's inline foreign key into a table constraint that its own downgrade
    cannot drop)."""
    op.drop_column("messages", "retrieved")
