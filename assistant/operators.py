"""The operator workspace in the database: operators and shifts, the queue, ownership, resolutions.

The queue is every escalated conversation nobody owns (live hand-offs and ``take_message`` tickets
alike), VIP first (``priority``), then by how long it has waited (``queued_at``). Every change of
ownership is one conditional ``UPDATE`` whose ``WHERE`` states what must still be true (claim: nobody
owns it and it is escalated); a row count of 1 means it happened. That is atomic on SQLite (one writer
at a time) and on PostgreSQL (the row lock re-checks the ``WHERE``), so of two operators, or two
replicas, claiming at once exactly one wins.

How a chat ends (``resolutions``, one row per conversation, read by the evaluation suite):

- an operator resolves it: path ``operator`` with the outcome, tags and answer they give;
- the customer closes it while nobody owns it: path ``bot``, operator NULL. The outcome is
  ``resolved`` only when the customer's latest rating of a bot reply is a thumbs up (positive
  evidence, not silence); ``follow_up`` when they close while a ``take_message`` ticket waits (people
  still owe them an answer); ``unresolved`` otherwise;
- the customer closes it while an operator owns it: no row yet; the owner resolves the closed
  conversation (they know the outcome).

Errors (``WorkspaceError`` and its subclasses, each with a stable ``code``): ``NotWaitingError``,
``AlreadyClaimedError``, ``NotAssignedError``, ``AlreadyResolvedError``, ``OperatorUnavailableError``,
``AtCapacityError``; ``OperatorNotFoundError`` for an unknown operator id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from assistant.desk import on_shift_count, waiting_count, waiting_filter
from assistant.events import mark_changed, mark_queue_changed
from assistant.keys import KeyInfo
from assistant.models import (
    Conversation,
    Escalation,
    Feedback,
    Message,
    Operator,
    OperatorNote,
    Resolution,
)
from assistant.settings import OperatorSettings
from assistant.transcripts import ConversationNotFoundError, add_message

# Write an operator's last_seen_at at most this often (every request would be a write per request).
_SEEN_EVERY = timedelta(seconds=30)


class WorkspaceError(RuntimeError):
    """The conversation's state forbids this (a 409 at the API)."""

    code = "conflict"


class NotWaitingError(WorkspaceError):
    """The conversation is not waiting for people (open with the bot, or closed)."""

    code = "not_waiting"


class AlreadyClaimedError(WorkspaceError):
    """Somebody else owns the conversation."""

    code = "already_claimed"


class NotAssignedError(WorkspaceError):
    """The conversation is not assigned to the calling operator."""

    code = "not_assigned_to_you"


class AlreadyResolvedError(WorkspaceError):
    """The conversation already has its resolution."""

    code = "already_resolved"


class OperatorUnavailableError(WorkspaceError):
    """The target operator is off shift (or is the caller)."""

    code = "operator_unavailable"


class AtCapacityError(WorkspaceError):
    """The operator already owns as many conversations as they may."""

    code = "at_capacity"


class OperatorNotFoundError(LookupError):
    """No operator with this id."""


Outcome = Literal["resolved", "unresolved", "follow_up"]


@dataclass(frozen=True)
class ResolutionInput:
    """What an operator says about how a chat ended."""

    outcome: Outcome
    tags: tuple[str, ...] = ()
    answer_text: str | None = None
    answer_source_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class HandoffStatus:
    """What the customer is told about the people side (see ``handoff_status``)."""

    status: str
    with_person: bool
    queue_position: int | None
    estimated_wait_seconds: float | None
    operators_on_shift: int


@dataclass(frozen=True)
class DeskState:
    """How staffed the desk is: operators present on shift, conversations waiting."""

    on_shift: int
    waiting: int


