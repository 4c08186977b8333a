"""Voice of the customer: survey responses, trend alerts, the review queue of failed questions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Only new tables: nothing existing is altered, so SQLite needs no batch rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from assistant.models import BigId, JsonColumn, UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created() -> sa.Column[object]:
    return sa.Column("created_at", UTCDateTime(), nullable=False)


def _conversation_fk() -> sa.Column[object]:
    return sa.Column(
        "conversation_id", sa.Uuid(), sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    """Create the survey, trend-alert and review-queue tables."""
    op.create_table(
        "survey_responses",
        sa.Column("id", BigId, primary_key=True),
        _conversation_fk(),
        sa.Column("path", sa.String(16), nullable=False),
        sa.Column("csat", sa.Integer()),
        sa.Column("ces", sa.Integer()),
        sa.Column("nps", sa.Integer()),
        sa.Column("resolved", sa.Boolean()),
        sa.Column("reasons", JsonColumn, nullable=False),
        sa.Column("comment", sa.Text()),
        sa.Column("cited_source_ids", JsonColumn, nullable=False),
        _created(),
        sa.UniqueConstraint("conversation_id", name="uq_survey_responses_conversation_id"),
        sa.CheckConstraint("path IN ('bot', 'operator')", name="ck_survey_responses_path"),
        sa.CheckConstraint("csat IS NULL OR csat BETWEEN 1 AND 6", name="ck_survey_responses_csat"),
        sa.CheckConstraint("ces IS NULL OR ces BETWEEN 0 AND 10", name="ck_survey_responses_ces"),
        sa.CheckConstraint("nps IS NULL OR nps BETWEEN 0 AND 10", name="ck_survey_responses_nps"),
    )
    op.create_index("ix_survey_responses_created_at", "survey_responses", ["created_at"])
    op.create_table(
        "trend_alerts",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("words", JsonColumn, nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("window_end", UTCDateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("window_messages", sa.Integer(), nullable=False),
        sa.Column("baseline_messages", sa.Integer(), nullable=False),
        sa.Column("baseline_count", sa.Integer(), nullable=False),
        sa.Column("expected", sa.Float(), nullable=False),
        sa.Column("ratio", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=False),
        sa.Column("examples", JsonColumn, nullable=False),
        _created(),
        sa.Column("delivered_at", UTCDateTime()),
        sa.Column("delivery_error", sa.Text()),
    )
    op.create_index("ix_trend_alerts_created_at", "trend_alerts", ["created_at"])
    _create_review_items()


def _create_review_items() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        _conversation_fk(),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("reasons", JsonColumn, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("faq_id", sa.String(128)),
        sa.Column("draft_question", sa.Text()),
        sa.Column("draft_answer", sa.Text()),
        sa.Column("reviewer_key_id", BigId, sa.ForeignKey("api_keys.id")),
        sa.Column("reviewed_at", UTCDateTime()),
        sa.Column("applied_at", UTCDateTime()),
        _created(),
        sa.UniqueConstraint("message_id", name="uq_review_items_message_id"),
        sa.CheckConstraint(
            "status IN ('pending', 'linked', 'drafted', 'dismissed')", name="ck_review_items_status"
        ),
    )
    op.create_index("ix_review_items_conversation_id", "review_items", ["conversation_id"])
    op.create_index("ix_review_items_status", "review_items", ["status"])


def downgrade() -> None:
    """Drop the voice-of-the-customer tables."""
    for table in ("review_items", "trend_alerts", "survey_responses"):
        op.drop_table(table)
