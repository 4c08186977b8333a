"""Conversations and their messages in the database: open, append, answer, rate, close, read.

Every function takes an open ``Session`` and leaves committing to the caller, so one request's writes
land together. Message numbers (``seq``) come from an atomic increment of the conversation's
``last_seq`` that also refuses closed conversations: safe with several writers and several replicas.

Errors: ``ConversationNotFoundError`` (unknown, or not visible to the key), ``ConversationClosedError``,
``MessageNotFoundError`` and ``NotRateableError`` (feedback on a message that is not a bot reply).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from assistant.answer import Citation
from assistant.desk import on_shift_since, waiting_count
from assistant.events import mark_changed
from assistant.keys import KeyInfo
from assistant.models import Conversation, Customer, Escalation, Feedback, Message, Operator, Rating, utcnow

HANDOFF_DECISIONS = ("escalate", "take_message")
# Queue priority of a VIP member's hand-off (others get 0): VIPs are taken first.
VIP_PRIORITY = 10
# Who speaks in the history a turn sees (system notes are for people, not for the bot).
HISTORY_ROLES = ("customer", "bot", "operator")


class ConversationNotFoundError(LookupError):
    """No conversation with this id is visible to the caller."""


class ConversationClosedError(RuntimeError):
    """The conversation is closed: it takes no more messages."""


class MessageNotFoundError(LookupError):
    """No message with this id in the conversation."""


class NotRateableError(ValueError):
    """Only the bot's replies can be rated."""


@dataclass(frozen=True)
class NewConversation:
    """What a client says about a conversation it opens."""

    member_id: str | None = None
    visitor_id: str | None = None
    channel: str = "web"
    locale: str = "ja"
    page_context: dict[str, Any] | None = None


@dataclass(frozen=True)
class TurnContext:
    """What the database knows that a turn needs: earlier messages and the customer's standing."""

    history: tuple[tuple[str, str], ...]  # (role, text), oldest first, without the current message
    thumbs_down: int
    vip: bool
    locale: str
    queue_length: int  # conversations waiting for people (handed over, not yet taken)
    answered_sources: tuple[str, ...] = ()  # entries the bot answered from, oldest first
    last_decision: str | None = None  # the decision of the bot's latest reply
    on_shift: int = 0  # operators on shift and present


def _upsert_customer(session: Session, member_id: str) -> Customer:
    query = select(Customer).where(Customer.member_id == member_id)
    customer = session.scalar(query)
    if customer is not None:
        return customer
    try:
        # A savepoint, so losing a race with another request for the same new member is harmless.
        with session.begin_nested():
            customer = Customer(member_id=member_id)
            session.add(customer)
        return customer
    except IntegrityError:
        return session.scalars(query).one()


def open_conversation(session: Session, key: KeyInfo, new: NewConversation) -> Conversation:
    """Create a conversation bound to ``key``; a member id links (or creates) its customer row."""
    customer = _upsert_customer(session, new.member_id) if new.member_id else None
    conversation = Conversation(
        id=uuid.uuid4(),
        api_key_id=key.id,
        customer=customer,
        visitor_id=new.visitor_id,
        channel=new.channel,
        locale=new.locale,
        page_context=dict(new.page_context or {}),
        status="open",
        last_seq=0,
    )
    session.add(conversation)
    session.flush()
    return conversation


@dataclass(frozen=True)
class ConversationState:
    """The columns of a conversation that a customer turn reads (``conversation_state``)."""

    id: uuid.UUID
    status: str
    customer_id: int | None
    locale: str
    assigned_operator_id: int | None


def conversation_state(session: Session, conversation_id: uuid.UUID, key: KeyInfo) -> ConversationState:
    """What a turn reads of the conversation, if this key may see it (as ``find_conversation``).

    One Core SELECT of five columns: loading the ``Conversation`` (and its customer) through the ORM
    costs a customer turn more Python than the rest of storing its message.
    """
    row = session.execute(_CONVERSATION_STATE, {"conversation_id": conversation_id}).one_or_none()
    if row is None or not _may_see(key, row.api_key_id):
        raise ConversationNotFoundError(f"no conversation {conversation_id}")
    return ConversationState(row.id, row.status, row.customer_id, row.locale, row.assigned_operator_id)


