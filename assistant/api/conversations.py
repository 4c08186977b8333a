"""The customer's endpoints: open a conversation, send messages, read it back, rate answers, close it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from sqlalchemy.orm import Session

from assistant.api import idempotency, turns
from assistant.api.deps import AnyKey, CustomerKey, Services, ServicesDep
from assistant.api.errors import ConflictError, ErrorOut, NotFoundError, UnprocessableError
from assistant.api.operators import (
    STREAM_BATCH,
    After,
    LastEventId,
    Seconds,
    resume_from,
    stream_response,
    timing_of,
)
from assistant.api.schemas import (
    ConversationCreate,
    ConversationOut,
    FeedbackCreate,
    FeedbackOut,
    HandoffStatusOut,
    MessageCreate,
    MessageOut,
    TranscriptOut,
    TurnOut,
    normalize_locale,
)
from assistant.events import watch
from assistant.keys import KeyInfo
from assistant.models import Conversation
from assistant.operators import handoff_status, record_customer_close
from assistant.transcripts import (
    ConversationNotFoundError,
    MessageNotFoundError,
    NewConversation,
    NotRateableError,
    close_conversation,
    find_conversation,
    messages_after,
    messages_of,
    open_conversation,
    rate_message,
)

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Any unique string (a UUID): a retry with the same key replays the first response.",
    ),
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 429)
}


def _conversation(session: Session, conversation_id: uuid.UUID, key: KeyInfo) -> Conversation:
    try:
        return find_conversation(session, conversation_id, key)
    except ConversationNotFoundError as exc:
        raise NotFoundError(str(exc), code="conversation_not_found") from exc


def _replayed(replay: idempotency.Replay) -> JSONResponse:
    return JSONResponse(replay.body, status_code=replay.status_code, headers={"Idempotent-Replayed": "true"})


@router.post("", status_code=201, response_model=ConversationOut, responses=_ERRORS)
def create_conversation(
    body: ConversationCreate, key: CustomerKey, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> Any:
    """Open a conversation, bound to the calling key."""
    new = NewConversation(
        member_id=body.member_id,
        visitor_id=body.visitor_id,
        channel=body.channel,
        locale=normalize_locale(body.locale),
        page_context=body.page_context,
    )
    lease = timedelta(seconds=services.settings.api.idempotency_lease_seconds)
    with services.database.session() as session:
        record_id = None
        if idempotency_key is not None:
            fingerprint = idempotency.request_fingerprint(
                "POST", "/v1/conversations", body.model_dump(mode="json")
            )
            claim = idempotency.claim(
                session, key.id, idempotency_key, fingerprint, now=services.clock(), lease=lease
            )
            if isinstance(claim, idempotency.Replay):
                return _replayed(claim)
            record_id = claim.record_id
        out = ConversationOut.of(open_conversation(session, key, new))
        if record_id is not None:
            idempotency.complete(session, record_id, 201, out.model_dump(mode="json"))
    # Serialized here, as a turn is (``_turn_json``): no second validation, no second thread hop.
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.post(
    "/{conversation_id}/messages",
    response_model=TurnOut,
    responses=_ERRORS | {200: {"content": {"text/event-stream": {}}, "description": "JSON, or events."}},
)
def post_message(
    conversation_id: uuid.UUID,
    body: MessageCreate,
    request: Request,
    key: CustomerKey,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Store the customer's message, then answer it: JSON, or server-sent events when asked.

    Events: ``delta`` (``{"text": ...}``, the answer as it is produced), then one ``reply`` (the body
    the JSON response would have had). A JSON reply carries a ``Server-Timing`` header: ``store``
    (the message committed), ``answer`` (search and decision, or generation), ``reply`` (stored).
    """
    limit = services.settings.api.max_message_chars
    if len(body.text) > limit:
        raise UnprocessableError(
            f"the message has {len(body.text)} characters; the limit is {limit}", code="message_too_long"
        )
    wants_stream = "text/event-stream" in request.headers.get("accept", "")
    timing = turns.ServerTiming()
    prepared = turns.receive_message(services, key, conversation_id, body.text, idempotency_key)
    timing.mark("store")
    if isinstance(prepared, idempotency.Replay):
        if wants_stream:
            return _event_stream(turns.replay_events(prepared.body), replayed=True)
        return _replayed(prepared)
    if isinstance(prepared, TurnOut):
        return (
            _event_stream(turns.replay_events(prepared.model_dump(mode="json"))) if wants_stream
            else _turn_json(prepared)
        )
    if wants_stream:
        return _event_stream(turns.stream_answer(services, prepared))
    out = turns.answer(services, prepared, timing)
    return _turn_json(out, {"Server-Timing": timing.header()})


