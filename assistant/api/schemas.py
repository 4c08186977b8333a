r"""Request and response bodies of the HTTP API, with their constraints.

Text from customers is cleaned the same way everywhere: line breaks normalized to ``\n``, control
characters other than ``\n`` and ``\t`` removed (PostgreSQL rejects NUL, terminals and logs misread
the rest), surrounding whitespace trimmed. The message length limit comes from settings: the router
checks it and ``create_app`` writes it into the OpenAPI document; the model's own cap is a ceiling.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
)

from assistant.models import Conversation, Message

# Characters that never belong in a chat message: C0/C1 controls except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# A ceiling far above any sane setting; the configured limit (default 4000) is checked on top.
MESSAGE_HARD_LIMIT = 32_000


def clean_text(value: str) -> str:
    """Normalize line breaks, drop control characters, trim surrounding whitespace."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", value).strip()


def _not_blank(value: str) -> str:
    value = clean_text(value)
    if not value:
        raise ValueError("must contain some text")
    return value


def _clean_optional(value: str | None) -> str | None:
    return clean_text(value) or None if value is not None else None


def _clean_context(value: dict[str, Any]) -> dict[str, Any]:
    cleaned = {clean_text(k): clean_text(v) if isinstance(v, str) else v for k, v in value.items()}
    return {k: v for k, v in cleaned.items() if k}  # a key of nothing but control characters is dropped