def find_conversation(session: Session, conversation_id: uuid.UUID, key: KeyInfo) -> Conversation:
    """The conversation, if this key may see it: customer keys see only the ones they created."""
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or not _may_see(key, conversation.api_key_id):
        raise ConversationNotFoundError(f"no conversation {conversation_id}")
    return conversation


def _may_see(key: KeyInfo, opened_by: int) -> bool:
    """Customer keys see only the conversations they opened; operator and admin keys see all."""
    return key.role != "customer" or opened_by == key.id


# The statements of every customer turn, built once: building a SQLAlchemy statement costs more
# Python than running it on SQLite (its parameters are bound per call).
_conversations = cast(Table, Conversation.__table__)
# One UPDATE both numbers the message and refuses a closed conversation; on PostgreSQL its row lock
# serializes concurrent messages of one conversation until commit. A Core statement on the table:
# the session's identity map is not synchronized (nothing in it reads ``last_seq``).
_NEXT_SEQ = (
    update(_conversations)
    .where(_conversations.c.id == bindparam("conversation_id"), _conversations.c.status != "closed")
    .values(
        last_seq=_conversations.c.last_seq + 1,
        updated_at=bindparam("now", type_=_conversations.c.updated_at.type),
    )
    .returning(_conversations.c.last_seq)
)
_EARLIER_MESSAGES = (
    select(Message.role, Message.text, Message.decision, Message.citations)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.seq < bindparam("seq"),
        Message.role.in_(HISTORY_ROLES),
    )
    .order_by(Message.seq)
)
_TURN_COUNTS = select(
    # thumbs down in this conversation
    select(func.count())
    .select_from(Feedback)
    .where(Feedback.conversation_id == bindparam("conversation_id"), Feedback.rating == "down")
    .scalar_subquery(),
    select(Customer.vip).where(Customer.id == bindparam("customer_id")).scalar_subquery(),
    waiting_count(),
    on_shift_since(bindparam("seen_since", type_=Operator.__table__.c.last_seen_at.type)),
)


# A reply of the bot's that hands nothing over, to a conversation the bot still serves: the same
# numbering, refused also once a person owns the conversation, and telling its status. Used by
# ``add_served_reply``, which then needs neither the conversation loaded nor the ORM's flush.
_NEXT_SERVED_SEQ = (
    update(_conversations)
    .where(
        _conversations.c.id == bindparam("conversation_id"),
        _conversations.c.status != "closed",
        _conversations.c.assigned_operator_id.is_(None),
    )
    .values(
        last_seq=_conversations.c.last_seq + 1,
        updated_at=bindparam("now", type_=_conversations.c.updated_at.type),
    )
    .returning(_conversations.c.last_seq, _conversations.c.status)
)
_CONVERSATION_STATE = select(
    _conversations.c.id,
    _conversations.c.api_key_id,
    _conversations.c.status,
    _conversations.c.customer_id,
    _conversations.c.locale,
    _conversations.c.assigned_operator_id,
).where(_conversations.c.id == bindparam("conversation_id"))
_messages = cast(Table, Message.__table__)
_INSERT_MESSAGE = insert(_messages).returning(_messages.c.id)


def _next_seq(session: Session, conversation_id: uuid.UUID, now: datetime) -> int:
    params = {"conversation_id": conversation_id, "now": now}
    seq: int | None = session.execute(_NEXT_SEQ, params).scalar_one_or_none()
    if seq is None:
        raise ConversationClosedError(f"conversation {conversation_id} is closed")
    return seq


def add_message(
    session: Session, conversation_id: uuid.UUID, role: str, text: str, **bot_fields: Any
) -> Message:
    """Append a message with the next sequence number."""
    now = utcnow()
    message = Message(
        conversation_id=conversation_id,
        seq=_next_seq(session, conversation_id, now),
        role=role,
        text=text,
        created_at=now,
        **bot_fields,
    )
    session.add(message)
    session.flush()
    return message


