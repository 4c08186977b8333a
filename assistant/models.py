"""The database tables, as typed SQLAlchemy 2 models.

The schema is owned by the Alembic migrations in ``assistant/migrations``; these classes must match
them (a test compares the two). Columns whose values grow with the product (conversation status, a
reply's decision) are plain strings validated in Python, so later migrations need not rebuild SQLite
tables to widen a CHECK constraint. Roles and ratings are closed sets and carry named CHECKs.

Timestamps are timezone-aware UTC on both SQLite and PostgreSQL (see ``UTCDateTime``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ConversationStatus = Literal["open", "escalated", "closed"]
MessageRole = Literal["customer", "bot", "operator", "system"]
Rating = Literal["up", "down"]
KeyRole = Literal["customer", "operator", "admin"]

CONVERSATION_STATUSES: tuple[ConversationStatus, ...] = ("open", "escalated", "closed")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JsonColumn = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store aware ones as UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back as timezone-aware UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the naming convention every migration relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonColumn}


class Customer(Base):
    """A known customer (a member of the client's service), looked up by member id."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    plan: Mapped[str | None] = mapped_column(String(64))
    vip: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 and a short display prefix are stored (see ``published_key``)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('customer', 'operator', 'admin')", name="role"),
        CheckConstraint("published_key IS NULL OR role = 'customer'", name="published_customer_only"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A publishable widget key (customer role only) is public by design: it is embedded in the widget
    # page, so it is kept in clear to serve it again after a restart. Every other key: hash only.
    published_key: Mapped[str | None] = mapped_column(String(64))
    # None means the role's default from settings.
    rate_limit_per_minute: Mapped[float | None] = mapped_column(Float)
    rate_limit_burst: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Conversation(Base):
    """One chat. Bound to the API key that created it: a customer key sees only its own."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_status_updated_at", "status", "updated_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    # An anonymous visitor's id from the widget, when the customer is not a known member.
    visitor_id: Mapped[str | None] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(32), default="web")
    locale: Mapped[str] = mapped_column(String(35), default="ja")
    page_context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="open")
    # The last message sequence number handed out; incremented atomically per message.
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()
    # The operator workspace (revision 0002): who owns it, its queue priority (VIP > 0), when it
    # entered the queue and when a person claimed it.
    assigned_operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queued_at: Mapped[datetime | None] = mapped_column()
    claimed_at: Mapped[datetime | None] = mapped_column()

    customer: Mapped[Customer | None] = relationship(lazy="joined")


class Message(Base):
    """One message of a conversation, numbered 1, 2, 3... by ``seq``; bot replies carry their decision."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        CheckConstraint("role IN ('customer', 'bot', 'operator', 'system')", name="role"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The customer message a bot reply answers.
    reply_to_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    decision: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[list[str] | None] = mapped_column(JsonColumn)
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonColumn)
    search_query: Mapped[str | None] = mapped_column(Text)
    # The distinct sources (FAQ / manual ids) the bot's search returned for this reply, best first.
    retrieved: Mapped[list[str] | None] = mapped_column(JsonColumn)
    # Who wrote an operator message.
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))