# Some character that is neither whitespace nor a control character (what ``_not_blank`` enforces).
VISIBLE_PATTERN = r"[^\s\x00-\x1f\x7f-\x9f]"
MessageText = Annotated[
    str,
    Field(min_length=1, max_length=MESSAGE_HARD_LIMIT, pattern=VISIBLE_PATTERN),
    AfterValidator(_not_blank),
]
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")]
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
# BCP 47 language tags as browsers send them: "ja", "en-US", "zh-Hant-TW".
Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$", max_length=35)]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# Strict numbers: a lax int would turn an over-long string of digits into a number instead of refusing it.
ContextValue = Annotated[str, Field(max_length=1000)] | StrictInt | StrictFloat | StrictBool | None
Comment = Annotated[str | None, Field(max_length=2000), AfterValidator(_clean_optional)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationCreate(_Request):
    """Open a conversation for a known member (``member_id``) or an anonymous visitor."""

    member_id: Identifier | None = None
    visitor_id: Identifier | None = None
    channel: Channel = "web"
    locale: Locale = "ja"
    page_context: Annotated[
        dict[ContextKey, ContextValue], Field(max_length=20), AfterValidator(_clean_context)
    ] = Field(default_factory=dict, description="Where the customer is: page URL, title, product...")


class MessageCreate(_Request):
    """A customer's message."""

    text: MessageText


class FeedbackCreate(_Request):
    """Thumbs up or down on one of the bot's replies."""

    message_id: int = Field(ge=1)
    rating: Literal["up", "down"]
    comment: Comment = None


class CitationOut(BaseModel):
    """A source of an answer."""

    number: int
    title: str
    url: str | None
    chunk_id: str
    source_id: str


class MessageOut(BaseModel):
    """One message of a transcript; bot replies carry their decision, confidence and sources."""

    id: int
    seq: int
    role: Literal["customer", "bot", "operator", "system"]
    text: str
    created_at: datetime
    reply_to: int | None = None
    decision: Literal["answer", "clarify", "escalate", "take_message"] | None = None
    confidence: float | None = None
    reasons: list[str] = Field(default_factory=list)
    citations: list[CitationOut] = Field(default_factory=list)

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        """The API view of a stored message."""
        return cls(
            id=message.id,
            seq=message.seq,
            role=message.role,  # type: ignore[arg-type]  # CHECK constraint guarantees it
            text=message.text,
            created_at=message.created_at,
            reply_to=message.reply_to_id,
            decision=message.decision,  # type: ignore[arg-type]
            confidence=message.confidence,
            reasons=list(message.reasons or []),
            citations=[CitationOut(**c) for c in message.citations or []],
        )

    @classmethod
    def for_customer(cls, message: Message) -> MessageOut:
        """The customer's view: the bot's confidence and hand-off reasons are operator-only."""
        return cls.of(message).model_copy(update={"confidence": None, "reasons": []})


class ConversationOut(BaseModel):
    """A conversation without its messages."""

    id: uuid.UUID
    status: Literal["open", "escalated", "closed"]
    channel: str
    locale: str
    member_id: str | None
    visitor_id: str | None
    page_context: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationOut:
        """The API view of a stored conversation."""
        return cls(
            id=conversation.id,
            status=conversation.status,  # type: ignore[arg-type]
            channel=conversation.channel,
            locale=conversation.locale,
            member_id=conversation.customer.member_id if conversation.customer else None,
            visitor_id=conversation.visitor_id,
            page_context=conversation.page_context,
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
            closed_at=conversation.closed_at,
        )


class HandoffStatusOut(BaseModel):
    """What the customer knows about the people side: is a person on it, or how long is the wait.

    ``queue_position`` is 1 for the next conversation to be taken, null when not waiting;
    ``estimated_wait_seconds`` is null when nobody is on shift (the message waits for the next shift).
    """

    status: Literal["open", "escalated", "closed"]
    with_person: bool
    queue_position: int | None
    estimated_wait_seconds: float | None
    operators_on_shift: int


class TranscriptOut(ConversationOut):
    """A conversation with every message, in order, and (while escalated) the wait for a person.

    A customer key gets the customer's view of each message (no confidence or hand-off reasons).
    """

    messages: list[MessageOut]
    handoff: HandoffStatusOut | None = None


class TurnOut(BaseModel):
    """What a customer message produced: the stored message and the bot's reply.

    ``reply`` is null while the conversation is with people (escalated): the bot stays silent.
    """

    conversation_id: uuid.UUID
    status: Literal["open", "escalated", "closed"]
    message: MessageOut
    reply: MessageOut | None


class FeedbackOut(BaseModel):
    """A stored rating."""

    message_id: int
    rating: Literal["up", "down"]
    comment: str | None


class HealthOut(BaseModel):
    """Liveness and what the service runs with."""

    status: Literal["ok", "degraded"]
    database: bool
    index_chunks: int | None
    # The index generation serving turns (None for a responder that does not follow the index on disk).
    index_generation: str | None = None
    embedder: str | None = None
    llm: str | None


def normalize_locale(locale: str) -> str:
    """A language tag with canonical case: ``ja``, ``en-US``."""
    head, *rest = locale.split("-")
    return "-".join([head.lower(), *[p.upper() if len(p) == 2 else p for p in rest]])


class RateLimitIn(_Request):
    """A key's own rate limit, instead of its role's default."""

    per_minute: float = Field(gt=0, le=100_000)
    burst: int = Field(ge=1, le=10_000)


class ApiKeyCreate(_Request):
    """Issue a key. A publishable key (customer role only) may be embedded in a public web page."""

    role: Literal["customer", "operator", "admin"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    rate_limit: RateLimitIn | None = None
    publishable: bool = False


class ApiKeyOut(BaseModel):
    """A key as listed: never its secret."""

    id: int
    role: Literal["customer", "operator", "admin"]
    name: str
    prefix: str
    revoked: bool
    rate_limit: RateLimitIn | None


class ApiKeyIssued(ApiKeyOut):
    """A new key with its secret: shown once, store it now."""

    key: str


class CustomerUpsert(_Request):
    """What the client's CRM says about a member."""

    name: Annotated[str | None, Field(max_length=200), AfterValidator(_clean_optional)] = None
    plan: Annotated[str | None, Field(max_length=64), AfterValidator(_clean_optional)] = None
    vip: bool = False


class CustomerOut(BaseModel):
    """A known member."""

    member_id: str
    name: str | None
    plan: str | None
    vip: bool


class OperatorMessageCreate(_Request):
    """An operator's message, held for the undo window before the customer gets it.

    ``suggestion_set_id`` and ``draft_index`` say which suggested draft it started from (if any), so
    that we learn whether drafts are used as is, edited or ignored.
    """

    text: MessageText
    suggestion_set_id: int | None = Field(default=None, ge=1, le=2**62)
    draft_index: int | None = Field(default=None, ge=0, le=2)


class DeliveryOut(BaseModel):
    """An operator message on its way: ``pending`` until ``deliver_at`` (undo until then)."""

    id: int
    conversation_id: uuid.UUID
    operator_id: int
    text: str
    status: Literal["pending", "delivered", "cancelled"]
    created_at: datetime
    deliver_at: datetime
    delivered_at: datetime | None
    message_id: int | None
    suggestion_set_id: int | None
    draft_index: int | None


class DraftOut(BaseModel):
    """One suggested reply with its sources."""

    text: str
    citations: list[CitationOut]
    source_id: str
    generated: bool = False


class SuggestionSetOut(BaseModel):
    """Up to three drafts for the customer's latest message; ``outcome`` is set once you send."""

    id: int
    conversation_id: uuid.UUID
    for_message_id: int
    drafts: list[DraftOut]
    created_at: datetime
    outcome: Literal["used", "edited", "ignored"] | None
    chosen_index: int | None
    edit_similarity: float | None