def append_message(session: Session, conversation_id: uuid.UUID, role: str, text: str) -> Message:
    """``add_message`` in two Core statements, for a customer turn's hot path.

    The message is inserted without the ORM's unit of work (its flush costs more Python than SQLite
    takes to run both statements) and announced to live streams (``assistant.events``) as a flushed
    one would be. The ``Message`` returned is not in the session: read it, do not change it.
    """
    now = utcnow()
    seq = _next_seq(session, conversation_id, now)
    return _insert_message(session, conversation_id, seq, role, text, now)


def _insert_message(
    session: Session, conversation_id: uuid.UUID, seq: int, role: str, text: str, now: datetime,
    **fields: Any,
) -> Message:
    """The Core INSERT of a numbered message, announced to live streams; the row as a detached ``Message``."""
    values = {"conversation_id": conversation_id, "seq": seq, "role": role, "text": text, "created_at": now,
              **fields}
    message_id: int = session.execute(_INSERT_MESSAGE, values).scalar_one()
    mark_changed(session, conversation_id)
    return Message(id=message_id, **values)


def citation_record(citation: Citation) -> dict[str, Any]:
    """A citation as stored in the message's JSON column."""
    return {
        "number": citation.number,
        "title": citation.title,
        "url": citation.url,
        "chunk_id": citation.chunk_id,
        "source_id": citation.source_id,
    }


@dataclass(frozen=True)
class BotReply:
    """A bot reply as stored: the text and the decision behind it."""

    text: str
    decision: str
    confidence: float | None
    reasons: tuple[str, ...]
    citations: tuple[Citation, ...] = ()
    search_query: str | None = None
    retrieved: tuple[str, ...] = ()  # distinct sources of the search hits, best first


def _reply_columns(reply: BotReply, reply_to_id: int) -> dict[str, Any]:
    """A bot reply's columns besides its conversation, number, role, text and time."""
    return {
        "reply_to_id": reply_to_id,
        "decision": reply.decision,
        "confidence": reply.confidence,
        "reasons": list(reply.reasons),
        "citations": [citation_record(c) for c in reply.citations],
        "search_query": reply.search_query,
        "retrieved": list(reply.retrieved),
    }


def add_bot_reply(
    session: Session, conversation: Conversation, reply_to: Message, reply: BotReply
) -> Message:
    """Store the bot's reply to ``reply_to``; a hand-off also queues an escalation for people."""
    message = add_message(session, conversation.id, "bot", reply.text, **_reply_columns(reply, reply_to.id))
    if reply.decision in HANDOFF_DECISIONS:
        session.add(
            Escalation(
                conversation_id=conversation.id,
                message_id=message.id,
                decision=reply.decision,
                reasons=list(reply.reasons),
                confidence=reply.confidence,
            )
        )
        conversation.status = "escalated"
        if conversation.queued_at is None:  # it enters the operators' queue now
            conversation.queued_at = message.created_at
        conversation.priority = priority_of(conversation.customer)
    session.flush()
    return message


def add_served_reply(
    session: Session, conversation_id: uuid.UUID, reply_to_id: int, reply: BotReply
) -> tuple[Message, str] | None:
    """Store a reply that hands nothing over (an answer, a clarifying question) in two Core statements.

    Returns the stored message (not in the session) and the conversation's status; None, having
    written nothing, when the conversation is closed or a person owns it (the caller loads it to
    tell which). Raises ``ValueError`` for a hand-off: ``add_bot_reply`` stores those, as it also
    queues the conversation for people.
    """
    if reply.decision in HANDOFF_DECISIONS:
        raise ValueError(f"a {reply.decision!r} reply hands over: store it with add_bot_reply")
    now = utcnow()
    row = session.execute(_NEXT_SERVED_SEQ, {"conversation_id": conversation_id, "now": now}).one_or_none()
    if row is None:
        return None
    message = _insert_message(session, conversation_id, row.last_seq, "bot", reply.text, now,
                              **_reply_columns(reply, reply_to_id))
    return message, row.status


def priority_of(customer: Customer | None) -> int:
    """A hand-off's queue priority: VIP members first."""
    return VIP_PRIORITY if customer is not None and customer.vip else 0