class Feedback(Base):
    """A customer's thumbs up or down on one bot message (the latest rating wins)."""

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("rating IN ('up', 'down')", name="rating"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    rating: Mapped[str] = mapped_column(String(4))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Escalation(Base):
    """A hand-off to people: why and how sure the bot was. The operator queue reads these."""

    __tablename__ = "escalations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    # The bot message that announced the hand-off.
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    decision: Mapped[str] = mapped_column(String(16))  # "escalate" or "take_message"
    reasons: Mapped[list[str]] = mapped_column(JsonColumn)
    confidence: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class IdempotencyRecord(Base):
    """What a request with an ``Idempotency-Key`` did, so a retry replays it instead of redoing it.

    ``status_code`` is NULL while the first request is still running; ``locked_at`` lets a retry take
    over a request whose process died (after the lease in settings). ``message_id`` is the stored
    customer message, so a take-over answers it instead of storing it twice.
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    locked_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


ResolutionPath = Literal["bot", "operator"]
ResolutionOutcome = Literal["resolved", "unresolved", "follow_up"]
DeliveryStatus = Literal["pending", "delivered", "cancelled"]
SuggestionOutcome = Literal["used", "edited", "ignored"]


class Operator(Base):
    """A person answering customers: one row per operator API key, created on the key's first use."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    on_shift: Mapped[bool] = mapped_column(default=False)
    max_concurrent: Mapped[int] = mapped_column(Integer, default=5)
    last_seen_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OperatorNote(Base):
    """An operator's internal note on a conversation: operator-only, never shown to the customer."""

    __tablename__ = "operator_notes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SuggestionSet(Base):
    """Up to three drafted replies to one customer message, and what the operator did with them."""

    __tablename__ = "suggestion_sets"
    __table_args__ = (
        CheckConstraint("outcome IS NULL OR outcome IN ('used', 'edited', 'ignored')", name="outcome"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    for_message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    # [{text, citations: [{number, title, url, chunk_id, source_id}], source_id}]
    drafts: Mapped[list[dict[str, Any]]] = mapped_column(JsonColumn)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str | None] = mapped_column(String(16))
    chosen_index: Mapped[int | None] = mapped_column(Integer)
    edit_similarity: Mapped[float | None] = mapped_column(Float)


class OperatorDelivery(Base):
    """An operator message held for the undo window; delivery flips it pending -> delivered once."""

    __tablename__ = "operator_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'cancelled')", name="status"),
        Index("ix_operator_deliveries_status_deliver_at", "status", "deliver_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deliver_at: Mapped[datetime] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    suggestion_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("suggestion_sets.id", ondelete="SET NULL")
    )
    draft_index: Mapped[int | None] = mapped_column(Integer)


class Resolution(Base):
    """How a chat ended (the resolved-chat record the evaluation suite reads); one per conversation."""

    __tablename__ = "resolutions"
    __table_args__ = (
        CheckConstraint("path IN ('bot', 'operator')", name="path"),
        CheckConstraint("outcome IN ('resolved', 'unresolved', 'follow_up')", name="outcome"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), unique=True
    )
    # NULL when the bot alone closed the chat.
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    path: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    tags: Mapped[list[str]] = mapped_column(JsonColumn, default=list)
    answer_text: Mapped[str | None] = mapped_column(Text)
    # The FAQ / manual source ids the answer came from.
    answer_source_ids: Mapped[list[str]] = mapped_column(JsonColumn, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- voice of the customer (revision 0003; assistant/voc) -------------------------------------------


class SurveyResponse(Base):
    """A customer's post-chat survey, once per closed conversation.

    CSAT 1-6 (5 = very satisfied, 6 = 「感動した」, delighted), CES 0-10 (higher = easier), NPS 0-10.
    ``path`` and ``cited_source_ids`` are copied from the conversation when the survey arrives.
    """

    __tablename__ = "survey_responses"
    __table_args__ = (
        CheckConstraint("path IN ('bot', 'operator')", name="path"),
        CheckConstraint("csat IS NULL OR csat BETWEEN 1 AND 6", name="csat"),
        CheckConstraint("ces IS NULL OR ces BETWEEN 0 AND 10", name="ces"),
        CheckConstraint("nps IS NULL OR nps BETWEEN 0 AND 10", name="nps"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), unique=True
    )
    path: Mapped[str] = mapped_column(String(16))
    csat: Mapped[int | None] = mapped_column(Integer)
    ces: Mapped[int | None] = mapped_column(Integer)
    nps: Mapped[int | None] = mapped_column(Integer)
    resolved: Mapped[bool | None] = mapped_column()
    reasons: Mapped[list[str]] = mapped_column(JsonColumn, default=list)
    comment: Mapped[str | None] = mapped_column(Text)
    cited_source_ids: Mapped[list[str]] = mapped_column(JsonColumn, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class TrendAlert(Base):
    """A surging topic in customer messages, as raised by ``assistant.voc.alerts``."""

    __tablename__ = "trend_alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    words: Mapped[list[str]] = mapped_column(JsonColumn)
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    count: Mapped[int] = mapped_column(Integer)
    window_messages: Mapped[int] = mapped_column(Integer)
    baseline_messages: Mapped[int] = mapped_column(Integer)
    baseline_count: Mapped[int] = mapped_column(Integer)
    expected: Mapped[float] = mapped_column(Float)
    ratio: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    examples: Mapped[list[str]] = mapped_column(JsonColumn, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column()
    delivery_error: Mapped[str | None] = mapped_column(Text)


class ReviewItem(Base):
    """A question the bot failed, waiting for a reviewer: link it to an FAQ entry, draft one, or dismiss."""

    __tablename__ = "review_items"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'linked', 'drafted', 'dismissed')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    question: Mapped[str] = mapped_column(Text)
    # Why it is here: escalated, low_confidence, thumbs_down, bad_survey.
    reasons: Mapped[list[str]] = mapped_column(JsonColumn)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    faq_id: Mapped[str | None] = mapped_column(String(128))
    draft_question: Mapped[str | None] = mapped_column(Text)
    draft_answer: Mapped[str | None] = mapped_column(Text)
    reviewer_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column()
    # When ``madoguchi voc learn`` wrote the change into the knowledge base and the index.
    applied_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