def ensure_operator(session: Session, key: KeyInfo, now: datetime, max_concurrent: int = 5) -> Operator:
    """The operator row of an operator key, created on its first use; notes when it was last seen."""
    query = select(Operator).where(Operator.api_key_id == key.id)
    operator = session.scalar(query)
    if operator is None:
        try:
            with session.begin_nested():  # two first requests at once: one insert wins
                operator = Operator(
                    api_key_id=key.id,
                    name=key.name,
                    on_shift=False,
                    max_concurrent=max_concurrent,
                    last_seen_at=now,
                    created_at=now,
                )
                session.add(operator)
            return operator
        except IntegrityError:
            operator = session.scalars(query).one()
    if operator.last_seen_at is None or now - operator.last_seen_at >= _SEEN_EVERY:
        operator.last_seen_at = now
        session.flush()
    return operator


def set_shift(session: Session, operator: Operator, on_shift: bool, now: datetime) -> Operator:
    """Go on or off shift."""
    operator.on_shift = on_shift
    operator.last_seen_at = now
    session.flush()
    return operator


def list_operators(session: Session) -> Sequence[Operator]:
    """Every operator, by name."""
    return session.scalars(select(Operator).order_by(Operator.name, Operator.id)).all()


def desk_state(session: Session, now: datetime, presence: timedelta) -> DeskState:
    """Operators on shift and seen within ``presence``, and the number of conversations waiting."""
    on_shift, waiting = session.execute(select(on_shift_count(now, presence), waiting_count())).one()
    return DeskState(on_shift=on_shift or 0, waiting=waiting or 0)


def queue(session: Session, limit: int = 100) -> Sequence[Conversation]:
    """The waiting conversations, in the order people should take them."""
    return session.scalars(
        select(Conversation)
        .where(*waiting_filter())
        .order_by(Conversation.priority.desc(), Conversation.queued_at, Conversation.created_at)
        .limit(limit)
    ).all()


def queue_position(session: Session, conversation: Conversation) -> int | None:
    """1 for the next conversation to be taken; None when it is not waiting."""
    if conversation.status != "escalated" or conversation.assigned_operator_id is not None:
        return None
    queued_at = conversation.queued_at or conversation.created_at
    ahead = session.scalar(
        select(func.count())
        .select_from(Conversation)
        .where(
            *waiting_filter(),
            Conversation.id != conversation.id,
            or_(
                Conversation.priority > conversation.priority,
                and_(
                    Conversation.priority == conversation.priority,
                    func.coalesce(Conversation.queued_at, Conversation.created_at) < queued_at,
                ),
            ),
        )
    )
    return (ahead or 0) + 1


def handoff_status(
    session: Session, conversation: Conversation, now: datetime, settings: OperatorSettings
) -> HandoffStatus:
    """Is a person on it, and if it waits: its place and an estimate (none with nobody on shift).

    The estimate is ``handle_seconds`` per conversation at or ahead of it, shared by the operators on
    shift: a rough figure, honest about being one (the customer is told "about").
    """
    desk = desk_state(session, now, timedelta(seconds=settings.presence_seconds))
    on_shift = max(desk.on_shift, settings.on_shift)
    position = queue_position(session, conversation)
    estimate = None
    if position is not None and on_shift > 0:
        estimate = settings.handle_seconds * position / on_shift
    return HandoffStatus(
        status=conversation.status,
        with_person=conversation.assigned_operator_id is not None and conversation.status == "escalated",
        queue_position=position,
        estimated_wait_seconds=estimate,
        operators_on_shift=on_shift,
    )


def latest_escalation(session: Session, conversation_id: uuid.UUID) -> Escalation | None:
    """The most recent hand-off decision of the conversation."""
    return session.scalar(
        select(Escalation)
        .where(Escalation.conversation_id == conversation_id)
        .order_by(Escalation.created_at.desc(), Escalation.id.desc())
        .limit(1)
    )


def owned_by(session: Session, operator: Operator) -> Sequence[Conversation]:
    """The conversations this operator owns and has not resolved, oldest claim first."""
    resolved = select(Resolution.conversation_id)
    return session.scalars(
        select(Conversation)
        .where(Conversation.assigned_operator_id == operator.id, Conversation.id.not_in(resolved))
        .order_by(Conversation.claimed_at)
    ).all()