def _turn_json(out: TurnOut, headers: dict[str, str] | None = None) -> Response:
    """The turn as JSON, serialized here: FastAPI would validate the finished ``TurnOut`` again and,
    the endpoint being sync, hop to a worker thread and back to do it (about a millisecond a turn).
    """
    return Response(out.model_dump_json(), media_type="application/json", headers=headers)


def _event_stream(events: Iterator[bytes], *, replayed: bool = False) -> EventSourceResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return EventSourceResponse(events, headers=headers)


@router.get("/{conversation_id}", response_model=TranscriptOut, responses=_ERRORS)
def get_conversation(conversation_id: uuid.UUID, key: AnyKey, services: ServicesDep) -> TranscriptOut:
    """The conversation and all its messages. A customer key sees only conversations it opened."""
    view = MessageOut.for_customer if key.role == "customer" else MessageOut.of
    with services.database.session() as session:
        conversation = _conversation(session, conversation_id, key)
        messages = [view(m) for m in messages_of(session, conversation.id)]
        handoff = _handoff_status(session, conversation, services)
        out = ConversationOut.of(conversation).model_dump()
        return TranscriptOut(**out, messages=messages, handoff=handoff)


def _handoff_status(session: Session, conversation: Conversation, services: Services) -> HandoffStatusOut:
    status = handoff_status(session, conversation, services.clock(), services.settings.operators)
    return HandoffStatusOut(**status.__dict__)


@router.get("/{conversation_id}/status", response_model=HandoffStatusOut, responses=_ERRORS)
def get_status(conversation_id: uuid.UUID, key: AnyKey, services: ServicesDep) -> HandoffStatusOut:
    """Whether a person is on it, and while waiting: the place in the queue and an estimated wait."""
    with services.database.session() as session:
        return _handoff_status(session, _conversation(session, conversation_id, key), services)


def _customer_poll(services: Services, conversation_id: uuid.UUID, after: int) -> Any:
    cursor: dict[str, Any] = {"seq": after, "status": None}

    def poll() -> tuple[list[bytes], bool]:
        with services.database.session() as session:
            conversation = session.get_one(Conversation, conversation_id)
            messages = messages_after(session, conversation_id, cursor["seq"], STREAM_BATCH)
            status = _handoff_status(session, conversation, services).model_dump(mode="json")
        chunks = []
        for m in messages:
            cursor["seq"] = m.seq
            body = MessageOut.for_customer(m).model_dump(mode="json")
            chunks.append(turns.sse_event("message", body, event_id=str(m.seq)))
        if status != cursor["status"]:
            cursor["status"] = status
            chunks.append(turns.sse_event("status", status, event_id=str(cursor["seq"])))
        return chunks, status["status"] == "closed" and len(messages) < STREAM_BATCH

    return poll


@router.get(
    "/{conversation_id}/events",
    responses=_ERRORS | {200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
)
async def conversation_events(
    conversation_id: uuid.UUID,
    key: CustomerKey,
    services: ServicesDep,
    after: After = None,
    last_event_id: LastEventId = None,
    seconds: Seconds = None,
) -> EventSourceResponse:
    """Live events: ``message`` (every new message, the operator's included; id = seq) and ``status``
    (a person took it, the place in the queue, closed). Resume with ``Last-Event-ID`` or ``after``;
    the stream ends when the conversation is closed, or after a while (reconnect to go on).
    """
    with services.database.session() as session:
        _conversation(session, conversation_id, key)
    poll = _customer_poll(services, conversation_id, resume_from(last_event_id, after))
    events = watch(services.events, str(conversation_id), poll, timing_of(services, seconds))
    return stream_response(events)


@router.post("/{conversation_id}/feedback", response_model=FeedbackOut, responses=_ERRORS)
def post_feedback(
    conversation_id: uuid.UUID, body: FeedbackCreate, key: CustomerKey, services: ServicesDep
) -> FeedbackOut:
    """Rate one of the bot's replies (thumbs up or down); rating again replaces the rating."""
    with services.database.session() as session:
        conversation = _conversation(session, conversation_id, key)
        try:
            feedback = rate_message(session, conversation, body.message_id, body.rating, body.comment)
        except MessageNotFoundError as exc:
            raise NotFoundError(str(exc), code="message_not_found") from exc
        except NotRateableError as exc:
            raise ConflictError(str(exc), code="not_rateable") from exc
        return FeedbackOut(message_id=feedback.message_id, rating=body.rating, comment=feedback.comment)


@router.post("/{conversation_id}/close", response_model=ConversationOut, responses=_ERRORS)
def close(conversation_id: uuid.UUID, key: CustomerKey, services: ServicesDep) -> Any:
    """Close the conversation (closing twice is fine); it takes no more messages."""
    with services.database.session() as session:
        conversation = _conversation(session, conversation_id, key)
        now = services.clock()
        close_conversation(session, conversation, now)
        record_customer_close(session, conversation, now)  # the bot-path resolution
        return ConversationOut.of(conversation)
