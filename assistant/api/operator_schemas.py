"""Request and response bodies of the operator endpoints (``/v1/operator``).

These carry operator-only data (confidence, hand-off reasons, summaries, internal notes); customer
endpoints never use them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from assistant.api.schemas import MESSAGE_HARD_LIMIT, VISIBLE_PATTERN, CitationOut, MessageOut, _not_blank
from assistant.handoff import AttemptedAnswer, HandoffPacket
from assistant.models import Conversation, Message, Operator, OperatorNote, Resolution

Tag = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]{0,63}$")]
SourceId = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]{0,199}$")]
NoteText = Annotated[
    str,
    Field(min_length=1, max_length=MESSAGE_HARD_LIMIT, pattern=VISIBLE_PATTERN),
    AfterValidator(_not_blank),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShiftIn(_Request):
    """Go on shift (take conversations) or off."""

    on_shift: StrictBool


class TransferIn(_Request):
    """Hand a conversation you own to another operator on shift."""

    operator_id: int = Field(ge=1, le=2**62)


class ResolveIn(_Request):
    """How the chat ended; closes it and stores the resolved-chat record."""

    outcome: Literal["resolved", "unresolved", "follow_up"]
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    answer_text: Annotated[str | None, Field(max_length=MESSAGE_HARD_LIMIT)] = None
    answer_source_ids: list[SourceId] = Field(default_factory=list, max_length=20)


class NoteIn(_Request):
    """An internal note: operators only, never shown to the customer."""

    text: NoteText


class OperatorOut(BaseModel):
    """An operator."""

    id: int
    name: str
    on_shift: bool
    max_concurrent: int
    last_seen_at: datetime | None

    @classmethod
    def of(cls, operator: Operator) -> OperatorOut:
        """The API view of an operator row."""
        return cls(
            id=operator.id,
            name=operator.name,
            on_shift=operator.on_shift,
            max_concurrent=operator.max_concurrent,
            last_seen_at=operator.last_seen_at,
        )


class ConversationStateOut(BaseModel):
    """Where a conversation stands in the workspace."""

    id: uuid.UUID
    status: Literal["open", "escalated", "closed"]
    assigned_operator_id: int | None
    priority: int
    queued_at: datetime | None
    claimed_at: datetime | None
    closed_at: datetime | None
    last_seq: int

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationStateOut:
        """The API view of a conversation's workspace state."""
        return cls(
            id=conversation.id,
            status=conversation.status,  # type: ignore[arg-type]
            assigned_operator_id=conversation.assigned_operator_id,
            priority=conversation.priority,
            queued_at=conversation.queued_at,
            claimed_at=conversation.claimed_at,
            closed_at=conversation.closed_at,
            last_seq=conversation.last_seq,
        )


class QueueItemOut(ConversationStateOut):
    """A waiting conversation as the queue lists it."""

    position: int
    member_id: str | None
    vip: bool


class OperatorMessageOut(MessageOut):
    """A message as operators see it: with the operator who wrote it."""

    operator_id: int | None = None

    @classmethod
    def of_message(cls, message: Message) -> OperatorMessageOut:
        """The operator's view of a stored message."""
        return cls(**MessageOut.of(message).model_dump(), operator_id=message.operator_id)


class NoteOut(BaseModel):
    """An internal note."""

    id: int
    operator_id: int
    text: str
    created_at: datetime

    @classmethod
    def of(cls, note: OperatorNote) -> NoteOut:
        """The API view of a note."""
        return cls(id=note.id, operator_id=note.operator_id, text=note.text, created_at=note.created_at)


class ResolutionOut(BaseModel):
    """The resolved-chat record."""

    conversation_id: uuid.UUID
    operator_id: int | None
    path: Literal["bot", "operator"]
    outcome: Literal["resolved", "unresolved", "follow_up"]
    tags: list[str]
    answer_text: str | None
    answer_source_ids: list[str]
    created_at: datetime

    @classmethod
    def of(cls, resolution: Resolution) -> ResolutionOut:
        """The API view of a resolution row."""
        return cls(
            conversation_id=resolution.conversation_id,
            operator_id=resolution.operator_id,
            path=resolution.path,  # type: ignore[arg-type]
            outcome=resolution.outcome,  # type: ignore[arg-type]
            tags=list(resolution.tags),
            answer_text=resolution.answer_text,
            answer_source_ids=list(resolution.answer_source_ids),
            created_at=resolution.created_at,
        )


class CustomerIdentityOut(BaseModel):
    """Who the customer is, and where that came from (our table or the CRM hook)."""

    member_id: str
    name: str | None
    plan: str | None
    vip: bool
    source: Literal["table", "lookup"]


class AttemptOut(BaseModel):
    """One of the bot's replies, with its confidence and sources."""

    message_id: int
    seq: int
    text: str
    decision: str | None
    confidence: float | None
    reasons: list[str]
    citations: list[CitationOut]
    question: str | None

    @classmethod
    def of(cls, attempt: AttemptedAnswer) -> AttemptOut:
        """The API view of an attempted answer."""
        return cls(
            message_id=attempt.message_id,
            seq=attempt.seq,
            text=attempt.text,
            decision=attempt.decision,
            confidence=attempt.confidence,
            reasons=list(attempt.reasons),
            citations=[CitationOut(**c) for c in attempt.citations],
            question=attempt.question,
        )


class SummaryOut(BaseModel):
    """The hand-off summary; ``method`` says whether a model wrote it."""

    text: str
    method: Literal["extractive", "generated"]
    model: str | None
    prompt_version: str | None


class HandoffPacketOut(BaseModel):
    """Everything needed to take the conversation over without asking the customer to start again."""

    conversation: ConversationStateOut
    channel: str
    locale: str
    page_context: dict[str, Any]
    customer: CustomerIdentityOut | None
    transcript: list[OperatorMessageOut]
    attempts: list[AttemptOut]
    decision: Literal["escalate", "take_message"] | None
    reasons: list[str]
    notes: list[NoteOut]
    queue_position: int | None
    summary: SummaryOut

    @classmethod
    def of(cls, packet: HandoffPacket) -> HandoffPacketOut:
        """The API view of a hand-off packet."""
        conversation, customer, summary = packet.conversation, packet.customer, packet.summary
        return cls(
            conversation=ConversationStateOut.of(conversation),
            channel=conversation.channel,
            locale=conversation.locale,
            page_context=conversation.page_context,
            customer=CustomerIdentityOut(**customer.__dict__) if customer else None,
            transcript=[OperatorMessageOut.of_message(m) for m in packet.transcript],
            attempts=[AttemptOut.of(a) for a in packet.attempts],
            decision=packet.decision,  # type: ignore[arg-type]
            reasons=list(packet.reasons),
            notes=[NoteOut.of(n) for n in packet.notes],
            queue_position=packet.queue_position,
            summary=SummaryOut(
                text=summary.text,
                method=summary.method,
                model=summary.model,
                prompt_version=summary.prompt_version,
            ),
        )