def record_queued_handoff(session: Session, conversation: Conversation, reply: BotReply) -> Escalation:
    """Keep a hand-off decision taken while the conversation already waits for people (no message)."""
    escalation = Escalation(
        conversation_id=conversation.id,
        message_id=None,
        decision=reply.decision,
        reasons=list(reply.reasons),
        confidence=reply.confidence,
    )
    session.add(escalation)
    session.flush()
    return escalation


def turn_context(
    session: Session,
    conversation: Conversation | ConversationState,
    message: Message,
    limit: int,
    *,
    now: datetime | None = None,
    presence: timedelta = timedelta(minutes=15),
) -> TurnContext:
    """What a turn needs from the database about the conversation before ``message``, in two queries.

    The last ``limit`` messages, thumbs-down count, VIP flag, the desk (conversations waiting for
    people, operators on shift and seen within ``presence`` of ``now``), the entries the bot answered
    from (its first citation per answer) and the decision of its latest reply.
    """
    earlier = session.execute(
        _EARLIER_MESSAGES, {"conversation_id": conversation.id, "seq": message.seq}
    ).all()
    counts = session.execute(
        _TURN_COUNTS,
        {
            "conversation_id": conversation.id,
            "customer_id": conversation.customer_id,
            "seen_since": (now or utcnow()) - presence,
        },
    ).one()
    bot_replies = [row for row in earlier if row.role == "bot"]
    return TurnContext(
        history=tuple((row.role, row.text) for row in (earlier[-limit:] if limit else ())),
        thumbs_down=counts[0] or 0,
        vip=bool(counts[1]),
        locale=conversation.locale,
        queue_length=counts[2] or 0,
        answered_sources=_answered_sources(bot_replies),
        last_decision=bot_replies[-1].decision if bot_replies else None,
        on_shift=counts[3] or 0,
    )


def _answered_sources(bot_replies: Sequence[Any]) -> tuple[str, ...]:
    sources = [c["source_id"] for r in bot_replies if r.decision == "answer" for c in (r.citations or [])[:1]]
    # Each source once, at the place of its latest answer: the last one is the most recent.
    return tuple(reversed(dict.fromkeys(reversed(sources))))


def messages_of(session: Session, conversation_id: uuid.UUID) -> Sequence[Message]:
    """The whole transcript, in order."""
    return session.scalars(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq)
    ).all()


def messages_after(session: Session, conversation_id: uuid.UUID, seq: int, limit: int) -> Sequence[Message]:
    """Up to ``limit`` messages numbered after ``seq``, in order (what a live stream sends next)."""
    return session.scalars(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.seq > seq)
        .order_by(Message.seq)
        .limit(limit)
    ).all()


def rate_message(
    session: Session, conversation: Conversation, message_id: int, rating: Rating, comment: str | None
) -> Feedback:
    """Record (or change) the customer's rating of one bot reply in this conversation."""
    message = session.get(Message, message_id)
    if message is None or message.conversation_id != conversation.id:
        raise MessageNotFoundError(f"no message {message_id} in conversation {conversation.id}")
    if message.role != "bot":
        raise NotRateableError(f"message {message_id} is a {message.role} message, not a bot reply")
    feedback = session.scalar(select(Feedback).where(Feedback.message_id == message_id).with_for_update())
    now = utcnow()
    if feedback is None:
        feedback = Feedback(message_id=message_id, conversation_id=conversation.id, created_at=now)
        session.add(feedback)
    feedback.rating = rating
    feedback.comment = comment
    feedback.updated_at = now
    session.flush()
    return feedback


def close_conversation(
    session: Session, conversation: Conversation, now: datetime | None = None
) -> Conversation:
    """Close the conversation (idempotent); it takes no more messages. ``now``: the caller's clock."""
    if conversation.status != "closed":
        now = now or utcnow()
        conversation.status = "closed"
        conversation.closed_at = now
        conversation.updated_at = now
        session.flush()
    return conversation


def upsert_customer(
    session: Session, member_id: str, *, name: str | None, plan: str | None, vip: bool
) -> Customer:
    """Create or update what we know of a member (an admin import or a CRM hook)."""
    customer = _upsert_customer(session, member_id)
    customer.name, customer.plan, customer.vip = name, plan, vip
    session.flush()
    return customer
