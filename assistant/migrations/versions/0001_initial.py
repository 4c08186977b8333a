"""Initial schema: customers, API keys, conversations, messages, feedback, escalations, idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from assistant.models import BigId, JsonColumn, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created() -> sa.Column[object]:
    return sa.Column("created_at", UTCDateTime(), nullable=False)


def upgrade() -> None:
    """Create every table of the first release."""
    op.create_table(
        "customers",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("plan", sa.String(64)),
        sa.Column("vip", sa.Boolean(), nullable=False),
        _created(),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("member_id", name="uq_customers_member_id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("published_key", sa.String(64)),
        sa.Column("rate_limit_per_minute", sa.Float()),
        sa.Column("rate_limit_burst", sa.Integer()),
        _created(),
        sa.Column("revoked_at", UTCDateTime()),
        sa.CheckConstraint("role IN ('customer', 'operator', 'admin')", name="ck_api_keys_role"),
        sa.CheckConstraint(
            "published_key IS NULL OR role = 'customer'", name="ck_api_keys_published_customer_only"
        ),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    _create_conversations()
    _create_messages()
    _create_feedback_and_escalations()
    _create_idempotency_records()


def _create_conversations() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("api_key_id", BigId, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("customer_id", BigId, sa.ForeignKey("customers.id")),
        sa.Column("visitor_id", sa.String(128)),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("page_context", JsonColumn, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        _created(),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime()),
    )
    op.create_index("ix_conversations_api_key_id", "conversations", ["api_key_id"])
    op.create_index("ix_conversations_customer_id", "conversations", ["customer_id"])
    op.create_index("ix_conversations_status_updated_at", "conversations", ["status", "updated_at"])


def _create_messages() -> None:
    op.create_table(
        "messages",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Uuid(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        _created(),
        sa.Column("reply_to_id", BigId, sa.ForeignKey("messages.id")),
        sa.Column("decision", sa.String(16)),
        sa.Column("confidence", sa.Float()),
        sa.Column("reasons", JsonColumn),
        sa.Column("citations", JsonColumn),
        sa.Column("search_query", sa.Text()),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_id_seq"),
        sa.CheckConstraint("role IN ('customer', 'bot', 'operator', 'system')", name="ck_messages_role"),
    )


def _create_feedback_and_escalations() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "conversation_id",
            sa.Uuid(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("rating", sa.String(4), nullable=False),
        sa.Column("comment", sa.Text()),
        _created(),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("message_id", name="uq_feedback_message_id"),
        sa.CheckConstraint("rating IN ('up', 'down')", name="ck_feedback_rating"),
    )
    op.create_index("ix_feedback_conversation_id", "feedback", ["conversation_id"])
    op.create_table(
        "escalations",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Uuid(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id")),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reasons", JsonColumn, nullable=False),
        sa.Column("confidence", sa.Float()),
        _created(),
    )
    op.create_index("ix_escalations_conversation_id", "escalations", ["conversation_id"])
    op.create_index("ix_escalations_created_at", "escalations", ["created_at"])


def _create_idempotency_records() -> None:
    op.create_table(
        "idempotency_records",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("api_key_id", BigId, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("response", JsonColumn),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("locked_at", UTCDateTime(), nullable=False),
        _created(),
        sa.UniqueConstraint("api_key_id", "key", name="uq_idempotency_records_api_key_id_key"),
    )
    op.create_index("ix_idempotency_records_created_at", "idempotency_records", ["created_at"])


def downgrade() -> None:
    """Drop every table, dependants first."""
    for table in ("idempotency_records", "escalations", "feedback", "messages", "conversations"):
        op.drop_table(table)
    op.drop_table("api_keys")
    op.drop_table("customers")