def _get(session: Session, conversation_id: uuid.UUID) -> Conversation:
    conversation = session.get(Conversation, conversation_id, populate_existing=True)
    if conversation is None:
        raise ConversationNotFoundError(f"no conversation {conversation_id}")
    return conversation


def _explain(session: Session, conversation_id: uuid.UUID, operator: Operator) -> WorkspaceError:
    """Why a conditional update matched nothing (raises for an unknown conversation)."""
    conversation = _get(session, conversation_id)
    if conversation.status != "escalated":
        return NotWaitingError(
            f"conversation {conversation_id} is {conversation.status}, not waiting for people"
        )
    if conversation.assigned_operator_id not in (None, operator.id):
        return AlreadyClaimedError(f"conversation {conversation_id} is taken by another operator")
    return NotAssignedError(f"conversation {conversation_id} is not assigned to you")


def _change(
    session: Session,
    conversation_id: uuid.UUID,
    operator: Operator,
    conditions: list[object],
    **values: object,
) -> Conversation:
    result = session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise _explain(session, conversation_id, operator)
    mark_changed(session, conversation_id)
    return _get(session, conversation_id)


def claim(session: Session, conversation_id: uuid.UUID, operator: Operator, now: datetime) -> Conversation:
    """Take a waiting conversation; of concurrent claims exactly one succeeds."""
    mine = session.scalar(
        select(func.count())
        .select_from(Conversation)
        .where(Conversation.assigned_operator_id == operator.id, Conversation.status == "escalated")
    )
    if (mine or 0) >= operator.max_concurrent:
        raise AtCapacityError(f"you already own {mine} conversations (at most {operator.max_concurrent})")
    claimed = _change(
        session,
        conversation_id,
        operator,
        waiting_filter(),
        assigned_operator_id=operator.id,
        claimed_at=now,
        updated_at=now,
    )
    mark_queue_changed(session)  # everyone behind it moved up
    return claimed


def _owned(operator: Operator) -> list[object]:
    return [Conversation.status == "escalated", Conversation.assigned_operator_id == operator.id]


def transfer(
    session: Session, conversation_id: uuid.UUID, operator: Operator, target_id: int, now: datetime
) -> Conversation:
    """Hand a conversation you own to another operator on shift."""
    target = session.get(Operator, target_id)
    if target is None:
        raise OperatorNotFoundError(f"no operator {target_id}")
    if target.id == operator.id or not target.on_shift:
        raise OperatorUnavailableError(
            f"operator {target_id} is {'you' if target.id == operator.id else 'off shift'}"
        )
    return _change(
        session,
        conversation_id,
        operator,
        _owned(operator),
        assigned_operator_id=target.id,
        claimed_at=now,
        updated_at=now,
    )


def release(session: Session, conversation_id: uuid.UUID, operator: Operator, now: datetime) -> Conversation:
    """Put a conversation you own back in the queue, at the place it had (``queued_at`` is kept)."""
    released = _change(
        session,
        conversation_id,
        operator,
        _owned(operator),
        assigned_operator_id=None,
        claimed_at=None,
        updated_at=now,
    )
    mark_queue_changed(session)  # those queued after it moved down
    return released


def hand_back(
    session: Session, conversation_id: uuid.UUID, operator: Operator, now: datetime
) -> Conversation:
    """Give a conversation you own back to the bot: it is open again and leaves the queue."""
    return _change(
        session,
        conversation_id,
        operator,
        _owned(operator),
        status="open",
        assigned_operator_id=None,
        claimed_at=None,
        queued_at=None,
        updated_at=now,
    )


