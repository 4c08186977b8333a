"""Operator workspace: operators, queue columns, notes, suggestions, deliveries with undo, resolutions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

On SQLite the new columns of ``conversations`` and ``messages`` are added in place (``ALTER TABLE ...
ADD COLUMN`` with an inline ``REFERENCES``): a batch *rebuild* would drop and re-create
``conversations``, and with foreign keys on (they are, see ``assistant.db``) dropping it would cascade
into every message. ``batch_alter_table(recreate="never")`` keeps it that way, and on PostgreSQL it is
a plain ``ALTER TABLE``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from assistant.models import BigId, JsonColumn, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created() -> sa.Column[object]:
    return sa.Column("created_at", UTCDateTime(), nullable=False)


def _conversation_fk() -> sa.Column[object]:
    return sa.Column(
        "conversation_id", sa.Uuid(), sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    """Create the operator tables and add the queue columns."""
    op.create_table(
        "operators",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("api_key_id", BigId, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("on_shift", sa.Boolean(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime()),
        _created(),
        sa.UniqueConstraint("api_key_id", name="uq_operators_api_key_id"),
    )
    _alter_conversations_and_messages()
    op.create_table(
        "operator_notes",
        sa.Column("id", BigId, primary_key=True),
        _conversation_fk(),
        sa.Column("operator_id", BigId, sa.ForeignKey("operators.id"), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        _created(),
    )
    op.create_index("ix_operator_notes_conversation_id", "operator_notes", ["conversation_id"])
    _create_suggestions_and_deliveries()
    _create_resolutions()


def _add_fk_column(table: str, column: str, sqlite: bool) -> None:
    if sqlite:
        # SQLite adds a column with an inline foreign key in place; see the module docstring.
        op.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER REFERENCES operators (id)")
        return
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column(column, BigId))
        batch.create_foreign_key(f"fk_{table}_{column}_operators", "operators", [column], ["id"])


def _alter_conversations_and_messages() -> None:
    sqlite = _is_sqlite()
    _add_fk_column("conversations", "assigned_operator_id", sqlite)
    with op.batch_alter_table("conversations", recreate="never") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("queued_at", UTCDateTime()))
        batch.add_column(sa.Column("claimed_at", UTCDateTime()))
        batch.create_index("ix_conversations_assigned_operator_id", ["assigned_operator_id"])
    _add_fk_column("messages", "operator_id", sqlite)
    # Conversations already waiting for people enter the queue in the order they were escalated.
    op.execute(
        "UPDATE conversations SET queued_at = updated_at WHERE status = 'escalated' AND queued_at IS NULL"
    )


def _create_suggestions_and_deliveries() -> None:
    op.create_table(
        "suggestion_sets",
        sa.Column("id", BigId, primary_key=True),
        _conversation_fk(),
        sa.Column("for_message_id", BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("drafts", JsonColumn, nullable=False),
        _created(),
        sa.Column("outcome", sa.String(16)),
        sa.Column("chosen_index", sa.Integer()),
        sa.Column("edit_similarity", sa.Float()),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('used', 'edited', 'ignored')", name="ck_suggestion_sets_outcome"
        ),
    )
    op.create_index("ix_suggestion_sets_conversation_id", "suggestion_sets", ["conversation_id"])
    op.create_table(
        "operator_deliveries",
        sa.Column("id", BigId, primary_key=True),
        _conversation_fk(),
        sa.Column("operator_id", BigId, sa.ForeignKey("operators.id"), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _created(),
        sa.Column("deliver_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime()),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("suggestion_set_id", BigId, sa.ForeignKey("suggestion_sets.id", ondelete="SET NULL")),
        sa.Column("draft_index", sa.Integer()),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'cancelled')", name="ck_operator_deliveries_status"
        ),
    )
    op.create_index("ix_operator_deliveries_conversation_id", "operator_deliveries", ["conversation_id"])
    op.create_index(
        "ix_operator_deliveries_status_deliver_at", "operator_deliveries", ["status", "deliver_at"]
    )


def _create_resolutions() -> None:
    op.create_table(
        "resolutions",
        sa.Column("id", BigId, primary_key=True),
        _conversation_fk(),
        sa.Column("operator_id", BigId, sa.ForeignKey("operators.id")),
        sa.Column("path", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("tags", JsonColumn, nullable=False),
        sa.Column("answer_text", sa.Text()),
        sa.Column("answer_source_ids", JsonColumn, nullable=False),
        _created(),
        sa.UniqueConstraint("conversation_id", name="uq_resolutions_conversation_id"),
        sa.CheckConstraint("path IN ('bot', 'operator')", name="ck_resolutions_path"),
        sa.CheckConstraint(
            "outcome IN ('resolved', 'unresolved', 'follow_up')", name="ck_resolutions_outcome"
        ),
    )


def downgrade() -> None:
    """Drop the operator tables and the queue columns."""
    for table in ("resolutions", "operator_deliveries", "suggestion_sets", "operator_notes"):
        op.drop_table(table)
    if _is_sqlite():
        # SQLite (3.35+) drops a plain column in place, but not one that is indexed or has a foreign
        # key; the index goes first and ``_drop_sqlite_fk_column`` handles the rest.
        op.drop_index("ix_conversations_assigned_operator_id", table_name="conversations")
        for table, column in (("messages", "operator_id"), ("conversations", "assigned_operator_id")):
            _drop_sqlite_fk_column(table, column)
        for column in ("claimed_at", "queued_at", "priority"):
            op.execute(f"ALTER TABLE conversations DROP COLUMN {column}")
    else:
        with op.batch_alter_table("messages") as batch:
            batch.drop_constraint("fk_messages_operator_id_operators", type_="foreignkey")
            batch.drop_column("operator_id")
        with op.batch_alter_table("conversations") as batch:
            batch.drop_index("ix_conversations_assigned_operator_id")
            batch.drop_constraint("fk_conversations_assigned_operator_id_operators", type_="foreignkey")
            for column in ("claimed_at", "queued_at", "priority", "assigned_operator_id"):
                batch.drop_column(column)
    op.drop_table("operators")


def _drop_sqlite_fk_column(table: str, column: str) -> None:
    # SQLite refuses DROP COLUMN on a column with a foreign key. Editing the stored CREATE TABLE text
    # (writable_schema) removes the REFERENCES clause without rebuilding the table, which would
    # cascade-delete messages with foreign keys on; then the plain column can be dropped.
    clause = f"{column} INTEGER REFERENCES operators (id)"
    bind = op.get_bind()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = ?",
        (clause, f"{column} INTEGER", table),
    )
    bind.exec_driver_sql("PRAGMA writable_schema=OFF")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
