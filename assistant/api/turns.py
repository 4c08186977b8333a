"""One customer turn over HTTP: store the message, answer it, store the reply.

The customer message is committed before anything tries to answer it. Answering runs outside any
database transaction (it may wait on an LLM); if it fails unexpectedly the failure is logged and the
reply becomes a hand-off (reason ``internal_error``): never a 500, never a lost message.

While an escalated conversation waits for people, the bot still answers what it can answer, but a
new hand-off decision adds no message: the conversation is queued already, so the customer's message
is simply stored for the people who will pick it up (the reply is null; the decision and its reasons
are still recorded as an escalation without a message). While a person owns the conversation
(``assigned_operator_id``) the bot stays silent: the message is stored, the reply is null, and the
operator's streams are woken by the stored message (``assistant.events``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from fastapi.sse import format_sse_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.answer import handoff_message
from assistant.api import idempotency
from assistant.api.deps import Services
from assistant.api.errors import ConflictError, NotFoundError
from assistant.api.schemas import MessageOut, TurnOut
from assistant.escalate import Availability
from assistant.keys import KeyInfo
from assistant.models import Conversation, Message
from assistant.respond import Reply, TurnInput
from assistant.transcripts import (
    HANDOFF_DECISIONS,
    BotReply,
    ConversationClosedError,
    ConversationNotFoundError,
    ConversationState,
    add_bot_reply,
    add_served_reply,
    append_message,
    conversation_state,
    record_queued_handoff,
    turn_context,
)

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class StoredMessage:
    """A customer message safely in the database, waiting for its answer."""

    conversation_id: uuid.UUID
    message_id: int
    record_id: int | None  # the idempotency record to complete, if the request had a key


def _visible(session: Session, conversation_id: uuid.UUID, key: KeyInfo) -> ConversationState:
    try:
        return conversation_state(session, conversation_id, key)
    except ConversationNotFoundError as exc:
        raise NotFoundError(str(exc), code="conversation_not_found") from exc


@dataclass(frozen=True)
class PreparedTurn:
    """A stored message with what the responder needs to answer it."""

    stored: StoredMessage
    turn: TurnInput
    # Already waiting for people: a hand-off decision adds no message, so nothing is streamed.
    queued: bool = False
    # The stored customer message as committed (fully loaded, detached): the reply needs no re-read.
    message: Message | None = None


def receive_message(
    services: Services, key: KeyInfo, conversation_id: uuid.UUID, text: str, idempotency_key: str | None
) -> idempotency.Replay | PreparedTurn | TurnOut:
    """Store the customer message and read what answering it needs, in one transaction.

    The common path of a turn: one commit before answering instead of two. Returns the earlier
    outcome (``Replay``), the finished turn (a take-over that finds the reply stored, or a person owns
    the conversation), or the ``PreparedTurn`` to answer.
    """
    now = services.clock()
    lease = timedelta(seconds=services.settings.api.idempotency_lease_seconds)
    with services.database.session() as session:
        conversation = _visible(session, conversation_id, key)
        record_id = None
        resumed: int | None = None
        if idempotency_key is not None:
            fingerprint = idempotency.request_fingerprint(
                "POST", f"/v1/conversations/{conversation_id}/messages", {"text": text}
            )
            claim = idempotency.claim(session, key.id, idempotency_key, fingerprint, now=now, lease=lease)
            if isinstance(claim, idempotency.Replay):
                return claim
            if isinstance(claim, idempotency.Resume):
                resumed = claim.message_id
            record_id = claim.record_id
        if resumed is not None:
            message = session.get_one(Message, resumed)
        else:
            try:
                message = append_message(session, conversation.id, "customer", text)
            except ConversationClosedError as exc:
                raise ConflictError(str(exc), code="conversation_closed") from exc
            if record_id is not None:
                idempotency.attach_message(session, record_id, message.id)
        stored = StoredMessage(conversation.id, message.id, record_id)
        # Only a take-over can find its message answered already: a new message has no reply yet.
        fresh = resumed is None
        return _prepare_in(session, services, stored, conversation, message, check_answered=not fresh)


def _prepare_in(
    session: Session,
    services: Services,
    stored: StoredMessage,
    conversation: ConversationState,
    message: Message,
    *,
    check_answered: bool,
) -> PreparedTurn | TurnOut:
    settings = services.settings
    answered = _stored_reply(session, message) if check_answered else None
    if answered is not None or conversation.assigned_operator_id is not None:
        # Answered already, or a person owns the conversation: the bot stays silent.
        return _finish(session, stored, conversation.status, message, answered)
    now = services.clock()
    context = turn_context(session, conversation, message, settings.api.history_messages,
                           now=now, presence=timedelta(seconds=settings.operators.presence_seconds))
    availability = Availability(
        # The setting is a floor: people on shift who do not use the operator API yet.
        on_shift=max(settings.operators.on_shift, context.on_shift),
        queue_length=context.queue_length,
        queue_capacity=settings.operators.capacity,
    )
    turn = TurnInput(
        history=context.history,
        message=message.text,
        now=now,
        vip=context.vip,
        locale=context.locale,
        availability=availability,
        thumbs_down=context.thumbs_down,
        answered_sources=context.answered_sources,
        last_decision=context.last_decision,
    )
    return PreparedTurn(stored, turn, queued=conversation.status == "escalated", message=message)


def _stored_reply(session: Session, message: Message) -> Message | None:
    return session.scalar(select(Message).where(Message.reply_to_id == message.id).limit(1))


def _finish(
    session: Session,
    stored: StoredMessage,
    status: str,
    message: Message,
    reply: Message | None,
) -> TurnOut:
    out = TurnOut(
        conversation_id=stored.conversation_id,
        status=status,  # type: ignore[arg-type]
        message=MessageOut.of(message),
        reply=MessageOut.of(reply) if reply is not None else None,
    )
    if stored.record_id is not None:
        idempotency.complete(session, stored.record_id, 200, out.model_dump(mode="json"))
    return out


def store_reply(services: Services, prepared: PreparedTurn, reply: Reply) -> TurnOut:
    """Commit the bot's reply (and any hand-off) and the idempotency record's response together.

    An answer or a clarifying question to a conversation the bot still serves (the common turn) is
    stored without loading the conversation (``add_served_reply``); a hand-off, a closed conversation
    or one a person took meanwhile goes through the conversation as loaded.
    """
    stored = prepared.stored
    bot = BotReply(
        text=reply.text,
        decision=reply.decision,
        confidence=reply.confidence,
        reasons=tuple(reply.reasons),
        citations=tuple(reply.citations),
        search_query=reply.search_query,
        retrieved=reply.retrieved,
    )
    with services.database.session() as session:
        message = prepared.message or session.get_one(Message, stored.message_id)
        if bot.decision not in HANDOFF_DECISIONS:
            served = add_served_reply(session, stored.conversation_id, message.id, bot)
            if served is not None:
                return _finish(session, stored, served[1], message, served[0])
        conversation = session.get_one(Conversation, stored.conversation_id)
        bot_message: Message | None = None
        if conversation.assigned_operator_id is not None:
            pass  # a person claimed the conversation while the bot was answering: it stays silent
        elif conversation.status == "escalated" and bot.decision in HANDOFF_DECISIONS:
            record_queued_handoff(session, conversation, bot)  # the decision is kept, no new message
        else:
            try:
                bot_message = add_bot_reply(session, conversation, message, bot)
            except ConversationClosedError:
                # Closed while we were answering: the customer left, the answer is not needed.
                bot_message = None
        return _finish(session, stored, conversation.status, message, bot_message)


def fallback_reply(services: Services, prepared: PreparedTurn) -> Reply:
    """A hand-off for when answering failed: now if people are there, else a message for later."""
    turn = prepared.turn
    hours = services.settings.escalation.business_hours
    a = turn.availability
    open_desk = hours.is_open(turn.now) and a.on_shift > 0 and a.queue_length < a.queue_capacity
    decision: Literal["escalate", "take_message"] = "escalate" if open_desk else "take_message"
    language: Literal["ja", "en"] = "ja" if turn.locale.lower().startswith("ja") else "en"
    return Reply(
        text=handoff_message(decision, language),
        citations=(),
        confidence=0.0,
        decision=decision,
        reasons=(INTERNAL_ERROR,),
        search_query=turn.message,
        language=language,
    )


class ServerTiming:
    """Durations of a request's stages, for the ``Server-Timing`` response header (W3C Server Timing).

    ``mark(name)`` closes the stage that began at the previous mark (or at creation). Operators read
    the header in the browser's network panel; ``bench/bench_api.py`` reports its breakdown.
    """

    def __init__(self) -> None:  # noqa: D107 -- starts the first stage
        self._last = time.perf_counter()
        self._stages: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        """End the current stage as ``name``."""
        now = time.perf_counter()
        self._stages.append((name, now - self._last))
        self._last = now

    def header(self) -> str:
        """``name;dur=<ms>`` for each stage, in order."""
        return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in self._stages)


def answer(services: Services, prepared: PreparedTurn, timing: ServerTiming | None = None) -> TurnOut:
    """Answer the prepared turn and store the reply; an unexpected failure becomes a hand-off."""
    try:
        reply = services.responder.respond(prepared.turn)
    except Exception:  # the API boundary: log with traceback, hand the customer to people
        log.exception("answering message %s failed; handing off", prepared.stored.message_id)
        reply = fallback_reply(services, prepared)
    if timing is not None:
        timing.mark("answer")
    out = store_reply(services, prepared, reply)
    if timing is not None:
        timing.mark("reply")
    return out


def sse_event(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One server-sent event with a JSON payload (and an ``id:`` a client may resume from)."""
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False), event=event, id=event_id)


def stream_answer(services: Services, prepared: PreparedTurn) -> Iterator[bytes]:
    """Server-sent events: ``delta`` (text as it comes), then ``reply`` (the stored turn)."""
    if prepared.queued:  # a hand-off would add nothing: do not stream its text
        yield sse_event("reply", answer(services, prepared).model_dump(mode="json"))
        return
    reply: Reply | None = None
    try:
        for item in services.responder.stream(prepared.turn):
            if isinstance(item, str):
                yield sse_event("delta", {"text": item})
            else:
                reply = item
        if reply is None:
            raise RuntimeError("the responder's stream ended without a reply")
    except GeneratorExit:
        raise
    except Exception:  # the API boundary: log with traceback, hand the customer to people
        log.exception("streaming an answer to message %s failed; handing off", prepared.stored.message_id)
        reply = fallback_reply(services, prepared)
    yield sse_event("reply", store_reply(services, prepared, reply).model_dump(mode="json"))


def replay_events(body: dict[str, Any]) -> Iterator[bytes]:
    """A stored turn as a stream: no deltas, just the ``reply`` event."""
    yield sse_event("reply", body)