def add_operator_message(
    session: Session, conversation: Conversation, operator: Operator, text: str
) -> Message:
    """Store a message from the operator who owns the conversation."""
    if conversation.assigned_operator_id != operator.id or conversation.status != "escalated":
        raise _explain(session, conversation.id, operator)
    return add_message(session, conversation.id, "operator", text, operator_id=operator.id)


def add_note(
    session: Session, conversation: Conversation, operator: Operator, text: str, now: datetime
) -> OperatorNote:
    """An internal note (any operator may write one; customers never see them)."""
    note = OperatorNote(conversation_id=conversation.id, operator_id=operator.id, text=text, created_at=now)
    session.add(note)
    session.flush()
    return note


def notes_of(session: Session, conversation_id: uuid.UUID) -> Sequence[OperatorNote]:
    """The conversation's internal notes, oldest first."""
    return session.scalars(
        select(OperatorNote).where(OperatorNote.conversation_id == conversation_id).order_by(OperatorNote.id)
    ).all()


def resolve(
    session: Session, conversation_id: uuid.UUID, operator: Operator, given: ResolutionInput, now: datetime
) -> Resolution:
    """Record how the chat ended and close it; the owner may also resolve one the customer closed."""
    conversation = _get(session, conversation_id)
    if conversation.assigned_operator_id != operator.id:
        raise _explain(session, conversation_id, operator)
    closed = session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.assigned_operator_id == operator.id)
        .values(status="closed", closed_at=func.coalesce(Conversation.closed_at, now), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if closed.rowcount != 1:  # type: ignore[attr-defined]
        raise _explain(session, conversation_id, operator)
    resolution = Resolution(
        conversation_id=conversation_id,
        operator_id=operator.id,
        path="operator",
        outcome=given.outcome,
        tags=list(given.tags),
        answer_text=given.answer_text,
        answer_source_ids=list(given.answer_source_ids),
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(resolution)
    except IntegrityError as exc:
        raise AlreadyResolvedError(f"conversation {conversation_id} is already resolved") from exc
    mark_changed(session, conversation_id)
    return resolution


def resolution_of(session: Session, conversation_id: uuid.UUID) -> Resolution | None:
    """The conversation's resolution, if it has one."""
    return session.scalar(select(Resolution).where(Resolution.conversation_id == conversation_id))


def record_customer_close(session: Session, conversation: Conversation, now: datetime) -> Resolution | None:
    """After the customer closed the chat: the bot-path resolution, unless an operator owns it."""
    if conversation.assigned_operator_id is not None or resolution_of(session, conversation.id) is not None:
        return None
    outcome, sources = _bot_outcome(session, conversation)
    resolution = Resolution(
        conversation_id=conversation.id,
        operator_id=None,
        path="bot",
        outcome=outcome,
        tags=[],
        answer_text=None,
        answer_source_ids=sources,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(resolution)
    except IntegrityError:
        return resolution_of(session, conversation.id)  # a concurrent close wrote it first
    return resolution


def _bot_outcome(session: Session, conversation: Conversation) -> tuple[Outcome, list[str]]:
    """See the module docstring; the sources are those of the bot's last answer."""
    if conversation.queued_at is not None:  # it was waiting for people when the customer left
        escalation = latest_escalation(session, conversation.id)
        waiting_ticket = escalation is not None and escalation.decision == "take_message"
        return ("follow_up" if waiting_ticket else "unresolved"), []
    rating = session.scalar(
        select(Feedback.rating)
        .where(Feedback.conversation_id == conversation.id)
        .order_by(Feedback.updated_at.desc(), Feedback.id.desc())
        .limit(1)
    )
    last_answer = session.scalar(
        select(Message)
        .where(
            Message.conversation_id == conversation.id, Message.role == "bot", Message.decision == "answer"
        )
        .order_by(Message.seq.desc())
        .limit(1)
    )
    sources = (
        list(dict.fromkeys(c["source_id"] for c in (last_answer.citations or []))) if last_answer else []
    )
    return ("resolved" if rating == "up" else "unresolved"), sources
